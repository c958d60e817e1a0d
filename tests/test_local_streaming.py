"""A local Workflow run exposes the events its steps write, as a remote stream does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from blazen_peer import (
    Context,
    Event,
    GenericEvent,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    register_step,
)


class Progress(Event, event_type="tests.local.Progress"):
    """A step's progress."""

    step: str
    done: int


class Halfway(Event, event_type="tests.local.Halfway"):
    """Between the two steps."""


async def test_stream_events_yields_what_async_and_def_steps_write_then_the_stop(
    step_ids: Callable[[str], str],
) -> None:
    async def first(ctx: Context, ev: StartEvent) -> Halfway:
        for done in range(3):
            ctx.write_event_to_stream(Progress(step="first", done=done))
            await asyncio.sleep(0)
        return Halfway()

    def second(ctx: Context, ev: Halfway) -> StopEvent:
        ctx.write_event_to_stream(Progress(step="second", done=0))
        return StopEvent(result="finished")

    ids = [step_ids("first"), step_ids("second")]
    register_step(ids[0], first)
    register_step(ids[1], second)
    handler = await Workflow("local-stream", ids).run()
    seen = [event async for event in handler.stream_events()]
    assert [(e.step, e.done) for e in seen[:-1] if isinstance(e, Progress)] == [
        ("first", 0),
        ("first", 1),
        ("first", 2),
        ("second", 0),
    ]
    assert all(isinstance(event, Progress) for event in seen[:-1])
    assert isinstance(seen[-1], StopEvent) and seen[-1].result == "finished"
    assert await handler.result() == "finished"


async def test_a_slow_reader_slows_the_steps_and_loses_nothing(
    step_ids: Callable[[str], str],
) -> None:
    total = 500  # well past the stream's buffer

    def writer(ctx: Context, ev: StartEvent) -> StopEvent:
        for n in range(total):
            ctx.write_event_to_stream(GenericEvent(event_type="tests.local.N", data={"n": n}))
        return StopEvent(result=total)

    writer_id = step_ids("writer")
    register_step(writer_id, writer)
    handler = await Workflow("slow-reader", [writer_id]).run()
    numbers = []
    async for event in handler.stream_events():
        if isinstance(event, StopEvent):
            break
        numbers.append(event.data["n"])  # type: ignore[attr-defined]
        await asyncio.sleep(0)
    assert numbers == list(range(total))


async def test_a_failed_run_raises_after_the_events_written_before_it(
    step_ids: Callable[[str], str],
) -> None:
    async def fails(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Progress(step="fails", done=1))
        raise RuntimeError("broke after one event")

    fails_id = step_ids("fails")
    register_step(fails_id, fails)
    handler = await Workflow("fails", [fails_id]).run()
    seen = []
    with pytest.raises(WorkflowError, match="broke after one event"):
        async for event in handler.stream_events():
            seen.append(event)
    assert [type(event) for event in seen] == [Progress]


async def test_a_run_nobody_streams_never_waits_for_a_reader(
    step_ids: Callable[[str], str],
) -> None:
    wrote_all = threading.Event()

    def chatty(ctx: Context, ev: StartEvent) -> StopEvent:
        for n in range(1000):
            ctx.write_event_to_stream(GenericEvent(event_type="tests.local.N", data={"n": n}))
        wrote_all.set()
        return StopEvent(result="done")

    chatty_id = step_ids("chatty")
    register_step(chatty_id, chatty)
    # result() without stream_events(): the events go unread, the steps never block.
    assert await (await Workflow("chatty", [chatty_id]).run()) == "done"
    assert wrote_all.is_set()


async def test_a_runs_events_are_read_once(step_ids: Callable[[str], str]) -> None:
    async def quiet(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="quiet")

    quiet_id = step_ids("quiet")
    register_step(quiet_id, quiet)
    handler = await Workflow("quiet", [quiet_id]).run()
    assert [type(event) async for event in handler.stream_events()] == [StopEvent]
    with pytest.raises(ValidationError, match="already called"):
        await anext(handler.stream_events())
