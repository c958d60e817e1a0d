"""Shared fixtures: a peer ("node-b") in a separate process, and clients of it.

`tests/peer_app.py` runs as a subprocess; the fixture waits for the
`LISTENING HOST:PORT` line it prints after `PeerServer.start` returned (no
sleeping), stops it by closing its stdin, and fails with the peer's stderr
when the process died or did not exit cleanly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from blazen_peer import PeerClient, unregister_step

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
PEER_APP = TESTS_DIR / "peer_app.py"
CALL_PEER = TESTS_DIR / "call_peer.py"
FAULT_PEER = TESTS_DIR / "fault_peer.py"
POLICY_PEER = TESTS_DIR / "policy_peer.py"
STARTUP_TIMEOUT_SECS = 30.0
EXIT_TIMEOUT_SECS = 10.0


@dataclass
class PeerProcess:
    """A running `tests/peer_app.py` and where it listens."""

    proc: subprocess.Popen[bytes]
    host_port: str
    stderr_path: Path

    @property
    def address(self) -> str:
        return f"http://{self.host_port}"

    @property
    def port(self) -> int:
        return int(self.host_port.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            pytest.fail(f"peer process exited with status {code}; its stderr:\n{self.stderr()}")

    def kill(self) -> None:
        """Kills the process abruptly (a machine going away) and reaps it."""
        self.proc.kill()
        self.proc.wait(timeout=EXIT_TIMEOUT_SECS)

    def stop(self) -> int:
        """Closes stdin (the peer's signal to stop) and waits; returns the exit status."""
        if self.proc.poll() is None:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
                pytest.fail(
                    f"peer process did not exit within {EXIT_TIMEOUT_SECS}s of stdin closing; "
                    f"its stderr:\n{self.stderr()}"
                )
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        return self.proc.returncode


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Reads one line of the process's stdout, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
    return buffer.decode(errors="replace")


def start_peer_process(stderr_path: Path, *args: str, script: Path = PEER_APP) -> PeerProcess:
    """Starts `python tests/peer_app.py ARGS...` (or another peer `script`) and waits
    for its LISTENING line."""
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
    line = read_line(proc, STARTUP_TIMEOUT_SECS)
    if not line.startswith("LISTENING "):
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_SECS)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        pytest.fail(
            f"{script.name} did not report its address (stdout: {line!r}, "
            f"status: {proc.returncode}); its stderr:\n{stderr_path.read_text(errors='replace')}"
        )
    return PeerProcess(proc, line.split()[1], stderr_path)


@dataclass
class FaultPeer:
    """A running `tests/fault_peer.py serve` (WARNING and up logged to its stderr)."""

    address: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path

    def stop(self) -> str:
        """Stops the peer (stdin EOF), checks it exited 0, returns its stderr."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        status = self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
        self.proc.stdout.close()
        stderr = self.stderr_path.read_text(errors="replace")
        assert status == 0, stderr
        return stderr


def start_fault_peer(stderr_path: Path, *args: str) -> FaultPeer:
    """Starts `python tests/fault_peer.py serve ARGS...` and waits for its LISTENING line."""
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(FAULT_PEER), "serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    line = read_line(proc, STARTUP_TIMEOUT_SECS)
    assert line.startswith("LISTENING "), (line, stderr_path.read_text())
    return FaultPeer(f"http://{line.split()[1]}", proc, stderr_path)


@pytest.fixture(scope="session")
def peer_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """The session's node-b, serving tests/peer_app.py's steps in another process."""
    peer = start_peer_process(tmp_path_factory.mktemp("peer") / "stderr.txt")
    yield peer
    died_early = peer.proc.poll()
    status = peer.stop()
    if died_early is not None or status != 0:
        pytest.fail(f"peer process ended with status {status}; its stderr:\n{peer.stderr()}")


@pytest.fixture(scope="module")
def module_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """A peer of the test module's own, for tests that count its runs (`probe::status`
    reports the server's stats); stopped, and checked to exit with 0, after the module."""
    peer = start_peer_process(tmp_path_factory.mktemp("module-peer") / "stderr.txt")
    yield peer
    died_early = peer.proc.poll()
    status = peer.stop()
    if died_early is not None or status != 0:
        pytest.fail(f"module peer ended with status {status}; its stderr:\n{peer.stderr()}")


