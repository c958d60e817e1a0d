"""A parent run in its own process, for the tests to kill while it holds refs.

    python tests/parent_client.py ADDRESS

Connects to the peer, enters ``async with client.parent_run() as run:``, has the
peer insert one ``UNTIL_PARENT_FINISH`` ref (step ``refs::make``), prints
``REF <key> PARENT <run id>``, and then stays inside the block (its heartbeat
renewing the lease) until its stdin reaches end-of-file. The tests SIGKILL it
before that, so the block is never left and the ref is never released.
"""

from __future__ import annotations

import asyncio
import sys

from blazen_peer import PeerClient


async def main(address: str) -> None:
    client = await PeerClient.connect(address, node_id="node-parent")
    async with client.parent_run() as run:
        response = await client.invoke_sub_workflow(
            "refs",
            ["refs::make"],
            {"items": [{"seed": 7, "size": 1000, "lifetime": "UNTIL_PARENT_FINISH"}]},
        )
        response.raise_for_error()
        (key,) = response.remote_refs
        print(f"REF {key} PARENT {run.id}", flush=True)
        # Stays in the block (heartbeat running) until stdin closes or we are killed.
        await asyncio.to_thread(sys.stdin.buffer.read)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
