"""A peer whose steps have limits (max_concurrency, timeout_secs, retries), for
tests/test_step_policies.py and the placement tests of tests/test_placement.py.

    python tests/policy_peer.py [--node-id ID] [--label NAME=VALUE ...]

Prints ``LISTENING HOST:PORT`` once serving; stops when stdin reaches end-of-file.
The steps record what they saw (peak overlap, cancellations, attempts, calls)
in this process, and ``policy::report`` answers it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any

from blazen_peer import (
    Context,
    Event,
    PeerClient,
    PeerPool,
    PeerServer,
    Retry,
    StartEvent,
    StopEvent,
    UsageEvent,
    step,
)

# What the steps saw, read back by `policy::report`.
_seen: dict[str, Any] = {
    "current": 0,
    "peak": 0,
    "async_cancelled": False,
    "attempts": {},
    "calls": 0,
}
_def_step_saw_cancel = threading.Event()
_release = asyncio.Event()


class Entered(Event, event_type="policy.Entered"):
    """Written by `policy::held` once it holds its slot."""


@step("policy::pair", max_concurrency=2)
async def pair(ctx: Context, ev: StartEvent) -> StopEvent:
    """Holds its slot until a second call is inside too (or it is the last call),
    so the limit is reached, and records the largest overlap it saw."""
    _seen["current"] += 1
    _seen["peak"] = max(_seen["peak"], _seen["current"])
    _entered_total = _seen.setdefault("entered", 0) + 1
    _seen["entered"] = _entered_total
    try:
        async with _overlap:
            _overlap.notify_all()
            await asyncio.wait_for(
                _overlap.wait_for(
                    lambda: _seen["current"] >= 2 or _seen["entered"] >= ev.data["total"]
                ),
                timeout=30,
            )
        return StopEvent(result=_seen["peak"])
    finally:
        _seen["current"] -= 1


_overlap = asyncio.Condition()


@step("policy::held", max_concurrency=1)
async def held(ctx: Context, ev: StartEvent) -> StopEvent:
    """Holds its only slot until `policy::release` runs (each release frees one hold)."""
    ctx.write_event_to_stream(Entered())
    await asyncio.wait_for(_release.wait(), timeout=30)
    _release.clear()
    return StopEvent(result="released")


@step("policy::release")
async def release(ctx: Context, ev: StartEvent) -> StopEvent:
    _release.set()
    return StopEvent(result=True)


@step("policy::hangs", timeout_secs=1)
async def hangs(ctx: Context, ev: StartEvent) -> StopEvent:
    """Never finishes on its own; its timeout cancels it."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        _seen["async_cancelled"] = True
        raise
    return StopEvent(result="unreachable")


@step("policy::hangs_def", timeout_secs=1)
def hangs_def(ctx: Context, ev: StartEvent) -> StopEvent:
    """A `def` step cannot be interrupted: it stops when told (``ctx.cancelled``)."""
    while not ctx.cancelled:
        time.sleep(0.01)
    _def_step_saw_cancel.set()
    return StopEvent(result="stopped")


_stubborn_release = threading.Event()
_stubborn = {"current": 0, "peak": 0}
_stubborn_lock = threading.Lock()


@step("policy::stubborn", max_concurrency=1, timeout_secs=1)
def stubborn(ctx: Context, ev: StartEvent) -> StopEvent:
    """A `def` step that ignores ``ctx.cancelled`` until `policy::unblock` runs:
    its thread outlives its timeout, and must keep its slot until it returns."""
    with _stubborn_lock:
        _stubborn["current"] += 1
        _stubborn["peak"] = max(_stubborn["peak"], _stubborn["current"])
    try:
        if ev.data.get("wait"):
            _stubborn_release.wait(30)
        return StopEvent(result=dict(_stubborn))
    finally:
        with _stubborn_lock:
            _stubborn["current"] -= 1


@step("policy::unblock")
def unblock(ctx: Context, ev: StartEvent) -> StopEvent:
    _stubborn_release.set()
    return StopEvent(result=True)


