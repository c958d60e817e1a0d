"""Events: dataclass fields, StartEvent/StopEvent, wire names and subclass routing."""

import asyncio
import dataclasses
import importlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blazen_peer import (
    Context,
    Event,
    GenericEvent,
    PeerClient,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowError,
    event_type_name,
    register_step,
    unregister_step,
)


class Point(Event):
    x: int
    y: int = 0


class Animal(Event, event_type="tests.events.Animal"):
    name: str


class Dog(Animal, event_type="tests.events.Dog"):
    good: bool = True


class Puppy(Dog):
    age_weeks: int = 8


class Custom(Event):
    def __init__(self, payload: str) -> None:
        self.payload = payload


# --- fields ---


def test_event_subclasses_are_dataclasses() -> None:
    point = Point(1)
    assert dataclasses.is_dataclass(point)
    assert (point.x, point.y) == (1, 0)
    assert Point(x=1, y=2) == Point(1, 2)
    assert Point(1, 2) != Point(2, 1)
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "y"]
    assert point.to_dict() == {"x": 1, "y": 0}
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_subclass_fields_extend_the_base_fields() -> None:
    puppy = Puppy(name="rex", good=False, age_weeks=3)
    assert puppy.to_dict() == {"name": "rex", "good": False, "age_weeks": 3}
    assert isinstance(puppy, Dog) and isinstance(puppy, Animal) and isinstance(puppy, Event)


def test_an_event_with_its_own_init_is_not_turned_into_a_dataclass() -> None:
    custom = Custom("p")
    assert not dataclasses.is_dataclass(custom)
    assert custom.to_dict() == {"payload": "p"}


# --- wire names ---


def test_event_type_names() -> None:
    assert event_type_name(Point) == f"{__name__}.Point"
    assert event_type_name(Animal) == "tests.events.Animal"
    assert event_type_name(Dog) == "tests.events.Dog"
    assert event_type_name(Puppy) == f"{__name__}.Puppy"
    assert event_type_name(Event) == "blazen::Event"
    assert event_type_name(StartEvent) == "blazen::StartEvent"
    assert event_type_name(StopEvent) == "blazen::StopEvent"


def test_each_class_carries_its_routing_chain_most_derived_first() -> None:
    assert Puppy._blazen_types.chain == [
        f"{__name__}.Puppy",
        "tests.events.Dog",
        "tests.events.Animal",
        "blazen::Event",
    ]
    assert StartEvent._blazen_types.chain == ["blazen::StartEvent", "blazen::Event"]


# --- wire names of a script's own classes ---

