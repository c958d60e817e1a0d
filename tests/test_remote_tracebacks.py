"""A failing step's traceback: logged on the peer (rate-limited), carried to
the caller without the package's own frames, and shown by ``call -v``.

Peers run in their own processes: tests/fault_peer.py (``serve`` logs WARNING
and up to stderr) and the session's tests/peer_app.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from blazen_peer import PeerClient, WorkflowError
from blazen_peer._bridge import describe_exception, normalize_output
from conftest import REPO_ROOT, FaultPeer, PeerProcess, start_fault_peer

# Files of the package whose frames the caller and the log must not see.
OWN_FRAMES = ("_bridge.py", "_workers.py", "_tracing.py", f"blazen_peer{os.sep}")
TRACEBACK_HEADER = "Traceback (most recent call last):"
FAILURES = 40


@pytest.fixture
def fault_peer(tmp_path: Path) -> Iterator[FaultPeer]:
    """A fresh peer per test: the traceback rate limit starts clean."""
    peer = start_fault_peer(tmp_path / "stderr.txt")
    yield peer
    if peer.proc.poll() is None:
        peer.stop()


async def _fail(address: str, step_id: str, times: int = 1) -> list[WorkflowError]:
    errors = []
    async with await PeerClient.connect(address, node_id="traceback-tests") as client:
        for _ in range(times):
            with pytest.raises(WorkflowError, match="failing on purpose") as raised:
                await client.run_remote_workflow("fail", [step_id])
            errors.append(raised.value)
    return errors


def _assert_no_own_frames(text: str) -> None:
    for own in OWN_FRAMES:
        assert own not in text, f"{own!r} in:\n{text}"


async def test_the_peer_logs_the_steps_traceback_without_its_own_frames(
    fault_peer: FaultPeer,
) -> None:
    await _fail(fault_peer.address, "fault::fail_async")
    await _fail(fault_peer.address, "fault::fail_sync")
    stderr = fault_peer.stop()
    # The one-line WARNING, then the traceback: the step's file, line and function.
    assert "WARNING blazen_peer" in stderr
    assert stderr.count(TRACEBACK_HEADER) == 2, stderr
    assert 'fault_peer.py", line' in stderr, stderr
    assert "in fail_async" in stderr, stderr
    assert "in fail_sync" in stderr, stderr
    assert "raise HeldFailure(" in stderr, stderr
    _assert_no_own_frames(stderr)


async def test_many_failures_log_a_bounded_number_of_tracebacks(fault_peer: FaultPeer) -> None:
    await _fail(fault_peer.address, "fault::fail_async", FAILURES)
    stderr = fault_peer.stop()
    warnings = [line for line in stderr.splitlines() if line.startswith("WARNING blazen_peer")]
    # Every failed run still has its line; the traceback comes once per step per 10 s.
    assert len(warnings) == FAILURES, stderr
    assert 1 <= stderr.count(TRACEBACK_HEADER) <= 2, stderr
    held_back = [line for line in warnings if "traceback held back" in line]
    assert len(held_back) >= FAILURES - 2, stderr


async def test_the_callers_traceback_has_no_frames_of_the_package(
    fault_peer: FaultPeer, peer_process: PeerProcess
) -> None:
    (boom,) = await _boom(peer_process.address)
    assert boom.remote_traceback is not None
    assert boom.remote_traceback.startswith(TRACEBACK_HEADER), boom.remote_traceback
    assert 'steps_core.py", line' in boom.remote_traceback
    assert "in boom" in boom.remote_traceback
    _assert_no_own_frames(boom.remote_traceback)
    for step_id, function in (
        ("fault::fail_async", "fail_async"),
        ("fault::fail_sync", "fail_sync"),
    ):
        (error,) = await _fail(fault_peer.address, step_id)
        assert error.remote_traceback is not None
        assert f"in {function}" in error.remote_traceback, error.remote_traceback
        _assert_no_own_frames(error.remote_traceback)


async def _boom(address: str) -> list[WorkflowError]:
    async with await PeerClient.connect(address, node_id="traceback-tests") as client:
        with pytest.raises(WorkflowError, match="boom") as raised:
            await client.run_remote_workflow("boom", ["test::boom"])
    return [raised.value]


def _users_code() -> None:
    try:
        normalize_output(42)  # raises inside the package
    except TypeError as exc:
        raise RuntimeError("the user's wrapper") from exc


def test_chained_causes_stay_and_only_the_packages_frames_go() -> None:
    with pytest.raises(RuntimeError) as raised:
        _users_code()
    name, message, text, cancelled = describe_exception(raised.value)
    assert (name, message, cancelled) == ("RuntimeError", "the user's wrapper", False)
    assert "TypeError: a step returned int" in text
    assert "The above exception was the direct cause of the following exception:" in text
    assert text.count("in _users_code") == 2, text
    _assert_no_own_frames(text)


def _call(address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "BLAZEN_PEER_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "blazen_peer", "call", address, "--step", "test::boom", *extra],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=30,
    )


async def test_call_prints_the_peers_traceback_with_verbose(peer_process: PeerProcess) -> None:
    quiet, verbose = await asyncio.gather(
        asyncio.to_thread(_call, peer_process.address),
        asyncio.to_thread(_call, peer_process.address, "-v"),
    )
    assert quiet.returncode == 1, quiet.stderr
    assert TRACEBACK_HEADER not in quiet.stderr
    assert quiet.stderr.startswith("blazen-peer: error (Workflow): "), quiet.stderr
    assert "(-v shows the peer's traceback)" in quiet.stderr, quiet.stderr

    assert verbose.returncode == 1, verbose.stderr
    assert "blazen-peer: the peer's traceback of step `test::boom`" in verbose.stderr
    assert TRACEBACK_HEADER in verbose.stderr, verbose.stderr
    assert 'steps_core.py", line' in verbose.stderr, verbose.stderr
    assert 'raise ValueError("boom")' in verbose.stderr, verbose.stderr
    assert "ValueError: boom" in verbose.stderr
    assert "-v shows" not in verbose.stderr
    # The error line comes last, as Python prints a traceback then its error.
    assert verbose.stderr.rstrip().splitlines()[-1].startswith("blazen-peer: error (Workflow): ")
    _assert_no_own_frames(verbose.stderr)
