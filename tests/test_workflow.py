"""Local Workflow runs (the same engine a peer uses), alone and delegating to the peer."""

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from blazen_peer import (
    Context,
    EncodeError,
    Event,
    PeerClient,
    PeerTimeoutError,
    StartEvent,
    StopEvent,
    SubWorkflowResponse,
    UnknownStepError,
    UnknownWorkflowError,
    ValidationError,
    Workflow,
    WorkflowError,
    WorkflowHandler,
    register_step,
    step,
    unregister_step,
)


@pytest.fixture(scope="module", autouse=True)
def _readme_and_peer_steps_registered_here() -> None:
    """Registers examples/peer_b.py's steps and the test peer's steps in this process."""
    import peer_app  # noqa: F401


def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)


# --- the Rust guide's planned Python example, with blazen_peer imports ---


@pytest.fixture
def unregister_after() -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for step_id in ids:
        unregister_step(step_id)


async def test_the_rust_guides_python_example_runs_as_written(
    peer_address: str, unregister_after: list[str]
) -> None:
    client = await PeerClient.connect(peer_address, node_id="node-a")

    @step
    async def orchestrate(ctx: Context, ev: Event) -> StopEvent:
        result = await client.invoke_sub_workflow(
            workflow_name="analyze-pipeline",
            step_ids=["my_app::analyze", "my_app::summarize"],
            input={"document": ev.document},
            timeout_secs=60,
        )
        return StopEvent(result=result)

    unregister_after.append(orchestrate.id)

    wf = Workflow("distributed-example", [orchestrate])
    handler = await wf.run(document="the quick brown fox")
    result = await handler.result()

    assert isinstance(result, SubWorkflowResponse)
    assert result.result == {"words": 4, "summary": "the quick brown fox"}
    assert result.state == {"language": "en"}
    assert result.error is None
    await client.close()


async def test_a_local_step_sees_a_remote_failure_as_a_failed_response(
    peer_address: str, step_ids: Callable[[str], str]
) -> None:
    async with await PeerClient.connect(peer_address, node_id="node-a") as client:

        async def delegate(ctx: Context, ev: StartEvent) -> StopEvent:
            response = await client.invoke_sub_workflow("wf", ["test::boom"])
            response.raise_for_error()
            return StopEvent(result=response.result)

        wf = Workflow("delegating", [register_step(step_ids("delegate"), delegate)])
        with pytest.raises(WorkflowError) as excinfo:
            await (await wf.run()).result()
    # The local run failed because its step raised the remote WorkflowError.
    assert excinfo.value.node_id == "local"
    assert excinfo.value.remote_type == "blazen_peer.errors.WorkflowError"
    assert "boom" in str(excinfo.value)


# --- inputs ---


async def test_the_readme_steps_run_locally_with_keyword_input() -> None:
    wf = Workflow("analyze-pipeline", ["my_app::analyze", "my_app::summarize"])
    handler = await wf.run(document="a b c")
    assert isinstance(handler, WorkflowHandler)
    assert await handler.result() == {"words": 3, "summary": "a b c"}
    assert handler.state == {"language": "en"}
    assert handler.context.node_id == "local"
    assert handler.context.workflow_name == "analyze-pipeline"
    assert uuid.UUID(handler.run_id)


async def test_a_declared_workflow_runs_locally_with_no_steps_listed() -> None:
    handler = await Workflow("analyze-pipeline", []).run({"document": "one two"})
    assert await handler.result() == {"words": 2, "summary": "one two"}


@pytest.mark.parametrize("value", ["text", 7, [1, 2], {"document": "x"}, None])
async def test_positional_input_becomes_the_start_events_data(
    step_ids: Callable[[str], str], value: object
) -> None:
    wf = Workflow("echo", [register_step(step_ids("echo"), echo)])
    assert await (await wf.run(value)).result() == value


