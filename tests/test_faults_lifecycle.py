"""Fault suite, the peer's own lifecycle: failing steps leave nothing behind,
the host never aborts at exit with a step running, refs are forgotten.

Peers run in their own processes (tests/fault_peer.py). Thresholds are far
below what one leak per call would add and far above allocator noise.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from blazen_peer import PeerClient, WorkflowError
from conftest import EXIT_TIMEOUT_SECS, read_line

FAULT_PEER = Path(__file__).resolve().parent / "fault_peer.py"
FAILURES = 5_000
IN_FLIGHT = 32
# One leaked failure holds at least its 64 KiB local and ~20 objects: 5,000
# of them would add 320 MiB and 100,000 objects.
MAX_RSS_GROWTH_BYTES = 24 * 1024 * 1024
MAX_OBJECT_GROWTH = 2_000
EXITS = 100
EXITS_AT_ONCE = 8


@pytest.fixture(scope="module")
def fault_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stderr_path = tmp_path_factory.mktemp("fault-peer") / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(FAULT_PEER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    line = read_line(proc, 30)
    assert line.startswith("LISTENING "), (line, stderr_path.read_text())
    yield f"http://{line.split()[1]}"
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    assert proc.wait(timeout=EXIT_TIMEOUT_SECS) == 0, stderr_path.read_text()
    proc.stdout.close()


@pytest.fixture
async def fault_client(fault_peer: str) -> AsyncIterator[PeerClient]:
    client = await PeerClient.connect(fault_peer, node_id="fault-tests")
    yield client
    await client.close()


async def _figures(client: PeerClient) -> dict[str, Any]:
    figures: dict[str, Any] = await client.run_remote_workflow("figures", ["fault::figures"])
    return figures


async def _fail_many(client: PeerClient, step_id: str, count: int) -> None:
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            with pytest.raises(WorkflowError, match="failing on purpose"):
                await client.run_remote_workflow("fail", [step_id])

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("step_id", ["fault::fail_async", "fault::fail_sync"])
async def test_failing_steps_leave_no_memory_on_the_server(
    fault_client: PeerClient, step_id: str
) -> None:
    await _fail_many(fault_client, step_id, 300)  # warm-up: caches, pools, arenas
    before = await _figures(fault_client)
    await _fail_many(fault_client, step_id, FAILURES)
    after = await _figures(fault_client)
    grown_objects = after["objects"] - before["objects"]
    grown_rss = after["rss_bytes"] - before["rss_bytes"]
    assert grown_objects < MAX_OBJECT_GROWTH, (before, after)
    assert grown_rss < MAX_RSS_GROWTH_BYTES, (before, after)
    assert after["fds"] <= before["fds"] + 2, (before, after)


@pytest.mark.timeout(180)
def test_failing_local_runs_leave_no_memory() -> None:
    done = subprocess.run(
        [sys.executable, str(FAULT_PEER), "local-leak", str(FAILURES)],
        capture_output=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    figures = json.loads(done.stdout)
    before, after = figures["before"], figures["after"]
    assert after["objects"] - before["objects"] < MAX_OBJECT_GROWTH, figures
    assert after["rss_bytes"] - before["rss_bytes"] < MAX_RSS_GROWTH_BYTES, figures


def _exit_once(mode: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(FAULT_PEER), mode],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = read_line(proc, 30)
    if line.startswith("STEP RUNNING") and mode == "exit-sigint":
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, f"{mode}: first line {line!r}; stderr:\n{stderr}"


@pytest.mark.timeout(300)
async def test_exiting_with_a_running_def_step_never_aborts() -> None:
    """100 exits with a `def` step running: stopped with grace, Ctrl-C under
    serve_blocking, and the step blocked in a blocking client call. Every one
    exits with status 0 (the issue saw SIGABRT every time)."""
    modes = ["exit-stop", "exit-sigint", "exit-nested"]
    gate = asyncio.Semaphore(EXITS_AT_ONCE)

    async def one(index: int) -> tuple[int, str]:
        async with gate:
            return await asyncio.to_thread(_exit_once, modes[index % len(modes)])

    outcomes = await asyncio.gather(*(one(index) for index in range(EXITS)))
    failed = [report for status, report in outcomes if status != 0]
    assert not failed, f"{len(failed)} of {EXITS} exits failed; first:\n{failed[0]}"
    assert all("Fatal Python error" not in report for _, report in outcomes)
