"""Stopping a peer: `server.stop(grace=...)` drains (health NOT_SERVING, new runs
refused, running runs may finish within the grace, the rest are cancelled), the
standard gRPC health service, and `serve`/`serve_blocking` ending on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped,unused-ignore]
import pytest
from blazen_peer import (
    AuthenticationError,
    PeerClient,
    PeerTimeoutError,
    TransportError,
    WorkflowError,
)
from conftest import TESTS_DIR, PeerProcess, new_tag, read_line, wait_started

health_pb2 = pytest.importorskip(
    "grpc_health.v1.health_pb2", reason="needs grpcio-health-checking (the test extra)"
)
health_pb2_grpc = pytest.importorskip(
    "grpc_health.v1.health_pb2_grpc", reason="needs grpcio-health-checking (the test extra)"
)

SERVE_UNTIL_SIGNAL = TESTS_DIR / "serve_until_signal.py"
PEER_SERVICE = "blazen.peer.v1.BlazenPeer"
GRACE_SECS = 2.0
SERVING = 1
NOT_SERVING = 2


class Health:
    """A `grpc.health.v1.Health` client on one connection (opened before a drain, the
    way a load balancer's checker holds one), without any token."""

    def __init__(self, host_port: str) -> None:
        self._channel = grpc.insecure_channel(host_port)
        self._stub = health_pb2_grpc.HealthStub(self._channel)

    def check(self, service: str = "") -> int:
        response = self._stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status: int = response.status
        return status

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def open_health() -> Iterator[Callable[[str], Health]]:
    opened: list[Health] = []

    def open_one(host_port: str) -> Health:
        health = Health(host_port)
        opened.append(health)
        return health

    yield open_one
    for health in opened:
        health.close()


async def wait_for_file(path: Path, deadline_secs: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_secs
    while not await asyncio.to_thread(path.exists):
        assert time.monotonic() < deadline, f"{path} did not appear within {deadline_secs}s"
        await asyncio.sleep(0.01)


# --- health ---


@pytest.mark.parametrize("service", ["", PEER_SERVICE])
def test_health_reports_serving_without_a_token_on_a_peer_that_requires_one(
    spawn_peer: Callable[..., PeerProcess],
    open_health: Callable[[str], Health],
    service: str,
) -> None:
    peer = spawn_peer("--token", "s3cret-token")
    assert open_health(peer.host_port).check(service) == SERVING
    # The token is required for runs on that same port.
    with (
        PeerClient.connect_blocking(peer.address, node_id="node-a", token="wrong") as client,
        pytest.raises(AuthenticationError),
    ):
        client.run_remote_workflow_blocking("wf", ["test::echo"], 1)


# --- graceful stop ---

HEALTH_FLIP_SECS = 10.0
"""Only against a hang: health that stays SERVING this long after stop() began fails."""


async def wait_not_serving(health: Health) -> None:
    """Returns once the server as a whole (``""``) reports NOT_SERVING."""
    deadline = time.monotonic() + HEALTH_FLIP_SECS
    while await asyncio.to_thread(health.check, "") != NOT_SERVING:
        assert time.monotonic() < deadline, "health still SERVING after stop() began"
        await asyncio.sleep(0.01)


async def test_stop_with_grace_drains_then_cancels_what_is_left(
    spawn_peer: Callable[..., PeerProcess],
    open_health: Callable[[str], Health],
    tmp_path: Path,
) -> None:
    peer = await asyncio.to_thread(spawn_peer, "--grace", str(GRACE_SECS), "--print-stats")
    health = open_health(peer.host_port)
    assert await asyncio.to_thread(health.check, "") == SERVING
    assert await asyncio.to_thread(health.check, PEER_SERVICE) == SERVING
    client = await PeerClient.connect(peer.address, node_id="node-a")
    try:
        # A long run (60 s) the grace cannot cover, and a short one that finishes
        # during the drain, when this test creates the file it waits for.
        tag = new_tag()
        long_call = asyncio.ensure_future(
            client.run_remote_workflow("drain", ["probe::long_async"], {"tag": tag})
        )
        started, release = tmp_path / "started", tmp_path / "release"
        short_call = asyncio.ensure_future(
            client.run_remote_workflow(
                "drain", ["security::hold"], {"started": str(started), "release": str(release)}
            )
        )
        await wait_started(client, tag)
        await wait_for_file(started)

        assert peer.proc.stdin is not None
        peer.proc.stdin.close()  # peer_app calls server.stop(grace=2.0)
        stop_at = time.monotonic()

        # Health turns NOT_SERVING while the runs still drain (both are running, below).
        await wait_not_serving(health)
        assert await asyncio.to_thread(health.check, PEER_SERVICE) == NOT_SERVING

        with pytest.raises(TransportError, match=r"(?i)shutting down"):
            await client.run_remote_workflow("drain", ["test::echo"], 1)

        assert not short_call.done() and not long_call.done()
        release.touch()
        assert await asyncio.wait_for(short_call, 5) == "released"
        # The short run finished inside the grace: the long one, which the grace's end
        # cuts short, still runs.
        assert not long_call.done()

        with pytest.raises(WorkflowError) as excinfo:
            await asyncio.wait_for(long_call, GRACE_SECS + 5)
        cancelled_after = time.monotonic() - stop_at
        err = excinfo.value
        assert not isinstance(err, PeerTimeoutError)
        assert err.failure_kind == "Cancelled", err
        assert "shut down" in str(err), err
        # Not before the grace ended (a lower bound only grows on a loaded machine); that
        # the grace's end cut it, not its own 60 s, is the failure kind "Cancelled" above.
        assert cancelled_after > GRACE_SECS - 0.25, cancelled_after
    finally:
        await client.close()
        for call in (long_call, short_call):
            call.cancel()

    assert await asyncio.to_thread(peer.proc.wait, 10) == 0, peer.stderr()
    line = read_line(peer.proc, 5)
    assert line.startswith("STOPPED "), (line, peer.stderr())
    stats = json.loads(line.removeprefix("STOPPED "))
    assert stats["runs_cancelled"] == 1, stats
    assert stats["runs_timed_out"] == 0, stats
    assert stats["runs_in_flight"] == 0, stats


DEFAULT_GRACE_SECS = 5.0
"""`PeerServer.stop()`'s default grace."""


async def test_stop_with_grace_none_waits_for_running_runs_without_limit(
    spawn_peer: Callable[..., PeerProcess],
    open_health: Callable[[str], Health],
    tmp_path: Path,
) -> None:
    peer = await asyncio.to_thread(spawn_peer, "--grace", "none", "--print-stats")
    health = open_health(peer.host_port)
    assert await asyncio.to_thread(health.check, "") == SERVING
    client = await PeerClient.connect(peer.address, node_id="node-a")
    started, release = tmp_path / "started", tmp_path / "release"
    call = asyncio.ensure_future(
        client.run_remote_workflow(
            "drain", ["security::hold"], {"started": str(started), "release": str(release)}
        )
    )
    try:
        await wait_for_file(started)
        assert peer.proc.stdin is not None
        peer.proc.stdin.close()  # peer_app calls server.stop(grace=None)
        # Health turns NOT_SERVING while the run still drains (it still runs, below).
        await wait_not_serving(health)
        # Past the default grace the run is still running, and the peer still draining
        # (this test waits that long on purpose: only then can None differ from 5.0).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(call), DEFAULT_GRACE_SECS + 0.5)
        assert await asyncio.to_thread(health.check, "") == NOT_SERVING
        await asyncio.to_thread(release.touch)
        assert await asyncio.wait_for(call, 5) == "released"
    finally:
        call.cancel()
        await client.close()
    assert await asyncio.to_thread(peer.proc.wait, 10) == 0, peer.stderr()
    line = read_line(peer.proc, 5)
    assert line.startswith("STOPPED "), (line, peer.stderr())
    stats = json.loads(line.removeprefix("STOPPED "))
    assert stats["runs_cancelled"] == 0, stats
    assert stats["runs_in_flight"] == 0, stats


# --- serve / serve_blocking and signals ---


def wait_until_listening(
    port: int, proc: subprocess.Popen[bytes] | None, deadline_secs: float
) -> None:
    """Waits until something accepts connections on the port (or the process ended)."""
    deadline = time.monotonic() + deadline_secs
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["blocking", "async"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_returns_and_the_process_exits_0_on_a_signal(
    mode: str, signum: signal.Signals, tmp_path: Path
) -> None:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(SERVE_UNTIL_SIGNAL), mode],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        line = read_line(proc, 30)
        assert line.startswith("PORT "), (line, stderr_path.read_text())
        port = int(line.split()[1])
        wait_until_listening(port, proc, 15)
        with PeerClient.connect_blocking(f"http://127.0.0.1:{port}", node_id="node-a") as client:
            assert client.run_remote_workflow_blocking("wf", ["serve::echo"], "hi") == "hi"
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0, stderr_path.read_text()
        assert read_line(proc, 5) == "SERVE RETURNED\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert "Traceback" not in stderr_path.read_text()


@pytest.mark.parametrize("mode", ["blocking", "async"])
async def test_on_sigterm_serve_cancels_the_runs_left_after_its_grace(
    mode: str, tmp_path: Path
) -> None:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVE_UNTIL_SIGNAL),
            mode,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("PORT "), (line, stderr_path.read_text())
        port = int(line.split()[1])
        await asyncio.to_thread(wait_until_listening, port, None, 15)
        client = await PeerClient.connect(f"http://127.0.0.1:{port}", node_id="node-a")
        async with client:
            call = asyncio.ensure_future(client.run_remote_workflow("wf", ["serve::sleep"]))
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line == "SLEEPING\n", (line, stderr_path.read_text())
            proc.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            with pytest.raises(WorkflowError) as excinfo:
                await asyncio.wait_for(call, 10)
            cancelled_after = time.monotonic() - signalled_at
        assert excinfo.value.failure_kind == "Cancelled", excinfo.value
        # The caller hears why, not a bare "CancelledError: ".
        assert "shut down" in str(excinfo.value), excinfo.value
        assert 0.75 < cancelled_after < 4, cancelled_after  # grace=1.0
        assert await asyncio.wait_for(proc.wait(), 10) == 0, stderr_path.read_text()
        assert (await proc.stdout.read()).decode() == "SERVE RETURNED\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Traceback" not in stderr_path.read_text()
