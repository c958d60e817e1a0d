"""A process that forks while it has a client and a server, for tests/test_recovery.py.

    python tests/fork_child.py ADDRESS

The parent connects a blocking client to the peer at ADDRESS, makes a call, creates
a PeerServer (not started), flushes its output and forks. The child, under a
watchdog (faulthandler exits it with status 1 and a traceback after 20 s, so a
hang fails instead of blocking), prints one line per check:

    CHILD old-blocking-call <outcome>   the parent's client, blocking API
    CHILD old-async-call <outcome>      the parent's client, async API
    CHILD old-server-start <outcome>    the parent's server
    CHILD new-client <outcome>          a client made in the child, calling ADDRESS
    CHILD new-server <outcome>          a server made in the child, called by a new client

where <outcome> is `ValidationError <message>`, `ok <result>` or `<other type> <message>`,
and exits 0. The parent waits for it (30 s at most), prints `CHILD-EXIT <status>`,
calls again with its own client and prints `PARENT <outcome>`.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from blazen_peer import Context, PeerClient, PeerServer, StartEvent, StopEvent, step

WATCHDOG_SECS = 20.0
CHILD_WAIT_SECS = 30.0


@step("fork::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result={"data": ev.data, "pid": os.getpid()})


def report(who: str, check: str, run: Callable[[], Any]) -> None:
    try:
        outcome = f"ok {run()!r}"
    except Exception as exc:
        outcome = f"{type(exc).__name__} {exc}".replace("\n", " ")
    print(f"{who} {check} {outcome}", flush=True)


def run_async(make: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await make()

    return asyncio.run(main())


def child(address: str, old_client: PeerClient, old_server: PeerServer) -> None:
    faulthandler.dump_traceback_later(WATCHDOG_SECS, exit=True)
    report(
        "CHILD",
        "old-blocking-call",
        lambda: old_client.run_remote_workflow_blocking("wf", ["test::echo"], "child")["data"],
    )
    report(
        "CHILD",
        "old-async-call",
        lambda: run_async(lambda: old_client.run_remote_workflow("wf", ["test::echo"], "child")),
    )
    report("CHILD", "old-server-start", lambda: run_async(lambda: old_server.start("127.0.0.1:0")))

    def new_client() -> Any:
        with PeerClient.connect_blocking(address, node_id="node-fork-child") as client:
            return client.run_remote_workflow_blocking("wf", ["test::echo"], "child")["data"]

    report("CHILD", "new-client", new_client)

    async def new_server() -> Any:
        async with PeerServer("node-fork-child") as server:
            bound = await server.start("127.0.0.1:0")
            async with await PeerClient.connect(
                f"http://{bound}", node_id="node-fork-child"
            ) as client:
                result = await client.run_remote_workflow("wf", ["fork::echo"], "served")
        return result["data"], result["pid"] == os.getpid()

    report("CHILD", "new-server", lambda: run_async(new_server))


def main(address: str) -> int:
    client = PeerClient.connect_blocking(address, node_id="node-fork-parent")
    assert client.run_remote_workflow_blocking("wf", ["test::echo"], "parent")["data"] == "parent"
    server = PeerServer("node-fork-parent")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            child(address, client, server)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    deadline = time.monotonic() + CHILD_WAIT_SECS
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print(f"CHILD-EXIT {os.waitstatus_to_exitcode(status)}", flush=True)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("CHILD-EXIT hung", flush=True)
            break
        time.sleep(0.02)
    report(
        "PARENT",
        "call",
        lambda: client.run_remote_workflow_blocking("wf", ["test::echo"], 2)["data"],
    )
    client.close_blocking()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
