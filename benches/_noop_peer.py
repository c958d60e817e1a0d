"""A peer serving trivial async steps; prints READY HOST:PORT.

Steps:
  bench::noop              StartEvent -> StopEvent(result=ev.data)
  bench::chain::0 .. ::9   a chain: step i turns its event into Hop(i+1), the last stops;
                           run all ten ids in one call to cost a ten-step workflow
  bench::work              a `def` step busy for `ev.ms` milliseconds of CPU, then echoes
                           `ev.data`: one peer process does one at a time (the GIL), so a
                           pool's throughput shows how it spreads work over processes

Load, to show that a call's cost does not grow with what the peer holds:
  --refs N         N small session refs live in the server's registry before serving
  --extra-steps N  N more steps registered (never called)

Run: python benches/_noop_peer.py [--refs N] [--extra-steps N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

from blazen_peer import Context, Event, PeerServer, StartEvent, StopEvent, register_step, step

CHAIN_LENGTH = 10
CHAIN_STEP_IDS = [f"bench::chain::{i}" for i in range(CHAIN_LENGTH)]


@step("bench::noop")
async def noop(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)


@step("bench::work")
def work(ctx: Context, ev: StartEvent) -> StopEvent:
    deadline = time.perf_counter() + ev.ms / 1000
    digest = b""
    while time.perf_counter() < deadline:
        digest = hashlib.sha256(digest).digest()
    return StopEvent(result=ev.data)


def hop_class(index: int) -> type[Event]:
    """Event class Hop<index> carrying ``data``; a distinct type per link, so each event
    reaches exactly the next step of the chain."""

    def body(namespace: dict[str, Any]) -> None:
        namespace["__annotations__"] = {"data": Any}
        namespace["__module__"] = __name__

    return types.new_class(f"Hop{index}", (Event,), {"event_type": f"bench::Hop{index}"}, body)


def chain_step(index: int, hops: list[type[Event]]) -> Callable[[Context, Any], Awaitable[Event]]:
    async def link(ctx: Context, ev: Any) -> Event:
        data = ev.data
        if index == CHAIN_LENGTH - 1:
            return StopEvent(result=data)
        return hops[index + 1](data=data)  # type: ignore[call-arg]

    return link


def register_chain() -> None:
    # hops[0] is StartEvent: the first link takes the run's input like any step.
    hops: list[type[Event]] = [StartEvent, *(hop_class(i) for i in range(1, CHAIN_LENGTH))]
    for index, step_id in enumerate(CHAIN_STEP_IDS):
        register_step(step_id, chain_step(index, hops), accepts=[hops[index]])


async def unused(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=None)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refs", type=int, default=0)
    parser.add_argument("--extra-steps", type=int, default=0)
    args = parser.parse_args()

    register_chain()
    for i in range(args.extra_steps):
        register_step(f"bench::extra::{i}", unused, accepts=[StartEvent])
    server = PeerServer("bench-peer")
    # Outside any run, so they live until removed: the registry the calls run against is
    # as full as a busy peer's.
    for i in range(args.refs):
        server.session_refs.insert(i.to_bytes(8, "little"))
    if len(server.session_refs) != args.refs:
        raise SystemExit(f"registry holds {len(server.session_refs)} refs, not {args.refs}")
    print(f"READY {await server.start('127.0.0.1:0')}", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