@step(
    "policy::flaky",
    retries=Retry(attempts=3, backoff_secs=0.01, on=(ConnectionError,)),
)
def flaky(ctx: Context, ev: StartEvent) -> StopEvent:
    """Raises ``ev.data['error']`` until its ``succeed_on``-th attempt for ``key``."""
    key = ev.data["key"]
    attempts = _seen["attempts"]
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < ev.data["succeed_on"]:
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[ev.data["error"]](
            f"attempt {attempts[key]} of {key} failed"
        )
    return StopEvent(result=attempts[key])


@step("placement::count")
async def count(ctx: Context, ev: StartEvent) -> StopEvent:
    """Counts the calls this peer ran; answers its node id."""
    _seen["calls"] += 1
    return StopEvent(result=ctx.node_id)


@step("placement::hold")
async def hold(ctx: Context, ev: StartEvent) -> StopEvent:
    """Keeps a run in progress (so a stopping peer drains) until `policy::release`."""
    ctx.write_event_to_stream(Entered())
    await asyncio.wait_for(_release.wait(), timeout=30)
    return StopEvent(result=ctx.node_id)


# --- usage: node-c emits, node-b emits and delegates to node-c, the test is the parent ---

LLM_CALL = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}


@step("usage::llm")
async def llm(ctx: Context, ev: StartEvent) -> StopEvent:
    """One LLM call's usage, as a provider integration would report it."""
    await ctx.emit_usage(
        UsageEvent(provider="openai", model="gpt-4o-mini", cost_usd=0.00025, **LLM_CALL)
    )
    return StopEvent(result="answered")


@step("usage::embed_def")
def embed_def(ctx: Context, ev: StartEvent) -> StopEvent:
    """A `def` step's usage (twice: an embedding of two batches)."""
    for _ in range(2):
        ctx.emit_usage(
            UsageEvent(
                provider="local",
                model="embed-small",
                modality="Embedding",
                prompt_tokens=7,
                total_tokens=7,
                cost_usd=0.0001,
            )
        )
    return StopEvent(result="embedded")


@step("usage::delegate")
async def delegate(ctx: Context, ev: StartEvent) -> StopEvent:
    """Its own call, then two sub-runs on ``ev.data['next']``: one through a
    PeerClient, one through a PeerPool; their usage adds to this run's."""
    ctx.emit_usage(
        UsageEvent(
            provider="anthropic",
            model="claude-haiku",
            prompt_tokens=1000,
            completion_tokens=200,
            total_tokens=1200,
            cost_usd=0.003,
        )
    )
    client = await PeerClient.connect(ev.data["next"], node_id=ctx.node_id)
    try:
        await client.run_remote_workflow("llm", ["usage::llm"], {})
    finally:
        await client.close()
    async with await PeerPool.connect([ev.data["next"]], node_id=ctx.node_id) as pool:
        await pool.wait_for_healthy(1, timeout_secs=30)
        await pool.run_remote_workflow("embed", ["usage::embed_def"], {})
    return StopEvent(result="delegated")


@step("usage::delegate_def")
def delegate_def(ctx: Context, ev: StartEvent) -> StopEvent:
    """A `def` step delegating with the blocking client."""
    client = PeerClient.connect_blocking(ev.data["next"], node_id=ctx.node_id)
    try:
        client.run_remote_workflow_blocking("llm", ["usage::llm"], {})
    finally:
        client.close_blocking()
    return StopEvent(result="delegated")


@step("policy::report")
async def report(ctx: Context, ev: StartEvent) -> StopEvent:
    """What the steps saw; waits (bounded) for a `def` step to have seen its cancel."""
    if ev.data.get("wait_def_cancel"):
        saw = await asyncio.to_thread(_def_step_saw_cancel.wait, 10)
        return StopEvent(result={"def_saw_cancel": saw})
    return StopEvent(result={k: v for k, v in _seen.items() if k != "current"})


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    with contextlib.suppress(OSError, ValueError):
        while os.read(sys.stdin.fileno(), 4096):
            pass
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(stop.set)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    labels = dict(label.split("=", 1) for label in args.label)
    server = PeerServer(args.node_id, labels=labels)
    address = await server.start("127.0.0.1:0")
    threading.Thread(target=_stop_on_stdin_eof, args=(loop, stop), daemon=True).start()
    print(f"LISTENING {address}", flush=True)
    await stop.wait()
    # Runs in progress (a held one) end when the test releases them.
    await server.stop(grace=args.grace)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-id", default="node-p")
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--grace", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
