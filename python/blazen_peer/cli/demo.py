"""``blazen-peer demo``: the README demo, self-contained (``examples/demo.py`` runs it too).

Starts node-b (``blazen-peer serve blazen_peer.cli._demo_peer``) in another
process, delegates the two-step pipeline to it, then does the same from a step
of a local Workflow, prints what came back and stops node-b.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any

from ..client import PeerClient
from ..context import Context
from ..errors import TransportError
from ..events import StartEvent, StopEvent
from ..steps import step
from ..workflow import Workflow
from ._common import PROG, dumps, print_json

# What _demo_peer serves (not imported here: this process only calls them).
WORKFLOW = "analyze-pipeline"
STEP_IDS = ["my_app::analyze", "my_app::summarize"]
PEER_NODE_ID = "node-b"
DOCUMENT = "the quick brown fox"
STARTUP_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 15.0
_READY = re.compile(rf"^{PROG}: node \S+ serving on (\S+) ")

# Plain text for --help (the module docstring is reST, for readers of the source).
DESCRIPTION = f"""\
Runs the README demo in one command: starts node-b in another process
(`{PROG} serve blazen_peer.cli._demo_peer`), delegates the two-step pipeline
analyze-pipeline to it, then does the same from a step of a local Workflow,
prints what came back and stops node-b.
"""


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "demo",
        parents=[common],
        help="run the README demo: a second peer in another process",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run, default_log_level="WARNING")


@dataclass
class _Outcome:
    address: str
    result: Any
    state: dict[str, Any]
    local_result: Any


@dataclass
class _Peer:
    process: asyncio.subprocess.Process
    address: str
    # Drains node-b's stderr to ours, so a full pipe never blocks it.
    forwarding: asyncio.Task[None]


async def run(args: argparse.Namespace) -> int:
    peer = await _start_peer()
    try:
        outcome = await _delegate(peer.address)
    finally:
        await _stop_peer(peer)
    _print(outcome, as_json=args.json)
    return 0


async def _start_peer() -> _Peer:
    """Starts node-b on a free port; returns once it printed its readiness line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "blazen_peer",
        "serve",
        f"{__package__}._demo_peer",
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        PEER_NODE_ID,
        "--log-level",
        "WARNING",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        address = await asyncio.wait_for(_wait_ready(process), STARTUP_TIMEOUT_SECS)
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    return _Peer(process, address, asyncio.create_task(_forward(process.stderr)))


async def _wait_ready(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    while line := (await process.stderr.readline()).decode(errors="replace"):
        ready = _READY.match(line)
        if ready:
            return ready.group(1)
        sys.stderr.write(line)
    raise TransportError(f"node-b exited with status {await process.wait()} before serving")


async def _forward(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stderr.write(line.decode(errors="replace"))


async def _stop_peer(peer: _Peer) -> None:
    if peer.process.returncode is None:
        peer.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(peer.process.wait(), STOP_TIMEOUT_SECS)
    except TimeoutError:
        peer.process.kill()
        await peer.process.wait()
    await peer.forwarding


async def _delegate(address: str) -> _Outcome:
    async with await PeerClient.connect(f"http://{address}", node_id="node-a") as client:
        response = await client.invoke_sub_workflow(
            WORKFLOW, STEP_IDS, {"document": DOCUMENT}, timeout_secs=60
        )
        response.raise_for_error()
        local_result = await _run_local_workflow(client)
    return _Outcome(address, response.result, response.state, local_result)


async def _run_local_workflow(client: PeerClient) -> Any:
    """A step of a local Workflow delegating to node-b, as a real pipeline would."""

    @step("demo::orchestrate", replace=True)
    async def orchestrate(ctx: Context, ev: StartEvent) -> StopEvent:
        response = await client.invoke_sub_workflow(
            WORKFLOW, STEP_IDS, {"document": ev.document}, timeout_secs=60
        )
        response.raise_for_error()
        return StopEvent(result=response.result)

    workflow = Workflow("distributed-example", [orchestrate])
    handler = await workflow.run(document="a local workflow delegating to node-b")
    return await handler.result()


def _print(outcome: _Outcome, *, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "peer": outcome.address,
                "result": outcome.result,
                "state": outcome.state,
                "local_workflow_result": outcome.local_result,
            }
        )
        return
    print(f"{PEER_NODE_ID} on {outcome.address} ran {' -> '.join(STEP_IDS)}")
    print(f"result: {dumps(outcome.result)}")
    print(f"state:  {dumps(outcome.state)}")
    print(f"local workflow result: {dumps(outcome.local_result)}", flush=True)
