"""A peer for the fault suite: failing steps that hold memory, its own
figures, and exits with a `def` step still running.

    python tests/fault_peer.py serve [TOKEN]  # prints LISTENING HOST:PORT, stops at stdin EOF;
                                              # logs WARNING and up to stderr
    python tests/fault_peer.py exit-stop    # a def step runs, then stop(grace=0.2) and exit
    python tests/fault_peer.py exit-sigint  # serve_blocking; a def step runs; the test sends SIGINT
    python tests/fault_peer.py exit-nested  # as exit-stop, the step blocked in a blocking call
    python tests/fault_peer.py closed-loop  # the server's loop closes under it; then a call

The exit modes print ``STEP RUNNING`` once the step is inside Python (and,
for exit-sigint, the server is serving), then expect to exit with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from typing import Any

from blazen_peer import (
    Context,
    PeerClient,
    PeerServer,
    RefLifetime,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)

# Big enough that a leak of one per failure shows in RSS within a few thousand calls.
HELD_BYTES = 64 * 1024
STEP_HOLD_SECS = 60.0


class HeldFailure(RuntimeError):
    """What the failing steps raise; their frames hold HELD_BYTES."""


@step("fault::fail_async")
async def fail_async(ctx: Context, ev: StartEvent) -> StopEvent:
    held = bytearray(HELD_BYTES)
    raise HeldFailure(f"failing on purpose with {len(held)} bytes in a local")


@step("fault::fail_sync")
def fail_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    held = bytearray(HELD_BYTES)
    raise HeldFailure(f"failing on purpose with {len(held)} bytes in a local")


@step("fault::not_json")
async def not_json(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result={"not": object()})


@step("fault::make_refs")
async def make_refs(ctx: Context, ev: StartEvent) -> StopEvent:
    lifetime = RefLifetime[ev.lifetime]
    for _ in range(int(ev.count)):
        await ctx.session_refs.insert(b"held on the peer", lifetime=lifetime)
    return StopEvent(result=None)


@step("fault::ok")
async def ok(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result="ok")


def figures() -> dict[str, Any]:
    """This process's RSS, object count (after a full collection), fds and threads."""
    gc.collect()
    with open("/proc/self/status") as proc_status:
        status = dict(line.split(":", 1) for line in proc_status if ":" in line)
    return {
        "rss_bytes": int(status["VmRSS"].split()[0]) * 1024,
        "objects": len(gc.get_objects()),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(status["Threads"]),
    }


SERVER: PeerServer | None = None


@step("fault::figures")
def report_figures(ctx: Context, ev: StartEvent) -> StopEvent:
    runs = dataclasses.asdict(SERVER.stats()) if SERVER is not None else {}
    return StopEvent(result={**figures(), "runs": runs})


_running = threading.Event()


@step("fault::hold_sync")
def hold_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    _running.set()
    deadline = time.monotonic() + STEP_HOLD_SECS
    while time.monotonic() < deadline:
        time.sleep(0.005)  # GIL released and re-taken, again and again
    return StopEvent(result="held")


@step("fault::hold_nested")
def hold_nested(ctx: Context, ev: StartEvent) -> StopEvent:
    # Blocked inside the package's own native code (GIL released) at exit.
    address = ev.address
    with PeerClient.connect_blocking(address, node_id="nested") as client:
        _running.set()
        client.run_remote_workflow_blocking("hold", ["fault::hold_sync"], {})
    return StopEvent(result="held")


def _announce_when_running() -> None:
    _running.wait()
    print("STEP RUNNING", flush=True)


async def _exit_with_running_step(step_id: str) -> None:
    server = PeerServer("fault-exit")
    address = f"http://{await server.start('127.0.0.1:0')}"
    client = await PeerClient.connect(address, node_id="fault-exit-caller")
    call = asyncio.ensure_future(
        client.run_remote_workflow("hold", [step_id], {"address": address})
    )
    await asyncio.get_running_loop().run_in_executor(None, _running.wait)
    print("STEP RUNNING", flush=True)
    await server.stop(grace=0.2)
    call.cancel()
    await client.close()


