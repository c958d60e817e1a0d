"""The machine with the GPU / the private data: serves two steps.

Run: python examples/peer_b.py [ADDRESS]   (default 127.0.0.1:50051; port 0 picks one)
The one-line form `asyncio.run(PeerServer("node-b").serve(address))` works too;
this script prints the bound address so other programs can wait for it.

The event and the two steps are the README's `peer_b.py`; their one copy is the
module `blazen-peer demo` serves (blazen_peer/cli/_demo_peer.py, part of the
installed package, which this directory is not). Importing it registers them,
and the `analyze-pipeline` workflow of the two.
"""

import asyncio
import contextlib
import sys

from blazen_peer import PeerServer
from blazen_peer.cli._demo_peer import Analyzed, analyze, summarize

__all__ = ["Analyzed", "analyze", "main", "summarize"]


async def main(address: str) -> None:
    async with PeerServer("node-b") as server:
        bound = await server.start(address)
        print(f"node-b listening on {bound}", flush=True)
        await asyncio.get_running_loop().create_future()  # serve until cancelled (Ctrl-C)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
