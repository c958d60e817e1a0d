"""The machine with the GPU / the private data: serves two steps.

Run: python examples/peer_b.py [ADDRESS]   (default 127.0.0.1:50051; port 0 picks one)
The one-line form `asyncio.run(PeerServer("node-b").serve(address))` works too;
this script prints the bound address so other programs can wait for it.
"""

import asyncio
import contextlib
import sys

from blazen_peer import Context, Event, PeerServer, StartEvent, StopEvent, step


class Analyzed(Event):
    words: int
    document: str


@step("my_app::analyze")
async def analyze(ctx: Context, ev: StartEvent) -> Analyzed:
    await ctx.set("language", "en")  # exported state, returned to the caller
    return Analyzed(words=len(ev.document.split()), document=ev.document)


@step("my_app::summarize")
def summarize(ctx: Context, ev: Analyzed) -> StopEvent:  # a plain def step runs in a worker thread
    return StopEvent(result={"words": ev.words, "summary": ev.document[:40]})


async def main(address: str) -> None:
    async with PeerServer("node-b") as server:
        bound = await server.start(address)
        print(f"node-b listening on {bound}", flush=True)
        await asyncio.get_running_loop().create_future()  # serve until cancelled (Ctrl-C)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
