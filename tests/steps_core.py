"""The general test steps (``test::*``), their events, and the README example steps.

Used by most suites (tests/test_client.py, test_steps.py, test_events.py,
test_errors.py, test_blocking.py, test_workflow.py, ...) through the peer_app
process. The README example steps (``my_app::analyze`` and ``my_app::summarize``)
are imported from ``examples/peer_b.py`` itself, so the example code is what runs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(_EXAMPLES) not in sys.path:
    sys.path.insert(0, str(_EXAMPLES))

import peer_b  # noqa: E402  (registers my_app::analyze and my_app::summarize)
from blazen_peer import (  # noqa: E402
    Context,
    Event,
    StartEvent,
    StopEvent,
    event_type_name,
    register_workflow,
    step,
)

README_STEP_IDS = [peer_b.analyze.id, peer_b.summarize.id]
SLOW_STEP_SECS = 0.5
MEET_TIMEOUT_SECS = 20.0
"""Only against a hang: runs that never meet fail after this."""


# --- events with fixed wire names ---


class Item(Event, event_type="tests.Item"):
    """One piece of a fan-out."""

    index: int
    total: int


class Orphan(Event, event_type="tests.Orphan"):
    """Emitted by `test::orphan`; no step accepts it."""

    note: str


class Ping(Event, event_type="tests.Ping"):
    """Emitted by `test::emit_ping`, received by the step that accepts any Event."""

    value: int


class Base(Event, event_type="tests.Base"):
    """A base event; a step accepting it also receives `Child`."""

    value: str


class Child(Base, event_type="tests.Child"):
    """A subclass of `Base`."""

    extra: int = 0


# --- the README pipeline, runnable with empty step_ids ---

register_workflow("analyze-pipeline", README_STEP_IDS)


# --- test steps ---


@step("test::echo")
def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    """A sync step reporting what it received and where it ran."""
    return _echo(ctx, ev)


def _echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(
        result={
            "data": ev.data,
            "run_id": ctx.run_id,
            "node_id": ctx.node_id,
            "workflow_name": ctx.workflow_name,
            "on_main_thread": threading.current_thread() is threading.main_thread(),
        }
    )


@step("test::async_echo")
async def async_echo(ctx: Context, ev: StartEvent) -> StopEvent:
    """The async twin of `test::echo`."""
    await asyncio.sleep(0)
    return _echo(ctx, ev)


@step("test::boom")
async def boom(ctx: Context, ev: StartEvent) -> StopEvent:
    raise ValueError("boom")


@step("test::sleep")
async def sleep_long(ctx: Context, ev: StartEvent) -> StopEvent:
    """Sleeps far past any timeout the tests use."""
    await asyncio.sleep(30)
    return StopEvent(result="woke up")


@step("test::slow")
async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
    """Takes SLOW_STEP_SECS; concurrent calls must overlap."""
    await asyncio.sleep(SLOW_STEP_SECS)
    return StopEvent(result=ev.data)


_meetings: dict[str, tuple[list[int], asyncio.Event]] = {}
_sync_meetings: dict[str, threading.Barrier] = {}
_sync_meetings_lock = threading.Lock()


@step("test::meet")
async def meet(ctx: Context, ev: StartEvent) -> StopEvent:
    """Waits until ``parties`` runs of the meeting ``name`` are in this step at once,
    then returns ``i``. Runs that do not overlap never meet: the first fails after
    MEET_TIMEOUT_SECS."""
    arrived, everyone = _meetings.setdefault(ev.name, ([], asyncio.Event()))
    arrived.append(int(ev.i))
    if len(arrived) == int(ev.parties):
        everyone.set()
    await asyncio.wait_for(everyone.wait(), timeout=MEET_TIMEOUT_SECS)
    return StopEvent(result=ev.i)


@step("test::sync_meet")
def sync_meet(ctx: Context, ev: StartEvent) -> StopEvent:
    """The sync twin of `test::meet`: each run blocks its worker thread until
    ``parties`` runs wait together (a broken barrier fails them)."""
    with _sync_meetings_lock:
        barrier = _sync_meetings.setdefault(ev.name, threading.Barrier(int(ev.parties)))
    barrier.wait(timeout=MEET_TIMEOUT_SECS)
    return StopEvent(result=ev.i)


@step("test::fan_out")
async def fan_out(ctx: Context, ev: StartEvent) -> list[Item]:
    """Emits `n` Items at once; `test::collect` handles them concurrently."""
    total = int(ev.n)
    # Shared, process-local progress of this run (a private key never leaves the peer).
    await ctx.set("_collect", {"seen": [], "all_arrived": asyncio.Event()})
    return [Item(index=i, total=total) for i in range(total)]


@step("test::collect")
async def collect(ctx: Context, ev: Item) -> StopEvent | None:
    """Each call waits until every Item of its run is being handled at the same time;
    if the calls ran one after another the first would wait forever (here: 10 s, then fail)."""
    progress = await ctx.get("_collect")
    progress["seen"].append(ev.index)
    if len(progress["seen"]) == ev.total:
        progress["all_arrived"].set()
    await asyncio.wait_for(progress["all_arrived"].wait(), timeout=10)
    if ev.index == 0:
        return StopEvent(result={"seen": sorted(progress["seen"]), "run_id": ctx.run_id})
    return None


@step("test::bad_result")
def bad_result(ctx: Context, ev: StartEvent) -> StopEvent:
    """A sync step whose StopEvent result is not JSON-serializable."""
    return StopEvent(result=object())


@step("test::bad_state")
async def bad_state(ctx: Context, ev: StartEvent) -> StopEvent:
    """Stores a non-JSON value under a public (exported) key."""
    await ctx.set("bad", object())
    return StopEvent(result="unreachable")


@step("test::state")
async def state(ctx: Context, ev: StartEvent) -> StopEvent:
    """Public keys are exported with the result; `_` keys stay in this process."""
    await ctx.set("count", 3)
    await ctx.set("nested", {"a": [1, 2, None], "ok": True})
    await ctx.set("_secret", object())
    return StopEvent(
        result={
            "count": await ctx.get("count"),
            "secret_kept": await ctx.get("_secret") is not None,
        }
    )


@step("test::emit_ping")
async def emit_ping(ctx: Context, ev: StartEvent) -> Ping:
    return Ping(value=int(ev.value))


@step("test::any_event")
async def any_event(ctx: Context, ev: Event) -> StopEvent | None:
    """Annotated `Event`: receives the StartEvent and the Ping."""
    seen = await ctx.get("_any_seen")
    if seen is None:
        seen = {"types": [], "start_seen": asyncio.Event()}
        await ctx.set("_any_seen", seen)
    seen["types"].append(event_type_name(type(ev)))
    if isinstance(ev, StartEvent):
        seen["start_seen"].set()
        if ev.data == "stop-on-start":
            return StopEvent(result={"types": seen["types"]})
        return None
    await asyncio.wait_for(seen["start_seen"].wait(), timeout=10)
    return StopEvent(result={"types": sorted(seen["types"]), "value": ev.value})


@step("test::emit_child")
async def emit_child(ctx: Context, ev: StartEvent) -> Child:
    return Child(value=ev.value, extra=7)


@step("test::on_base")
def on_base(ctx: Context, ev: Base) -> StopEvent:
    return StopEvent(
        result={
            "class": type(ev).__name__,
            "event_type": event_type_name(type(ev)),
            "is_base": isinstance(ev, Base),
            "value": ev.value,
            "extra": getattr(ev, "extra", None),
        }
    )


@step("test::base_sink")
async def base_sink(ctx: Context, ev: Base) -> None:
    """Accepts Base (so also Child) and returns nothing: the run ends without a StopEvent."""
    return None


@step("test::orphan")
async def orphan(ctx: Context, ev: StartEvent) -> Orphan:
    return Orphan(note="nobody listens")


@step("test::returns_none")
async def returns_none(ctx: Context, ev: StartEvent) -> None:
    return None
