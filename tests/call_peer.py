"""A client in its own process: calls a peer with the blocking API and prints the result.

    python tests/call_peer.py ADDRESS WORKFLOW STEP_IDS_JSON INPUT_JSON [TIMEOUT_SECS]

Prints the result's JSON text and exits 0; on a PeerError prints
`ERROR <kind> <message>` and exits 2.
"""

from __future__ import annotations

import json
import sys

from blazen_peer import PeerClient, PeerError


def main(argv: list[str]) -> int:
    address, workflow, step_ids_json, input_json, *rest = argv
    timeout = float(rest[0]) if rest else None
    try:
        with PeerClient.connect_blocking(address, node_id="node-subprocess") as client:
            text = client.run_remote_workflow_json_blocking(
                workflow, json.loads(step_ids_json), input_json, timeout_secs=timeout
            )
    except PeerError as exc:
        print(f"ERROR {exc.kind} {exc}", flush=True)
        return 2
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
