"""Streaming steps (``stream::progress``, ``sync_progress``, ``peer_only``,
``fail_after``) for tests/test_streaming.py.

`Progress` comes from tests/stream_events.py, which the tests import too;
`tests.PeerOnly` is defined only in the peer process (by `peer_app.main`, through
`define_peer_only`).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from blazen_peer import Context, Event, StartEvent, StopEvent, step
from stream_events import Progress

PEER_ONLY_EVENT: Any = None
"""`tests.PeerOnly` once `define_peer_only` ran (importing this module never defines it)."""


def define_peer_only() -> None:
    """Defines `tests.PeerOnly` in this process (peer_app's `main` calls it)."""
    global PEER_ONLY_EVENT

    class PeerOnly(Event, event_type="tests.PeerOnly"):
        """An event type the test process does not know."""

        note: str
        values: list[int]

    PEER_ONLY_EVENT = PeerOnly


@step("stream::progress")
async def stream_progress(ctx: Context, ev: StartEvent) -> StopEvent:
    """Writes ``n`` Progress events (epochs 0..n-1), then stops with ``{"written": n}``."""
    total = int(ev.n)
    for epoch in range(total):
        ctx.write_event_to_stream(Progress(epoch=epoch))
    await ctx.set("epochs", total)
    return StopEvent(result={"written": total})


@step("stream::sync_progress")
def stream_sync_progress(ctx: Context, ev: StartEvent) -> StopEvent:
    """The sync twin of `stream::progress` (its writes block while the buffer is full)."""
    total = int(ev.n)
    for epoch in range(total):
        ctx.write_event_to_stream(Progress(epoch=epoch))
    return StopEvent(
        result={
            "written": total,
            "on_main_thread": threading.current_thread() is threading.main_thread(),
        }
    )


@step("stream::peer_only")
async def stream_peer_only(ctx: Context, ev: StartEvent) -> StopEvent:
    """Writes one event of a type only this process defines."""
    if PEER_ONLY_EVENT is None:
        raise RuntimeError("stream::peer_only needs the peer_app server (run peer_app.py)")
    ctx.write_event_to_stream(PEER_ONLY_EVENT(note="only the peer knows", values=[1, 2, 3]))
    return StopEvent(result="sent")


@step("stream::fail_after")
async def stream_fail_after(ctx: Context, ev: StartEvent) -> StopEvent:
    """Writes ``k`` Progress events, then raises (``then: "raise"``) or sleeps 60 s."""
    for epoch in range(int(ev.k)):
        ctx.write_event_to_stream(Progress(epoch=epoch))
    if ev.then == "raise":
        raise RuntimeError(f"failed after {ev.k} events")
    await asyncio.sleep(60)
    return StopEvent(result="woke up")
