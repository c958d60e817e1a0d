"""Starts peer node-b in another process, delegates the two-step pipeline to it,
and prints the result and exported state; then does the same from a local
Workflow step, as in the Rust guide's planned Python example.

Run: python examples/demo.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from blazen_peer import Context, Event, PeerClient, StopEvent, Workflow, step

PEER_SCRIPT = Path(__file__).with_name("peer_b.py")


def start_peer() -> tuple[subprocess.Popen[str], str]:
    """Launches peer_b.py on a free port and waits until it says where it listens."""
    peer = subprocess.Popen(
        [sys.executable, str(PEER_SCRIPT), "127.0.0.1:0"], stdout=subprocess.PIPE, text=True
    )
    assert peer.stdout is not None
    line = peer.stdout.readline()
    if "listening on" not in line:
        peer.kill()
        raise SystemExit(f"peer failed to start (exit code {peer.wait()})")
    return peer, "http://" + line.rsplit(" ", 1)[1].strip()


async def main(address: str) -> None:
    client = await PeerClient.connect(address, node_id="node-a")
    async with client:
        resp = await client.invoke_sub_workflow(
            workflow_name="analyze-pipeline",
            step_ids=["my_app::analyze", "my_app::summarize"],
            input={"document": "the quick brown fox"},
            timeout_secs=60,
        )
        print("result:", resp.result)
        print("state: ", resp.state)
        print("error: ", resp.error)

        @step
        async def orchestrate(ctx: Context, ev: Event) -> StopEvent:
            result = await client.invoke_sub_workflow(
                workflow_name="analyze-pipeline",
                step_ids=["my_app::analyze", "my_app::summarize"],
                input={"document": ev.document},
                timeout_secs=60,
            )
            return StopEvent(result=result)

        wf = Workflow("distributed-example", [orchestrate])
        handler = await wf.run(document="a local workflow delegating to node-b")
        result = await handler.result()
        print("local workflow result:", result.result)


if __name__ == "__main__":
    peer, address = start_peer()
    try:
        asyncio.run(main(address))
    finally:
        peer.terminate()
        peer.wait()
