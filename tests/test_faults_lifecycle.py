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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from blazen_peer import (
    AuthenticationError,
    Context,
    PeerClient,
    PeerServer,
    RefNotFoundError,
    StartEvent,
    StopEvent,
    WorkflowError,
    step,
)
from conftest import FAULT_PEER, read_line, start_fault_peer

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
    peer = start_fault_peer(tmp_path_factory.mktemp("fault-peer") / "stderr.txt")
    yield peer.address
    peer.stop()


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


async def test_a_result_that_is_not_json_is_a_failed_run_and_logged(tmp_path: Path) -> None:
    peer = start_fault_peer(tmp_path / "stderr.txt")
    try:
        async with await PeerClient.connect(peer.address, node_id="fault-tests") as client:
            with pytest.raises(WorkflowError) as failed:
                await client.run_remote_workflow("bad", ["fault::not_json"])
            assert failed.value.failure_kind == "ResultNotJson", failed.value
            runs = (await _figures(client))["runs"]
        assert runs["runs_failed"] == 1 and runs["runs_succeeded"] == 0, runs
    finally:
        stderr = peer.stop()
    assert "ResultNotJson" in stderr, stderr


async def test_refused_calls_log_once_per_host_not_once_per_call(tmp_path: Path) -> None:
    peer = start_fault_peer(tmp_path / "stderr.txt", "the-right-token")
    try:
        async with await PeerClient.connect(
            peer.address, node_id="intruder", token="a-wrong-token"
        ) as client:
            for _ in range(100):
                with pytest.raises(AuthenticationError):
                    await client.run_remote_workflow("ok", ["fault::ok"])
    finally:
        stderr = peer.stop()
    refusals = [line for line in stderr.splitlines() if "refused a call" in line]
    assert 1 <= len(refusals) <= 2, stderr


async def _remote_ref_keys(client: PeerClient, lifetime: str, count: int) -> list[Any]:
    response = await client.invoke_sub_workflow(
        "refs", ["fault::make_refs"], {"lifetime": lifetime, "count": count}
    )
    return list(response.remote_refs)


async def test_the_client_forgets_refs_released_finished_or_gone(
    fault_client: PeerClient, fault_peer: str
) -> None:
    remembered = fault_client._refs
    keys = await _remote_ref_keys(fault_client, "UNTIL_EXPLICIT_DROP", 200)
    assert len(remembered) == 200
    for key in keys:
        assert await fault_client.release_session_ref(key)
    assert len(remembered) == 0, "released refs are still remembered"

    async with fault_client.parent_run():
        await _remote_ref_keys(fault_client, "UNTIL_PARENT_FINISH", 50)
        assert len(remembered) == 50
    assert len(remembered) == 0, "refs of a finished parent are still remembered"

    (key,) = await _remote_ref_keys(fault_client, "UNTIL_EXPLICIT_DROP", 1)
    async with await PeerClient.connect(fault_peer, node_id="other") as other:
        assert await other.release_session_ref(key)
    with pytest.raises(RefNotFoundError):
        await fault_client.fetch_session_ref(key)
    assert len(remembered) == 0, "a ref the peer reported gone is still remembered"


async def test_a_step_task_cancelled_by_the_peers_app_says_so(
    step_ids: Callable[[str], str],
) -> None:
    """The peer's application (or its loop on the way out) cancelling a step's
    task used to reach the caller as a bare "CancelledError: "."""
    step_id = step_ids("cancelled_by_app")
    running: asyncio.Queue[asyncio.Task[Any]] = asyncio.Queue()

    @step(step_id)
    async def wait_forever(ctx: Context, ev: StartEvent) -> StopEvent:
        task = asyncio.current_task()
        assert task is not None
        running.put_nowait(task)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with PeerServer("node-app") as server:
        address = f"http://{await server.start('127.0.0.1:0')}"
        async with await PeerClient.connect(address, node_id="node-a") as client:
            call = asyncio.ensure_future(client.run_remote_workflow("wf", [step_id]))
            (await running.get()).cancel()
            with pytest.raises(WorkflowError) as failed:
                await call
    message = str(failed.value)
    assert failed.value.failure_kind == "Cancelled", message
    assert "cancelled on the peer, not by the caller" in message, message
    assert step_id in message, message


LATE_EXIT_HOOK = """
import atexit

def late_hook():
    from blazen_peer import PeerClient, TransportError
    try:
        PeerClient.connect_blocking("http://127.0.0.1:1", node_id="late", connect_timeout_secs=2)
    except TransportError:
        print("LATE HOOK RAN", flush=True)

atexit.register(late_hook)  # before the import: runs after blazen_peer's own exit hook
import blazen_peer
"""


def test_a_blocking_call_in_an_exit_hook_that_runs_last_returns() -> None:
    """The thread running exit hooks is never parked by the exit gate."""
    done = subprocess.run(
        [sys.executable, "-c", LATE_EXIT_HOOK], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == "LATE HOOK RAN\n", done


def test_a_step_task_destroyed_pending_fails_its_run_instead_of_hanging() -> None:
    """A loop closed without cancelling a step's task: once the collector frees
    the task, its run fails as cancelled and the caller hears so at once
    (it used to wait for the run's deadline)."""
    out = fault_peer_output("destroyed-task")
    assert "destroyed before it finished" in out, out


def fault_peer_output(mode: str) -> str:
    """What ``fault_peer.py MODE`` prints, once it exited with status 0. Its call
    has a deadline of its own well inside the timeout: a hang fails the test."""
    done = subprocess.run(
        [sys.executable, str(FAULT_PEER), mode], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_a_call_to_a_server_whose_loop_closed_fails_instead_of_hanging() -> None:
    """Runtime threads wake a loop by writing to a socket it watches; a closed
    loop never reads it, so the job starting the step would wait forever (and
    the call until its deadline) but for the inbox's watchdog, which drops
    the jobs of closed loops and so fails the run as never started."""
    out = fault_peer_output("closed-loop")
    assert out.startswith("WorkflowError"), out
    assert "closed before the step started" in out, out