async def test_keyword_and_mapping_input_merge(step_ids: Callable[[str], str]) -> None:
    wf = Workflow("echo", [register_step(step_ids("echo"), echo)])
    assert await (await wf.run({"a": 1}, b=2)).result() == {"a": 1, "b": 2}
    assert await (await wf.run()).result() is None  # no input at all


async def test_a_handler_can_be_awaited_directly(step_ids: Callable[[str], str]) -> None:
    wf = Workflow("echo", [register_step(step_ids("echo"), echo)])
    assert await (await wf.run("direct")) == "direct"


def test_workflow_repr_and_step_ids(step_ids: Callable[[str], str]) -> None:
    registered = register_step(step_ids("echo"), echo)
    wf = Workflow("named", [registered, "my_app::analyze"])
    assert wf.name == "named"
    assert wf.step_ids == [registered.id, "my_app::analyze"]
    assert repr(wf) == f"Workflow('named', [{registered.id!r}, 'my_app::analyze'])"


# --- how steps run ---


async def test_local_sync_steps_run_in_threads_and_async_steps_on_the_loop(
    step_ids: Callable[[str], str],
) -> None:
    loop = asyncio.get_running_loop()

    def sync_step(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=threading.current_thread() is threading.main_thread())

    async def async_step(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=asyncio.get_running_loop() is loop)

    sync_wf = Workflow("sync", [register_step(step_ids("sync"), sync_step)])
    async_wf = Workflow("async", [register_step(step_ids("async"), async_step)])
    assert await (await sync_wf.run()).result() is False
    assert await (await async_wf.run()).result() is True


async def test_fan_out_runs_locally_with_the_peer_apps_steps() -> None:
    handler = await Workflow("fan-out", ["test::fan_out", "test::collect"], timeout_secs=30).run(
        n=6
    )
    result = await handler.result()
    assert result["seen"] == list(range(6))
    assert result["run_id"] == handler.run_id


async def test_a_local_result_need_not_be_json(step_ids: Callable[[str], str]) -> None:
    marker = object()

    def returns_object(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=marker)

    wf = Workflow("objects", [register_step(step_ids("object"), returns_object)])
    assert await (await wf.run()).result() is marker


async def test_done_reports_whether_the_run_ended(step_ids: Callable[[str], str]) -> None:
    release = asyncio.Event()

    async def waits(ctx: Context, ev: StartEvent) -> StopEvent:
        await release.wait()
        return StopEvent(result="released")

    handler = await Workflow("w", [register_step(step_ids("waits"), waits)]).run()
    assert handler.done() is False
    release.set()
    assert await handler.result() == "released"
    assert handler.done() is True


# --- failures ---


