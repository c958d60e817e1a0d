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
  soak::digest                       ``ctx.session_refs.get(key)`` of an upload: its size and
                                     SHA-256 (``digest``)
  soak::p2p                          ``ctx.session_refs.fetch(ref)`` of a handle naming a ref
                                     of the origin server (below): its size and SHA-256
  soak::policy, soak::policy_sync    max_concurrency=2, timeout_secs=POLICY_TIMEOUT_SECS,
                                     retries=Retry(attempts=2, on=(Hiccup,)): raise Hiccup on
                                     the first attempt of ``seq`` and echo it on the retry, or
                                     with ``hang`` (seconds), sleep past the timeout first
  soak::usage, soak::usage_sync      ``ctx.emit_usage`` one UsageEvent (provider "soak") per
                                     object of ``usage`` (its fields), then stop with "used"
  soak::stats                        this process after ``gc.collect()``: VmRSS, open fds, OS
                                     threads, Python threads, GC-tracked objects, both servers'
                                     live session refs (count, bytes), the uploaded bytes held,
                                     the run counters and the origin's runs in flight

Two servers run in this process: the soak's peer (max_upload_bytes=MAX_UPLOAD_BYTES), and the
origin, "soak-origin", on a port of its own; the peer's directory (``peers=``) names the origin,
so soak::p2p fetches over the network, as from any other machine. Before READY the peer makes
one such fetch, so the link it keeps to the origin is there in the soak's first sample.

Run: python benches/_soak_peer.py  (prints READY PEER_ADDRESS ORIGIN_ADDRESS)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from typing import Any

from _soak_shared import (
    MAX_UPLOAD_BYTES,
    POLICY_TIMEOUT_SECS,
    STREAM_EVENT_TYPE,
    digest,
    proc_figures,
    python_figures,
    ref_value,
)
from blazen_peer import (
    Context,
    Event,
    PeerClient,
    PeerLink,
    PeerServer,
    RefLifetime,
    Retry,
    StartEvent,
    StopEvent,
    UsageEvent,
    step,
)

SERVER: PeerServer | None = None
"""The serving PeerServer (soak::stats reads its registry and counters)."""
ORIGIN: PeerServer | None = None
"""The second server, whose refs soak::p2p fetches."""
ORIGIN_NODE_ID = "soak-origin"


class Tick(Event, event_type=STREAM_EVENT_TYPE):
    """One event of a streaming run."""

    n: int


class PlannedFailure(RuntimeError):
    """What the failing steps raise."""


class Hiccup(RuntimeError):
    """What the policy steps raise on a first attempt (retried)."""


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


@step("soak::digest")
async def digest_upload(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=digest(await ctx.session_refs.get(ev.key)))


@step("soak::p2p")
async def p2p(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=digest(await ctx.session_refs.fetch(ev.ref)))


FIRST_ATTEMPTS: set[int] = set()
"""The seqs whose first attempt failed and whose retry has not come yet (empty between calls)."""


def _first_attempt_fails(seq: int) -> None:
    if seq in FIRST_ATTEMPTS:
        FIRST_ATTEMPTS.discard(seq)
        return
    FIRST_ATTEMPTS.add(seq)
    raise Hiccup(f"first attempt of call {seq}")


# Both policy steps: 2 at a time, POLICY_TIMEOUT_SECS per attempt, one retry on Hiccup.
LIMITS: dict[str, Any] = {"max_concurrency": 2, "timeout_secs": POLICY_TIMEOUT_SECS}
RETRY = Retry(attempts=2, backoff_secs=0.001, on=(Hiccup,))


@step("soak::policy", retries=RETRY, **LIMITS)
async def policy(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.sleep(float(ev.data.get("hang", 0)))
    _first_attempt_fails(int(ev.seq))
    return _echo(ev)


@step("soak::policy_sync", retries=RETRY, **LIMITS)
def policy_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    # A timed-out def step keeps its slot until it returns: it checks ctx.cancelled.
    deadline = time.monotonic() + float(ev.data.get("hang", 0))
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.005)
    if ctx.cancelled:
        return StopEvent(result="stopped")
    _first_attempt_fails(int(ev.seq))
    return _echo(ev)


def _usage_events(ev: StartEvent) -> list[UsageEvent]:
    return [UsageEvent(provider="soak", **fields) for fields in ev.usage]


@step("soak::usage")
async def usage(ctx: Context, ev: StartEvent) -> StopEvent:
    for event in _usage_events(ev):
        await ctx.emit_usage(event)
    return StopEvent(result="used")


@step("soak::usage_sync")
def usage_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    for event in _usage_events(ev):
        ctx.emit_usage(event)
    return StopEvent(result="used")


@step("soak::stats")
async def stats(ctx: Context, ev: StartEvent) -> StopEvent:
    if SERVER is None or ORIGIN is None:
        raise RuntimeError("soak::stats needs the soak peer's servers (run _soak_peer.py)")
    figures: dict[str, Any] = {**proc_figures(), **python_figures()}
    figures["refs"] = len(SERVER.session_refs) + len(ORIGIN.session_refs)
    figures["ref_bytes"] = SERVER.session_refs.total_bytes + ORIGIN.session_refs.total_bytes
    uploads = SERVER.uploads()
    figures["upload_bytes"] = uploads.bytes_held
    figures["uploads_in_progress"] = uploads.in_progress
    figures["runs"] = dataclasses.asdict(SERVER.stats())
    figures["origin_runs_in_flight"] = ORIGIN.stats().runs_in_flight
    return StopEvent(result=figures)


async def open_origin_link(address: str, origin_address: str) -> None:
    """One soak::p2p call (as soak.py makes them) from a client of this process: the
    peer's directory connects to the origin on first use and keeps that connection."""
    async with (
        await PeerClient.connect(f"http://{origin_address}", node_id="soak-warmup") as origin,
        await PeerClient.connect(f"http://{address}", node_id="soak-warmup") as peer,
        origin.parent_run(),
    ):
        response = await origin.invoke_sub_workflow(
            "soak", ["soak::refs"], {"seed": 0, "lifetimes": ["UNTIL_PARENT_FINISH"]}
        )
        handle = response.remote_ref("UNTIL_PARENT_FINISH")
        got = await peer.run_remote_workflow("soak", ["soak::p2p"], {"ref": handle})
    if got != digest(ref_value(0)):
        raise RuntimeError(f"the warm-up fetch from the origin got {got!r}")


async def main() -> None:
    global SERVER, ORIGIN
    # Failed runs log a WARNING each (as do retries); with no handler configured, Python's
    # last-resort handler would print every one of them on stderr. The records are still made.
    logging.getLogger("blazen_peer").addHandler(logging.NullHandler())
    ORIGIN = origin = PeerServer(ORIGIN_NODE_ID)
    origin_address = await origin.start("127.0.0.1:0")
    SERVER = server = PeerServer(
        "soak-peer",
        max_upload_bytes=MAX_UPLOAD_BYTES,
        peers={ORIGIN_NODE_ID: PeerLink(f"http://{origin_address}")},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    address = await server.start("127.0.0.1:0")
    await open_origin_link(address, origin_address)
    print(f"READY {address} {origin_address}", flush=True)
    await stop.wait()
    await server.stop(grace=5)
    await origin.stop(grace=5)


if __name__ == "__main__":
    asyncio.run(main())
