"""The process-wide step registry: @step, register_step, workflows.

Every test registers ids made unique by the `step_ids` fixture (which unregisters
them afterwards), since the registry is shared by the whole process."""

import typing
from collections.abc import Callable

import pytest
from blazen_peer import (
    Context,
    Event,
    StartEvent,
    Step,
    StopEvent,
    ValidationError,
    Workflow,
    register_step,
    register_workflow,
    registered_step_ids,
    registered_workflows,
    step,
    unregister_step,
)


class Apple(Event, event_type="tests.steps.Apple"):
    name: str


class Pear(Event, event_type="tests.steps.Pear"):
    name: str


def make_fruit(ctx: Context, ev: StartEvent) -> Apple | Pear:
    return Apple(name=ev.data) if ev.data == "apple" else Pear(name=ev.data)


def eat(ctx: Context, ev: Apple | Pear) -> StopEvent:
    return StopEvent(result=f"{type(ev).__name__}:{ev.name}")


def eat_with_union(ctx: Context, ev: typing.Union[Apple, Pear]) -> StopEvent:  # noqa: UP007
    return StopEvent(result=type(ev).__name__)


def first(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result="first")


def second(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result="second")


def test_step_with_an_id_registers_the_function(step_ids: Callable[[str], str]) -> None:
    step_id = step_ids("analyze")

    @step(step_id)
    async def analyze(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.data)

    assert isinstance(analyze, Step)
    assert analyze.id == step_id
    assert analyze.accepts == (StartEvent,)
    assert analyze.is_async is True
    assert analyze.__name__ == "analyze"
    assert step_id in registered_step_ids()
    assert repr(analyze) == f"<Step {step_id!r} accepts StartEvent>"


def test_a_step_is_still_callable_as_the_function(step_ids: Callable[[str], str]) -> None:
    @step(step_ids("double"))
    def double(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.data * 2)

    assert double.is_async is False
    assert double(None, StartEvent(21)) == StopEvent(result=42)  # type: ignore[arg-type]