def _exit_on_sigint() -> None:
    server = PeerServer("fault-exit")
    started = threading.Event()
    original_start = server.start

    async def start(address: str = "127.0.0.1:0") -> str:
        bound = await original_start(address)
        os.environ["FAULT_PEER_ADDRESS"] = bound
        started.set()
        return bound

    server.start = start  # type: ignore[method-assign]

    def call_it() -> None:
        started.wait()
        with PeerClient.connect_blocking(
            f"http://{os.environ['FAULT_PEER_ADDRESS']}", node_id="fault-exit-caller"
        ) as client:
            client.run_remote_workflow_blocking("hold", ["fault::hold_sync"], {})

    threading.Thread(target=call_it, daemon=True).start()
    threading.Thread(target=_announce_when_running, daemon=True).start()
    server.serve_blocking("127.0.0.1:0", grace=0.2)


async def _serve(token: str | None) -> None:
    global SERVER
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = SERVER = PeerServer("fault-peer", token=token)
    print(f"LISTENING {await server.start('127.0.0.1:0')}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(grace=1.0)


async def _local_failures(count: int) -> None:
    """Runs `count` failing local Workflow runs (async and def steps alike)."""
    for index in range(count):
        flow = Workflow("local-fail", ["fault::fail_async" if index % 2 else "fault::fail_sync"])
        handler = await flow.run({})
        with contextlib.suppress(Exception):
            await handler


_waiting = threading.Event()


@step("fault::wait_forever")
async def wait_forever(ctx: Context, ev: StartEvent) -> StopEvent:
    never = asyncio.Event()
    _waiting.set()
    await never.wait()
    raise AssertionError("unreachable")


def _destroyed_task() -> None:
    """Serves on a loop that is then closed with a step's task still pending
    (nothing cancels it), as an app that stops its loop abruptly would; the
    caller, in another thread, must get an answer rather than wait forever."""
    loop = asyncio.new_event_loop()
    server = PeerServer("destroyed")
    address = loop.run_until_complete(server.start("127.0.0.1:0"))
    answers: list[str] = []

    def call() -> None:
        with PeerClient.connect_blocking(f"http://{address}", node_id="caller") as client:
            try:
                client.run_remote_workflow_blocking("wf", ["fault::wait_forever"], timeout_secs=20)
                answers.append("succeeded?")
            except Exception as exc:
                answers.append(str(exc))

    caller = threading.Thread(target=call)
    caller.start()
    loop.run_until_complete(loop.run_in_executor(None, _waiting.wait))
    for pending in asyncio.all_tasks(loop):
        pending._log_destroy_pending = False  # type: ignore[attr-defined]
    del pending
    loop.close()
    del loop
    gc.collect()
    caller.join(30)
    print(answers[0] if answers else "no answer", flush=True)


def _closed_loop() -> None:
    """Serves on a loop that the app then closes without stopping the server;
    a call that arrives later finds nobody to start its step, and must get an
    answer (the inbox's watchdog) rather than wait for its deadline."""
    loop = asyncio.new_event_loop()
    server = PeerServer("closed-loop")
    address = loop.run_until_complete(server.start("127.0.0.1:0"))
    loop.close()
    with PeerClient.connect_blocking(f"http://{address}", node_id="caller") as client:
        try:
            client.run_remote_workflow_blocking("wf", ["fault::ok"], timeout_secs=30)
            print("succeeded?", flush=True)
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}", flush=True)
    del server


def main() -> None:
    mode = sys.argv[1]
    if mode == "serve":
        asyncio.run(_serve(sys.argv[2] if len(sys.argv) > 2 else None))
    elif mode == "exit-stop":
        asyncio.run(_exit_with_running_step("fault::hold_sync"))
    elif mode == "exit-nested":
        asyncio.run(_exit_with_running_step("fault::hold_nested"))
    elif mode == "destroyed-task":
        _destroyed_task()
    elif mode == "closed-loop":
        _closed_loop()
    elif mode == "exit-sigint":
        _exit_on_sigint()
    elif mode == "local-leak":
        # Warm up, measure, fail many times, measure: prints both as JSON.
        import json

        asyncio.run(_local_failures(200))
        before = figures()
        asyncio.run(_local_failures(int(sys.argv[2])))
        after = figures()
        print(json.dumps({"before": before, "after": after}), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
