"""The peer of benches/soak.py: serves the soak's steps, prints READY HOST:PORT, and serves
until SIGTERM (then stops gracefully and exits 0).

Steps (every input is an object; ``ballast`` is a byte count):
  soak::ok, soak::ok_sync            echo ``ev.data`` (async def / def)
  soak::fail, soak::fail_sync        hold ``ballast`` bytes in a local, then raise: a leaked
                                     exception keeps its frame, so the ballast shows in RSS
  soak::sleep, soak::sleep_sync      sleep ``secs`` (the def one until ``ctx.cancelled``),
                                     for timeouts and cancelled calls
  soak::stream, soak::stream_sync    write ``n`` Tick events to the stream, then stop with
                                     ``{"written": n}``; the def one stops early when cancelled
  soak::refs                         insert one ref per name in ``lifetimes`` (a RefLifetime
                                     name; the value is ``ref_value(seed)``), return
                                     ``{lifetime: key}``; with ``fail``, raise after inserting
                                     (holding ``ballast`` bytes like soak::fail)
  soak::stats                        this process after ``gc.collect()``: VmRSS, open fds, OS
                                     threads, Python threads, GC-tracked objects, the server's
                                     live session refs (count, bytes) and its run counters

Run: python benches/_soak_peer.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from typing import Any

from _soak_shared import STREAM_EVENT_TYPE, proc_figures, python_figures, ref_value
from blazen_peer import Context, Event, PeerServer, RefLifetime, StartEvent, StopEvent, step

SERVER: PeerServer | None = None
"""The serving PeerServer (soak::stats reads its registry and counters)."""


class Tick(Event, event_type=STREAM_EVENT_TYPE):
    """One event of a streaming run."""

    n: int


class PlannedFailure(RuntimeError):
    """What the failing steps raise."""


def _echo(ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)


@step("soak::ok")
async def ok(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.sleep(0)
    return _echo(ev)


@step("soak::ok_sync")
def ok_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    return _echo(ev)


def _fail(ev: StartEvent) -> StopEvent:
    """Raises with ``ev.ballast`` bytes in a local: a leaked traceback keeps this frame."""
    ballast = b"x" * int(ev.ballast)  # written, so its pages count in RSS
    raise PlannedFailure(f"planned failure of call {ev.seq} holding {len(ballast)} bytes")


@step("soak::fail")
async def fail(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.sleep(0)
    return _fail(ev)


@step("soak::fail_sync")
def fail_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    return _fail(ev)


@step("soak::sleep")
async def sleep(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.sleep(float(ev.secs))
    return StopEvent(result="woke up")


@step("soak::sleep_sync")
def sleep_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    deadline = time.monotonic() + float(ev.secs)
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.005)
    return StopEvent(result="stopped" if ctx.cancelled else "woke up")


@step("soak::stream")
async def stream(ctx: Context, ev: StartEvent) -> StopEvent:
    total = int(ev.n)
    for n in range(total):
        ctx.write_event_to_stream(Tick(n=n))
        await asyncio.sleep(0)  # where a full stream buffer pauses this step
    return StopEvent(result={"written": total})


@step("soak::stream_sync")
def stream_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    total = int(ev.n)
    written = 0
    while written < total and not ctx.cancelled:
        ctx.write_event_to_stream(Tick(n=written))  # blocks while the stream buffer is full
        written += 1
    return StopEvent(result={"written": written})


@step("soak::refs")
async def refs(ctx: Context, ev: StartEvent) -> StopEvent:
    keys = {}
    for name in ev.lifetimes:
        key = await ctx.session_refs.insert(ref_value(int(ev.seed)), lifetime=RefLifetime[name])
        keys[name] = str(key)
    if ev.data.get("fail"):
        return _fail(ev)
    return StopEvent(result=keys)


@step("soak::stats")
async def stats(ctx: Context, ev: StartEvent) -> StopEvent:
    if SERVER is None:
        raise RuntimeError("soak::stats needs the soak peer's server (run _soak_peer.py)")
    figures: dict[str, Any] = {**proc_figures(), **python_figures()}
    figures["refs"] = len(SERVER.session_refs)
    figures["ref_bytes"] = SERVER.session_refs.total_bytes
    figures["runs"] = dataclasses.asdict(SERVER.stats())
    return StopEvent(result=figures)


async def main() -> None:
    global SERVER
    # Failed runs log a WARNING each; with no handler configured, Python's last-resort
    # handler would print every one of them on stderr. The records are still made.
    logging.getLogger("blazen_peer").addHandler(logging.NullHandler())
    SERVER = server = PeerServer("soak-peer")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"READY {await server.start('127.0.0.1:0')}", flush=True)
    await stop.wait()
    await server.stop(grace=5)


if __name__ == "__main__":
    asyncio.run(main())