# A peer file that streams its own event type; started as a script (`__main__`) or
# imported (its file name), its classes and bare steps must get the same names.
SCRIPT = textwrap.dedent(
    """
    import asyncio
    import sys

    from blazen_peer import Context, Event, PeerServer, StartEvent, StopEvent, step
    from blazen_peer import event_type_name


    class Tick(Event):
        epoch: int


    @step
    async def train(ctx: Context, ev: StartEvent) -> StopEvent:
        for epoch in range(3):
            ctx.write_event_to_stream(Tick(epoch=epoch))
        return StopEvent(result="done")


    async def serve() -> None:
        async with PeerServer("trainer") as server:
            print("LISTENING", await server.start("127.0.0.1:0"), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


    if __name__ == "__main__":
        print("NAMES", event_type_name(Tick), train.id, flush=True)
        if sys.argv[1:] == ["serve"]:
            asyncio.run(serve())
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Path]:
    """The script above, under a file name unique to the test (the step registry is
    process-wide); its directory is importable while the test runs."""
    path = tmp_path / f"trainer_{uuid.uuid4().hex[:8]}.py"
    path.write_text(SCRIPT)
    sys.path.insert(0, str(tmp_path))
    yield path
    sys.path.remove(str(tmp_path))
    module = sys.modules.pop(path.stem, None)
    if module is not None:
        unregister_step(module.train.id)


def run_script(*argv: str, cwd: Path) -> str:
    completed = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_a_scripts_events_and_bare_steps_are_named_after_its_file(script: Path) -> None:
    name = script.stem
    expected = f"NAMES {name}.Tick {name}.train"
    assert run_script(str(script), cwd=script.parent) == expected  # python trainer.py
    assert run_script("-m", name, cwd=script.parent) == expected  # python -m trainer
    module = importlib.import_module(name)  # what a client (or blazen-peer serve) imports
    assert event_type_name(module.Tick) == f"{name}.Tick"
    assert module.train.id == f"{name}.train"


async def test_a_client_importing_a_scripts_event_class_receives_it_from_that_script(
    script: Path,
) -> None:
    module = importlib.import_module(script.stem)
    peer = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "serve",
        cwd=script.parent,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert peer.stdin is not None and peer.stdout is not None
    try:
        names = await asyncio.wait_for(peer.stdout.readline(), 30)
        listening = (await asyncio.wait_for(peer.stdout.readline(), 30)).decode()
        assert listening.startswith("LISTENING "), (names, listening)
        address = "http://" + listening.split()[1]
        async with await PeerClient.connect(address, node_id="node-a") as client:
            stream = client.stream_sub_workflow("train", [module.train.id])
            events = [event async for event in stream]
    finally:
        peer.stdin.close()
        _, err = await asyncio.wait_for(peer.communicate(), 10)
    assert peer.returncode == 0, err.decode(errors="replace")
    # Before: the script's events were `__main__.Tick` and arrived as GenericEvent.
    assert events[:-1] == [module.Tick(epoch=0), module.Tick(epoch=1), module.Tick(epoch=2)]
    assert events[-1] == StopEvent(result="done")


# --- GenericEvent ---


def test_generic_event_fields_are_attributes() -> None:
    ev = GenericEvent(event_type="other.Tick", data={"epoch": 3, "loss": 0.5})
    assert ev.epoch == 3
    assert ev.loss == 0.5
    assert ev.event_type == "other.Tick"
    assert ev.data == {"epoch": 3, "loss": 0.5}
    with pytest.raises(
        AttributeError, match=r"'other.Tick' has no field 'lr'.*\['epoch', 'loss'\]"
    ):
        _ = ev.lr
    assert dataclasses.replace(ev, data={"epoch": 4}).epoch == 4


# --- StartEvent ---


def test_start_event_keyword_fields_are_attributes_and_data() -> None:
    ev = StartEvent(document="the quick brown fox", count=2)
    assert ev.document == "the quick brown fox"
    assert ev.count == 2
    assert ev.data == {"document": "the quick brown fox", "count": 2}
    assert ev.to_dict() == {"document": "the quick brown fox", "count": 2}
    assert ev == StartEvent({"document": "the quick brown fox", "count": 2})
    assert repr(ev) == "StartEvent({'document': 'the quick brown fox', 'count': 2})"


def test_start_event_with_one_positional_value() -> None:
    assert StartEvent("text").data == "text"
    assert StartEvent([1, 2]).data == [1, 2]
    assert StartEvent().data is None
    assert StartEvent("text").to_dict() == {"data": "text"}
    assert StartEvent({"a": 1}, b=2).data == {"a": 1, "b": 2}


def test_start_event_rejects_a_non_mapping_value_with_fields() -> None:
    with pytest.raises(TypeError, match="not both"):
        StartEvent("text", document="x")


def test_start_event_missing_field_lists_the_input_keys() -> None:
    with pytest.raises(AttributeError, match=r"'missing'.*\['a', 'b'\]"):
        _ = StartEvent(b=1, a=2).missing
    with pytest.raises(AttributeError):
        _ = StartEvent("text").document


def test_start_event_is_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(StartEvent(a=1))


# --- StopEvent ---


def test_stop_event_result() -> None:
    assert StopEvent(result={"words": 4}).result == {"words": 4}
    assert StopEvent().result is None
    assert StopEvent(result=[1]) == StopEvent(result=[1])


# --- routing by class ---


async def test_a_step_accepting_a_base_event_receives_subclasses(
    step_ids: Callable[[str], str],
) -> None:
    def emit_puppy(ctx: Context, ev: StartEvent) -> Puppy:
        return Puppy(name=ev.data, age_weeks=5)

    def on_animal(ctx: Context, ev: Animal) -> StopEvent:
        return StopEvent(result=ev)

    wf = Workflow(
        "routing",
        [register_step(step_ids("emit"), emit_puppy), register_step(step_ids("on"), on_animal)],
    )
    received = await (await wf.run("rex")).result()
    assert type(received) is Puppy  # the same class, not a copy as the base
    assert received == Puppy(name="rex", good=True, age_weeks=5)


async def test_a_step_accepting_event_receives_every_event(step_ids: Callable[[str], str]) -> None:
    seen: list[str] = []

    def emit_point(ctx: Context, ev: StartEvent) -> Point:
        return Point(x=ev.x)

    def anything(ctx: Context, ev: Event) -> StopEvent | None:
        seen.append(event_type_name(type(ev)))
        return StopEvent(result=ev.x) if isinstance(ev, Point) else None

    wf = Workflow(
        "any",
        [register_step(step_ids("emit"), emit_point), register_step(step_ids("any"), anything)],
    )
    assert await (await wf.run(x=3)).result() == 3
    assert sorted(seen) == sorted(["blazen::StartEvent", f"{__name__}.Point"])


async def test_a_step_accepting_a_sibling_class_does_not_receive_it(
    step_ids: Callable[[str], str],
) -> None:
    def emit_animal(ctx: Context, ev: StartEvent) -> Animal:
        return Animal(name="cat")

    def on_dog(ctx: Context, ev: Dog) -> StopEvent:
        return StopEvent(result="dog")

    wf = Workflow(
        "no-downcast",
        [register_step(step_ids("emit"), emit_animal), register_step(step_ids("dog"), on_dog)],
    )
    with pytest.raises(WorkflowError, match=r"accepts event `tests\.events\.Animal`"):
        await (await wf.run()).result()


async def test_subclass_routing_on_the_peer(client: PeerClient) -> None:
    result = await client.run_remote_workflow(
        "routing", ["test::emit_child", "test::on_base"], {"value": "v"}
    )
    assert result == {
        "class": "Child",
        "event_type": "tests.Child",
        "is_base": True,
        "value": "v",
        "extra": 7,
    }


async def test_a_step_annotated_event_on_the_peer_receives_start_and_custom_events(
    client: PeerClient,
) -> None:
    alone = await client.run_remote_workflow("any", ["test::any_event"], "stop-on-start")
    assert alone == {"types": ["blazen::StartEvent"]}
    both = await client.run_remote_workflow(
        "any", ["test::emit_ping", "test::any_event"], {"value": 9}
    )
    assert both == {"types": ["blazen::StartEvent", "tests.Ping"], "value": 9}


async def test_fan_out_events_are_handled_concurrently_on_the_peer(client: PeerClient) -> None:
    result = await client.run_remote_workflow(
        "fan-out", ["test::fan_out", "test::collect"], {"n": 8}, timeout_secs=30
    )
    assert result["seen"] == list(range(8))


async def test_concurrent_fan_out_runs_keep_their_progress_apart(client: PeerClient) -> None:
    results = await asyncio.gather(
        *(
            client.run_remote_workflow(
                "fan-out", ["test::fan_out", "test::collect"], {"n": n}, timeout_secs=30
            )
            for n in (3, 5, 7)
        )
    )
    assert [r["seen"] for r in results] == [list(range(3)), list(range(5)), list(range(7))]
    assert len({r["run_id"] for r in results}) == 3