def test_bare_step_uses_module_and_qualname_as_id() -> None:
    @step
    def bare(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent()

    expected = f"{__name__}.test_bare_step_uses_module_and_qualname_as_id.<locals>.bare"
    try:
        assert bare.id == expected
        assert expected in registered_step_ids()
    finally:
        assert unregister_step(expected) is True


def test_step_with_empty_parentheses_uses_module_and_qualname_as_id() -> None:
    @step()
    def parenthesized(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent()

    try:
        assert parenthesized.id == f"{parenthesized.__module__}.{parenthesized.__qualname__}"
        assert parenthesized.id in registered_step_ids()
    finally:
        unregister_step(parenthesized.id)


def test_register_step_and_unregister_step(step_ids: Callable[[str], str]) -> None:
    step_id = step_ids("first")
    registered = register_step(step_id, first)
    assert registered.id == step_id
    assert registered.fn is first
    assert step_id in registered_step_ids()
    assert unregister_step(step_id) is True
    assert step_id not in registered_step_ids()
    assert unregister_step(step_id) is False


def test_registered_step_ids_are_sorted(step_ids: Callable[[str], str]) -> None:
    register_step(step_ids("zzz"), first)
    register_step(step_ids("aaa"), second)
    ids = registered_step_ids()
    assert ids == sorted(ids)


def test_reregistering_an_id_with_another_function_raises_unless_replace(
    step_ids: Callable[[str], str],
) -> None:
    step_id = step_ids("taken")
    register_step(step_id, first)
    with pytest.raises(ValidationError, match="already registered to a different function") as e:
        register_step(step_id, second)
    assert "replace=True" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValidationError):

        @step(step_id)
        def third(ctx: Context, ev: StartEvent) -> StopEvent:
            return StopEvent()

    register_step(step_id, second, replace=True)
    assert registered_step_ids().count(step_id) == 1


async def test_the_replacing_function_is_the_one_that_runs(step_ids: Callable[[str], str]) -> None:
    step_id = step_ids("replaced")
    register_step(step_id, first)
    assert await (await Workflow("wf", [step_id]).run()).result() == "first"
    register_step(step_id, second, replace=True)
    assert await (await Workflow("wf", [step_id]).run()).result() == "second"


def test_registering_the_same_function_twice_is_fine(step_ids: Callable[[str], str]) -> None:
    step_id = step_ids("twice")
    register_step(step_id, first)
    register_step(step_id, first)
    step(step_id)(first)
    assert registered_step_ids().count(step_id) == 1


def test_accepts_comes_from_a_union_annotation(step_ids: Callable[[str], str]) -> None:
    assert register_step(step_ids("pipe"), eat).accepts == (Apple, Pear)
    assert register_step(step_ids("typing"), eat_with_union).accepts == (Apple, Pear)


async def test_a_union_step_receives_each_member(step_ids: Callable[[str], str]) -> None:
    maker = register_step(step_ids("maker"), make_fruit)
    eater = register_step(step_ids("eater"), eat)
    wf = Workflow("fruit", [maker, eater])
    assert await (await wf.run("apple")).result() == "Apple:apple"
    assert await (await wf.run("pear")).result() == "Pear:pear"


async def test_accepts_argument_overrides_the_annotation(step_ids: Callable[[str], str]) -> None:
    def untyped(ctx, ev):  # type: ignore[no-untyped-def]
        return StopEvent(result=type(ev).__name__)

    registered = register_step(step_ids("untyped"), untyped, accepts=[StartEvent])
    assert registered.accepts == (StartEvent,)
    assert await (await Workflow("wf", [registered]).run()).result() == "StartEvent"

    decorated = step(step_ids("apples"), accepts=[Apple])(eat)
    assert decorated.accepts == (Apple,)


def test_missing_event_annotation_raises_validation_error(step_ids: Callable[[str], str]) -> None:
    def no_annotation(ctx: Context, ev):  # type: ignore[no-untyped-def]
        return None

    step_id = step_ids("unannotated")
    with pytest.raises(ValidationError, match="no annotation on its event parameter 'ev'"):
        register_step(step_id, no_annotation)
    assert step_id not in registered_step_ids()


def test_a_step_must_take_ctx_and_event(step_ids: Callable[[str], str]) -> None:
    def one_param(ctx: Context) -> None:
        return None

    with pytest.raises(ValidationError, match=r"must take \(ctx, event\)"):
        register_step(step_ids("one"), one_param)


def test_a_step_must_be_callable(step_ids: Callable[[str], str]) -> None:
    with pytest.raises(ValidationError, match="must be a function"):
        register_step(step_ids("value"), 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("accepts", [[int], [], [StartEvent, dict]])
def test_accepts_must_list_event_classes(
    step_ids: Callable[[str], str], accepts: list[type]
) -> None:
    with pytest.raises(ValidationError):
        register_step(step_ids("bad"), first, accepts=accepts)  # type: ignore[arg-type]


def test_a_non_event_annotation_raises_validation_error(step_ids: Callable[[str], str]) -> None:
    def takes_dict(ctx: Context, ev: dict) -> None:  # type: ignore[type-arg]
        return None

    with pytest.raises(ValidationError, match="not an Event subclass"):
        register_step(step_ids("dict"), takes_dict)


def test_an_unresolvable_annotation_raises_validation_error(
    step_ids: Callable[[str], str],
) -> None:
    def forward(ctx: Context, ev: "NotDefinedAnywhere") -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(ValidationError, match="cannot resolve the annotations"):
        register_step(step_ids("forward"), forward)


def test_empty_step_id_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match="empty"):
        register_step("", first)


async def test_register_workflow_declares_a_named_workflow(step_ids: Callable[[str], str]) -> None:
    name = step_ids("workflow-name")  # unique; workflows cannot be unregistered
    maker = register_step(step_ids("maker"), make_fruit)
    eater_id = step_ids("eater")
    register_step(eater_id, eat)
    register_workflow(name, [maker, eater_id])  # Step objects and ids mix
    assert name in registered_workflows()
    assert registered_workflows() == sorted(registered_workflows())
    # A Workflow with no steps runs the declared ones.
    assert await (await Workflow(name, []).run("pear")).result() == "Pear:pear"


def test_a_workflow_needs_at_least_one_step() -> None:
    with pytest.raises(ValidationError, match="at least one step"):
        register_workflow("empty-workflow", [])
    assert "empty-workflow" not in registered_workflows()


def test_the_readme_steps_are_registered_when_the_example_module_is_imported() -> None:
    import peer_app

    assert "my_app::analyze" in registered_step_ids()
    assert "my_app::summarize" in registered_step_ids()
    assert peer_app.peer_b.analyze.is_async is True
    assert peer_app.peer_b.summarize.is_async is False
    assert peer_app.peer_b.summarize.accepts == (peer_app.peer_b.Analyzed,)
    assert "analyze-pipeline" in registered_workflows()