@pytest.fixture
async def module_client(module_peer: PeerProcess) -> AsyncIterator[PeerClient]:
    """A client of the module's peer, as node-a."""
    module_peer.check_alive()
    connected = await PeerClient.connect(module_peer.address, node_id="node-a")
    yield connected
    await connected.close()


@pytest.fixture
async def probe_client(module_peer: PeerProcess) -> AsyncIterator[PeerClient]:
    """A second client of the module's peer (its own connection) for `probe::status`
    calls, so probes never wait behind the calls under test."""
    connected = await PeerClient.connect(module_peer.address, node_id="node-probe")
    yield connected
    await connected.close()


@pytest.fixture
def peer_address(peer_process: PeerProcess) -> str:
    """`http://127.0.0.1:PORT` of the session's peer (checked alive for each test)."""
    peer_process.check_alive()
    return peer_process.address


@pytest.fixture
async def client(peer_address: str) -> AsyncIterator[PeerClient]:
    """A client of the session's peer, as node-a."""
    connected = await PeerClient.connect(peer_address, node_id="node-a")
    yield connected
    await connected.close()


@pytest.fixture
def spawn_peer(tmp_path: Path) -> Iterator[Callable[..., PeerProcess]]:
    """Starts extra peer processes for one test (ones the test may kill); stops them after."""
    started: list[PeerProcess] = []
    counter = itertools.count()

    def spawn(*args: str) -> PeerProcess:
        peer = start_peer_process(tmp_path / f"peer-{next(counter)}-stderr.txt", *args)
        started.append(peer)
        return peer

    yield spawn
    for peer in started:
        peer.stop()


_ids = itertools.count()


@pytest.fixture
def step_ids(request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """Makes step ids unique to this test; unregisters them afterwards.

    The step registry is process-wide, so tests that register steps use these.
    """
    made: list[str] = []

    def make(name: str) -> str:
        step_id = f"t{next(_ids)}::{request.node.name}::{name}"
        made.append(step_id)
        return step_id

    yield make
    for step_id in made:
        unregister_step(step_id)


async def run_call_peer(*args: str) -> tuple[int, str, str]:
    """Runs tests/call_peer.py in its own process; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CALL_PEER),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=40)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- probes: what a run did, as the `probe::status` step (steps_probes.py) reports it ---

PROBE_DEADLINE_SECS = 5.0


def new_tag() -> str:
    """A fresh probe tag (steps_probes keys its probe records by tag)."""
    return uuid.uuid4().hex


async def probe_status(client: PeerClient, tag: str) -> dict[str, Any]:
    """`probe::status` for ``tag``: ``entry`` (state, ref, started_at, ended_at),
    ``ref_held``, ``produced``, ``rss_bytes``, ``stats`` (the server's), ``now``."""
    status: dict[str, Any] = await client.run_remote_workflow(
        "probe", ["probe::status"], {"tag": tag}
    )
    return status


def probe_state(status: dict[str, Any]) -> str | None:
    entry = status["entry"]
    return None if entry is None else str(entry["state"])


async def wait_for_probe(
    client: PeerClient,
    tag: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    deadline_secs: float = PROBE_DEADLINE_SECS,
) -> dict[str, Any]:
    """Polls `probe::status` until ``predicate`` holds; fails after ``deadline_secs``."""
    deadline = time.monotonic() + deadline_secs
    while True:
        status = await probe_status(client, tag)
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"not within {deadline_secs}s: {what}; last probe status: {status}")
        await asyncio.sleep(0.02)


async def wait_started(client: PeerClient, tag: str) -> dict[str, Any]:
    """Waits until the probed step of ``tag`` recorded "started" (its ref is inserted)."""
    return await wait_for_probe(
        client, tag, lambda s: probe_state(s) is not None, f"run {tag} started"
    )