async def test_local_timeout_raises_peer_timeout_error_and_cancels_the_step(
    step_ids: Callable[[str], str],
) -> None:
    cancelled = asyncio.Event()

    async def sleeps(ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return StopEvent(result="late")

    wf = Workflow("slow-local", [register_step(step_ids("sleeps"), sleeps)], timeout_secs=0.2)
    with pytest.raises(PeerTimeoutError) as excinfo:
        await (await wf.run()).result()
    # The deadline ended the run, not the step (which would return "late" after 30 s):
    # the PeerTimeoutError, and the step saw its cancellation (below).
    assert isinstance(excinfo.value, TimeoutError)
    assert excinfo.value.node_id == "local"
    assert "slow-local" in str(excinfo.value)
    await asyncio.wait_for(cancelled.wait(), timeout=5)


async def test_a_failing_local_step_raises_workflow_error(step_ids: Callable[[str], str]) -> None:
    async def fails(ctx: Context, ev: StartEvent) -> StopEvent:
        raise ValueError("boom")

    step_id = step_ids("fails")
    wf = Workflow("failing", [register_step(step_id, fails)])
    with pytest.raises(WorkflowError) as excinfo:
        await (await wf.run()).result()
    err = excinfo.value
    assert type(err) is WorkflowError
    assert err.remote_type == "ValueError"
    assert err.step_id == step_id
    assert err.node_id == "local"
    assert err.failure_kind == "StepFailed"
    assert err.remote_traceback is not None and "boom" in err.remote_traceback
    assert f"step `{step_id}` failed" in str(err)


async def test_a_failing_sync_step_raises_workflow_error(step_ids: Callable[[str], str]) -> None:
    def fails(ctx: Context, ev: StartEvent) -> StopEvent:
        raise KeyError("missing")

    wf = Workflow("failing", [register_step(step_ids("fails"), fails)])
    with pytest.raises(WorkflowError) as excinfo:
        await (await wf.run()).result()
    assert excinfo.value.remote_type == "KeyError"


@pytest.mark.parametrize(
    ("output", "message"),
    [("not an event", "returned str"), ([StopEvent(), 1], "list containing int")],
)
async def test_a_step_returning_a_non_event_fails_the_run(
    step_ids: Callable[[str], str], output: object, message: str
) -> None:
    def bad_output(ctx: Context, ev: StartEvent) -> object:
        return output

    wf = Workflow("bad-output", [register_step(step_ids("bad"), bad_output)])
    with pytest.raises(WorkflowError, match=message) as excinfo:
        await (await wf.run()).result()
    assert excinfo.value.remote_type == "TypeError"


async def test_a_local_run_without_a_stop_event_names_the_steps(
    step_ids: Callable[[str], str],
) -> None:
    def nothing(ctx: Context, ev: StartEvent) -> None:
        return None

    step_id = step_ids("nothing")
    wf = Workflow("quiet", [register_step(step_id, nothing)])
    with pytest.raises(WorkflowError) as excinfo:
        await (await wf.run()).result()
    message = str(excinfo.value)
    assert excinfo.value.failure_kind == "NoStopEvent"
    assert "without a StopEvent" in message
    assert "`quiet`" in message
    assert f"steps present: [`{step_id}` (accepts blazen::StartEvent)]" in message


async def test_unknown_local_step_raises_when_the_run_starts() -> None:
    with pytest.raises(UnknownStepError, match="this process") as excinfo:
        await Workflow("w", ["nope::missing"]).run()
    assert excinfo.value.step_id == "nope::missing"
    assert "my_app::analyze" in excinfo.value.registered


async def test_undeclared_local_workflow_with_no_steps_raises_unknown_workflow_error() -> None:
    with pytest.raises(UnknownWorkflowError) as excinfo:
        await Workflow("never-declared", []).run()
    assert excinfo.value.workflow_name == "never-declared"


async def test_negative_local_timeout_raises_validation_error(
    step_ids: Callable[[str], str],
) -> None:
    wf = Workflow("w", [register_step(step_ids("echo"), echo)], timeout_secs=-1)
    with pytest.raises(ValidationError, match="timeout_secs"):
        await wf.run()


async def test_cancelling_a_handler_cancels_its_async_steps(
    step_ids: Callable[[str], str],
) -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def waits_forever(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return StopEvent()

    handler = await Workflow("w", [register_step(step_ids("forever"), waits_forever)]).run()
    await asyncio.wait_for(entered.wait(), timeout=10)
    assert handler.cancel() is True
    with pytest.raises(asyncio.CancelledError):
        await handler.result()
    await asyncio.wait_for(cancelled.wait(), timeout=5)
    assert handler.done() is True


async def test_non_json_public_state_fails_a_local_run_too(step_ids: Callable[[str], str]) -> None:
    async def bad_state(ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.set("bad", {1, 2})
        return StopEvent()

    wf = Workflow("w", [register_step(step_ids("bad_state"), bad_state)])
    with pytest.raises(WorkflowError, match="not JSON-serializable") as excinfo:
        await (await wf.run()).result()
    assert excinfo.value.remote_type == f"{EncodeError.__module__}.EncodeError"
