"""The machine with the GPU / the private data: serves two steps.

Run: python examples/peer_b.py [ADDRESS]   (default 127.0.0.1:50051)
"""

import asyncio
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


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    asyncio.run(PeerServer("node-b").serve(address))
