"""BLAZEN_PEER_RUNTIME_THREADS: the runtime's worker threads, read in a fresh process
(the runtime starts once per process, on first use)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# Serves, calls itself once, and prints the runtime's worker-thread count.
PROGRAM = textwrap.dedent(
    """
    import asyncio, os
    from blazen_peer import PeerClient, PeerServer, StartEvent, StopEvent, step

    @step("threads::echo")
    async def echo(ctx, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.data)

    async def main():
        server = PeerServer(node_id="threads")
        address = await server.start("127.0.0.1:0")
        async with await PeerClient.connect(f"http://{address}", node_id="caller") as client:
            got = await client.run_remote_workflow("w", ["threads::echo"], "hi")
        await server.stop()
        names = [open(f"/proc/self/task/{tid}/comm").read().strip()
                 for tid in os.listdir("/proc/self/task")]
        print(got, names.count("blazen-peer-wor"))

    asyncio.run(main())
    """
)


def run_with(value: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("BLAZEN_PEER_RUNTIME_THREADS", None)
    if value is not None:
        env["BLAZEN_PEER_RUNTIME_THREADS"] = value
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=60
    )


def test_one_worker_thread_by_default_and_more_when_asked() -> None:
    default = run_with(None)
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["hi", "1"]
    three = run_with("3")
    assert three.returncode == 0, three.stderr
    assert three.stdout.split() == ["hi", "3"]


def test_a_bad_value_fails_the_first_call_naming_the_variable() -> None:
    bad = run_with("lots")
    assert bad.returncode != 0
    assert "ValidationError" in bad.stderr
    assert "BLAZEN_PEER_RUNTIME_THREADS='lots'" in bad.stderr.replace('"', "'")
    assert "at least 1" in bad.stderr
