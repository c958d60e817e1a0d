"""Cancelling remote runs: the caller's task, a deadline, a killed client process,
Ctrl-C in a blocking call. Each test watches the run from inside the peer through
the probe steps of tests/steps_probes.py (`probe::long_async` / `probe::long_sync` record when they
start and how they end; `probe::status` reports that, whether the ref the run
inserted is still held, and the server's stats). The module has a peer of its
own, so the stats move only with these tests' runs.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from blazen_peer import PeerClient, PeerTimeoutError, WorkflowError
from conftest import (
    CALL_PEER,
    TESTS_DIR,
    PeerProcess,
    new_tag,
    probe_state,
    probe_status,
    wait_for_probe,
    wait_started,
)

INTERRUPT_CLIENT = TESTS_DIR / "interrupt_client.py"
LONG_STEPS = [
    pytest.param("probe::long_async", "cancelled", id="async-step"),
    pytest.param("probe::long_sync", "stopped", id="sync-step"),
]
"""Each long step and the state it records when its run is cancelled: an async step
gets asyncio.CancelledError, a sync step sees `ctx.cancelled` become True."""
CANCEL_LATENCY_SECS = 1.0
"""How soon after the cancel the step must have noticed it."""
PROCESS_START_SECS = 15.0
"""Deadline for a client process to start and reach the step (imports included)."""


def stats(status: dict[str, Any]) -> dict[str, int]:
    counters: dict[str, int] = status["stats"]
    return counters


def ended_as(state: str, before: dict[str, int], counter: str) -> Callable[[dict[str, Any]], bool]:
    """The probed run recorded `state`, its ref is purged and `counter` moved on."""

    def check(status: dict[str, Any]) -> bool:
        return (
            probe_state(status) == state
            and status["ref_held"] is False
            and stats(status)[counter] > before[counter]
        )

    return check


def assert_counted_once(status: dict[str, Any], before: dict[str, int], counter: str) -> None:
    """`counter` moved by exactly one, no other outcome counter moved, and only the probe
    that reports this is still in flight."""
    after = stats(status)
    outcomes = ["runs_cancelled", "runs_timed_out", "runs_failed"]
    assert {name: after[name] - before[name] for name in outcomes} == {
        name: int(name == counter) for name in outcomes
    }, (before, after)
    assert after["runs_in_flight"] == 1, after


@pytest.mark.parametrize(("step_id", "ended_state"), LONG_STEPS)
async def test_cancelling_the_awaiting_task_cancels_the_run_on_the_peer(
    module_client: PeerClient, probe_client: PeerClient, step_id: str, ended_state: str
) -> None:
    tag = new_tag()
    before = stats(await probe_status(probe_client, tag))
    call = asyncio.ensure_future(
        module_client.run_remote_workflow("cancel", [step_id], {"tag": tag})
    )
    started = await wait_started(probe_client, tag)
    assert started["ref_held"] is True
    cancelled_at = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    status = await wait_for_probe(
        probe_client,
        tag,
        ended_as(ended_state, before, "runs_cancelled"),
        f"{step_id} records {ended_state!r}, its ref is purged and runs_cancelled grows",
    )
    # time.monotonic() is the same clock in both processes (CLOCK_MONOTONIC).
    latency = status["entry"]["ended_at"] - cancelled_at
    assert latency < CANCEL_LATENCY_SECS, f"the step noticed the cancel after {latency:.2f}s"
    assert_counted_once(status, before, "runs_cancelled")
    # The client is still usable after a cancelled call.
    assert (await module_client.run_remote_workflow("wf", ["test::echo"], 1))["data"] == 1


@pytest.mark.parametrize(("step_id", "ended_state"), LONG_STEPS)
async def test_a_run_past_timeout_secs_is_cancelled_on_the_peer(
    module_client: PeerClient, probe_client: PeerClient, step_id: str, ended_state: str
) -> None:
    tag = new_tag()
    before = stats(await probe_status(probe_client, tag))
    started = time.monotonic()
    with pytest.raises(PeerTimeoutError) as excinfo:
        await asyncio.wait_for(
            module_client.run_remote_workflow("deadline", [step_id], {"tag": tag}, timeout_secs=1),
            timeout=10,
        )
    # Not before the 1 s deadline (a lower bound, which a loaded machine only makes
    # longer). What ended the call is the peer's deadline, not the 10 s guard: a
    # PeerTimeoutError naming 1s, and runs_timed_out counts it (below).
    assert time.monotonic() - started > 0.9
    assert excinfo.value.kind == "Timeout"
    assert isinstance(excinfo.value, TimeoutError)
    assert "1s" in str(excinfo.value), excinfo.value
    status = await wait_for_probe(
        probe_client,
        tag,
        ended_as(ended_state, before, "runs_timed_out"),
        f"{step_id} records {ended_state!r}, its ref is purged and runs_timed_out grows",
    )
    assert_counted_once(status, before, "runs_timed_out")


async def test_the_servers_default_deadline_ends_a_call_without_timeout_secs(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = await asyncio.to_thread(spawn_peer, "--default-timeout", "1")
    async with await PeerClient.connect(peer.address, node_id="node-a") as client:
        tag = new_tag()
        started = time.monotonic()
        with pytest.raises(PeerTimeoutError):
            await asyncio.wait_for(
                client.run_remote_workflow("deadline", ["probe::long_async"], {"tag": tag}),
                timeout=10,
            )
        # Not before the 1 s default deadline; the peer's deadline, not the 10 s guard,
        # ended it: a PeerTimeoutError, and runs_timed_out counts it (below).
        assert time.monotonic() - started > 0.9
        status = await wait_for_probe(
            client,
            tag,
            lambda s: probe_state(s) == "cancelled" and s["ref_held"] is False,
            "the run past the server's default deadline was cancelled and its ref purged",
        )
        assert stats(status)["runs_timed_out"] == 1
        assert stats(status)["runs_cancelled"] == 0


async def start_client_process(
    stderr_path: Path,
    *args: str,
    stdin: int = asyncio.subprocess.DEVNULL,
    stdout: int = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    """Starts `python ARGS...` with its stderr going into `stderr_path`."""
    with stderr_path.open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=stdin, stdout=stdout, stderr=stderr
        )


async def readline(proc: asyncio.subprocess.Process, within_secs: float) -> str:
    assert proc.stdout is not None
    try:
        return (await asyncio.wait_for(proc.stdout.readline(), within_secs)).decode()
    except TimeoutError:
        return f"<nothing within {within_secs}s>"


async def test_killing_the_client_process_cancels_its_run_on_the_peer(
    module_peer: PeerProcess, probe_client: PeerClient, tmp_path: Path
) -> None:
    tag = new_tag()
    before = stats(await probe_status(probe_client, tag))
    stderr_path = tmp_path / "client-stderr.txt"
    proc = await start_client_process(
        stderr_path,
        str(CALL_PEER),
        module_peer.address,
        "killed-client",
        '["probe::long_async"]',
        f'{{"tag": "{tag}"}}',
    )
    try:
        await wait_for_probe(
            probe_client,
            tag,
            lambda s: probe_state(s) is not None or proc.returncode is not None,
            "the client process's run started",
            deadline_secs=PROCESS_START_SECS,
        )
        assert proc.returncode is None, stderr_path.read_text()
    finally:
        proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    status = await wait_for_probe(
        probe_client,
        tag,
        ended_as("cancelled", before, "runs_cancelled"),
        "the killed client's run records 'cancelled', its ref is purged, runs_cancelled grows",
    )
    assert_counted_once(status, before, "runs_cancelled")


@pytest.mark.parametrize("mode", ["call", "stream", "pool-call", "pool-stream"])
async def test_ctrl_c_interrupts_a_blocking_call_promptly_and_cancels_the_run(
    module_peer: PeerProcess, probe_client: PeerClient, tmp_path: Path, mode: str
) -> None:
    """`run_remote_workflow_blocking` and `stream_sub_workflow_blocking`, of a client
    and of a pool made by `PeerPool.connect_blocking` (see interrupt_client.py)."""
    tag = new_tag()
    before = stats(await probe_status(probe_client, tag))
    stderr_path = tmp_path / "client-stderr.txt"
    proc = await start_client_process(
        stderr_path,
        str(INTERRUPT_CLIENT),
        module_peer.address,
        tag,
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await readline(proc, PROCESS_START_SECS)
        assert line == "CALLING\n", (line, stderr_path.read_text())
        await wait_started(probe_client, tag)
        interrupted_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = await readline(proc, 5.0)
        latency = time.monotonic() - interrupted_at
        assert line == "INTERRUPTED KeyboardInterrupt\n", (line, stderr_path.read_text())
        assert latency < 2.0, f"KeyboardInterrupt came {latency:.2f}s after SIGINT"
        status = await wait_for_probe(
            probe_client,
            tag,
            ended_as("cancelled", before, "runs_cancelled"),
            "the interrupted call's run records 'cancelled', its ref is purged",
        )
        # The client process still holds its connection: the interrupt cancelled the run.
        assert proc.returncode is None
        assert_counted_once(status, before, "runs_cancelled")
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGINT
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.read()  # to its end, which closes the pipe
    assert "KeyboardInterrupt" in stderr_path.read_text()


async def test_server_stats_count_each_outcome_once(
    module_client: PeerClient, probe_client: PeerClient
) -> None:
    tag = new_tag()
    before = stats(await probe_status(probe_client, tag))
    assert (await module_client.run_remote_workflow("wf", ["test::echo"], 1))["data"] == 1
    with pytest.raises(WorkflowError):
        await module_client.run_remote_workflow("wf", ["test::boom"])
    # Between the two probes: the echo and the first probe succeeded, boom failed, and
    # the second probe started (and is in flight while it reports).
    status = await wait_for_probe(
        probe_client,
        tag,
        lambda s: stats(s)["runs_succeeded"] >= before["runs_succeeded"] + 2,
        "the echo run and the first probe are counted as succeeded",
    )
    after = stats(status)
    delta = {name: after[name] - before[name] for name in after}
    assert delta == {
        "runs_started": 3,
        "runs_succeeded": 2,
        "runs_failed": 1,
        "runs_cancelled": 0,
        "runs_timed_out": 0,
        "runs_in_flight": 0,
    }
    finished = sum(
        after[name]
        for name in ("runs_succeeded", "runs_failed", "runs_cancelled", "runs_timed_out")
    )
    assert after["runs_started"] == finished + after["runs_in_flight"], after
