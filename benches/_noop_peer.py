"""A peer serving one trivial async step; prints READY HOST:PORT."""

import asyncio

from blazen_peer import Context, PeerServer, StartEvent, StopEvent, step


@step("bench::noop")
async def noop(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)


async def main() -> None:
    server = PeerServer("bench-peer")
    print(f"READY {await server.start('127.0.0.1:0')}", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
