"""A peer for values_throughput.py; prints READY HOST:PORT.

    python benches/_values_peer.py NODE_ID [PEERS_JSON]

Steps:
  values::make {"size": N}     keeps an N-byte value (UNTIL_EXPLICIT_DROP); returns its key
  values::fetch {"ref": ...}   fetches a RemoteRef from the peer holding it; returns its size
  values::get {"key": ...}     reads an uploaded value in place; returns its size
  values::hwm {"reset": bool}  this process's peak RSS (bytes), first reset to the current RSS
"""

import asyncio
import json
import sys

from _ref_peer_common import PATTERN, filled, peak_rss
from blazen_peer import Context, PeerServer, RefLifetime, StartEvent, StopEvent, step


def checked(value: object) -> int:
    """The value's size, after checking its first and last pattern periods."""
    view = memoryview(value)  # type: ignore[arg-type]
    size = view.nbytes
    period = len(set(PATTERN))
    head = min(size, period)
    if bytes(view[:head]) != PATTERN[:head] or (
        size > period and view[size - 1] != (size - 1) % period
    ):
        raise ValueError("the value arrived with the wrong bytes")
    return size


@step("values::make")
async def make(ctx: Context, ev: StartEvent) -> StopEvent:
    value = filled(int(ev.data["size"]))
    key = await ctx.session_refs.insert(value, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    return StopEvent(result=str(key))


@step("values::fetch")
async def fetch(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=checked(await ctx.session_refs.fetch(ev.data["ref"])))


@step("values::get")
async def get(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=checked(await ctx.session_refs.get(ev.data["key"])))


@step("values::hwm")
def hwm(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=peak_rss(reset=bool(ev.data.get("reset"))))


async def main(node_id: str, peers: str | None) -> None:
    server = PeerServer(node_id, peers=json.loads(peers) if peers else None)
    print(f"READY {await server.start('127.0.0.1:0')}", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
