"""Probes: what happened to a run, seen from inside the peer (``probe::*`` and the
``stream::produce`` producers) for tests/test_cancellation.py, test_streaming.py,
test_shutdown.py and the probe helpers in conftest.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import peer_state
from blazen_peer import Context, StartEvent, StopEvent, step
from stream_events import Blob

PROBES: dict[str, dict[str, Any]] = {}
"""By tag: ``state`` (started, then cancelled/stopped/finished), the ``ref`` key the run
inserted (default lifetime) and ``time.monotonic()`` stamps (comparable across processes)."""
PRODUCED: dict[str, int] = {}
"""By tag: how many events `stream::produce` has written so far."""
LONG_STEP_SECS = 60.0


async def _probe_start(ctx: Context, tag: str, kind: str) -> None:
    _probe_started(tag, kind, await ctx.session_refs.insert(b"held while the run lives"))


def _probe_started(tag: str, kind: str, key: object) -> None:
    PROBES[tag] = {
        "state": "started",
        "kind": kind,
        "ref": str(key),
        "started_at": time.monotonic(),
    }


def _probe_end(tag: str, state: str) -> None:
    PROBES[tag].update(state=state, ended_at=time.monotonic())


@step("probe::long_async")
async def probe_long_async(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts a ref, records "started", sleeps LONG_STEP_SECS; records "cancelled" when
    asyncio.CancelledError arrives (and re-raises it)."""
    await _probe_start(ctx, ev.tag, "async")
    try:
        await asyncio.sleep(LONG_STEP_SECS)
    except asyncio.CancelledError:
        _probe_end(ev.tag, "cancelled")
        raise
    _probe_end(ev.tag, "finished")
    return StopEvent(result="finished")


@step("probe::long_sync")
def probe_long_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts a ref, records "started", then loops until ``ctx.cancelled`` (records
    "stopped") or LONG_STEP_SECS pass (records "finished")."""
    _probe_started(ev.tag, "sync", ctx.session_refs.insert_sync(b"held while the run lives"))
    deadline = time.monotonic() + LONG_STEP_SECS
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.005)
    _probe_end(ev.tag, "stopped" if ctx.cancelled else "finished")
    return StopEvent(result="finished")


@step("stream::produce")
async def stream_produce(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts a ref, records "started", then writes ``count`` Blob events of ``size``
    characters, counting them in PRODUCED[tag]; records "cancelled" when cancelled."""
    await _probe_start(ctx, ev.tag, "stream")
    PRODUCED[ev.tag] = 0
    size = int(ev.size)
    try:
        for index in range(int(ev.count)):
            payload = f"{index:08d}".ljust(size, "x")
            ctx.write_event_to_stream(Blob(index=index, payload=payload))
            PRODUCED[ev.tag] = index + 1
            await asyncio.sleep(0)  # where a full stream buffer pauses this step
    except asyncio.CancelledError:
        _probe_end(ev.tag, "cancelled")
        raise
    _probe_end(ev.tag, "finished")
    return StopEvent(result={"written": PRODUCED[ev.tag]})


@step("stream::produce_sync")
def stream_produce_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    """The sync twin of `stream::produce` (its writes block while the buffer is full);
    records "stopped" when it sees ``ctx.cancelled``."""
    _probe_started(ev.tag, "sync-stream", ctx.session_refs.insert_sync(b"held while it runs"))
    PRODUCED[ev.tag] = 0
    size = int(ev.size)
    try:
        for index in range(int(ev.count)):
            if ctx.cancelled:
                break
            payload = f"{index:08d}".ljust(size, "x")
            ctx.write_event_to_stream(Blob(index=index, payload=payload))
            PRODUCED[ev.tag] = index + 1
    finally:
        _probe_end(ev.tag, "stopped" if ctx.cancelled else "finished")
    return StopEvent(result={"written": PRODUCED[ev.tag]})


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@step("probe::status")
async def probe_status(ctx: Context, ev: StartEvent) -> StopEvent:
    """What the probes recorded under ``tag``, whether the probe's ref is still in the
    server's registry, PRODUCED[tag], this process's RSS and the server's stats."""
    entry = PROBES.get(ev.tag)
    held = None
    if entry is not None:
        held = entry["ref"] in {str(info.key) for info in peer_state.server_refs().list()}
    stats = dataclasses.asdict(peer_state.SERVER.stats()) if peer_state.SERVER is not None else None
    return StopEvent(
        result={
            "entry": entry,
            "ref_held": held,
            "produced": PRODUCED.get(ev.tag),
            "rss_bytes": _rss_bytes(),
            "stats": stats,
            "now": time.monotonic(),
        }
    )
