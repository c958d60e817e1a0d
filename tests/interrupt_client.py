"""A blocking caller in its own process, for a test to interrupt with Ctrl-C (SIGINT).

    python tests/interrupt_client.py ADDRESS TAG [call|stream|pool-call|pool-stream]

Connects with `PeerClient.connect_blocking` (`PeerPool.connect_blocking` for the
pool modes), prints `CALLING`, and runs `probe::long_async` (60 s) for TAG with
`run_remote_workflow_blocking` (default), or reads it with
`stream_sub_workflow_blocking` (the step writes no event, so the first `next()`
waits). When
SIGINT interrupts the call it prints `INTERRUPTED KeyboardInterrupt`, keeps the
client and its connection open until stdin reaches end-of-file (so a cancel the
peer sees comes from the interrupt, not from the connection closing), then
re-raises the KeyboardInterrupt: the process ends as an interrupted program does.
Any other outcome prints `RETURNED <json>` or `ERROR <type> <message>` and exits 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from blazen_peer import PeerClient, PeerPool


def main(address: str, tag: str, mode: str = "call") -> int:
    client: PeerClient | PeerPool
    if mode.startswith("pool-"):
        client = PeerPool.connect_blocking([address], node_id="node-interrupted")
    else:
        client = PeerClient.connect_blocking(address, node_id="node-interrupted")
    print("CALLING", flush=True)
    result: Any
    try:
        if mode.endswith("stream"):
            stream = client.stream_sub_workflow_blocking(
                "interrupt", ["probe::long_async"], {"tag": tag}
            )
            result = [str(event) for event in stream]
        else:
            result = client.run_remote_workflow_blocking(
                "interrupt", ["probe::long_async"], {"tag": tag}
            )
    except KeyboardInterrupt:
        print("INTERRUPTED KeyboardInterrupt", flush=True)
        sys.stdin.buffer.read()
        raise
    except Exception as exc:
        print(f"ERROR {type(exc).__name__} {exc}", flush=True)
        return 1
    print(f"RETURNED {json.dumps(result)}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
