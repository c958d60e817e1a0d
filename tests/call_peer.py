"""A client in its own process: calls a peer and prints the result's JSON text.

    python tests/call_peer.py ADDRESS WORKFLOW STEP_IDS_JSON INPUT_JSON
        [--timeout SECS] [--async-calls N]

By default it uses the blocking API (`connect_blocking`,
`run_remote_workflow_json_blocking`). With `--async-calls N` it instead makes N
concurrent calls with the async API under `asyncio.run` and prints the last
result. Exits 0 after printing; on a PeerError prints `ERROR <kind> <message>`
and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from blazen_peer import PeerClient, PeerError


def call_blocking(args: argparse.Namespace) -> str:
    with PeerClient.connect_blocking(args.address, node_id="node-subprocess") as client:
        return client.run_remote_workflow_json_blocking(
            args.workflow, json.loads(args.step_ids), args.input, timeout_secs=args.timeout
        )


async def call_async(args: argparse.Namespace) -> str:
    async with await PeerClient.connect(args.address, node_id="node-subprocess") as client:
        results = await asyncio.gather(
            *(
                client.run_remote_workflow_json(
                    args.workflow, json.loads(args.step_ids), args.input, timeout_secs=args.timeout
                )
                for _ in range(args.async_calls)
            )
        )
    return results[-1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("workflow")
    parser.add_argument("step_ids")
    parser.add_argument("input")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--async-calls", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        text = asyncio.run(call_async(args)) if args.async_calls else call_blocking(args)
    except PeerError as exc:
        print(f"ERROR {exc.kind} {exc}", flush=True)
        return 2
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
