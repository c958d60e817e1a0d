"""Transport faults: what hostile or careless clients do to a peer's connections.

Each test runs its own peer (tests/transport_peer.py, in its own process) with
the limits under test, attacks it from this process with raw sockets (and raw
HTTP/2 frames, tests/raw_h2.py), and checks the peer from the outside: its
file descriptors, CPU time and memory (/proc), the frames it answers with, its
log, and that a normal call is served within a second meanwhile.

- a cancellation storm beside a victim load on one shared connection;
- 1,000 silent connections (plaintext), silent and preface-less TLS ones;
- connections past max_connections; a process out of file descriptors;
- request bodies that declare large messages and stall, past the streams and
  buffered-bytes caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from blazen_peer import ClientTls, PeerClient, PeerError
from conftest import EXIT_TIMEOUT_SECS, STARTUP_TIMEOUT_SECS, TESTS_DIR, PeerProcess, read_line
from raw_h2 import HEADERS, RawH2Connection, grpc_message_header

TRANSPORT_PEER = TESTS_DIR / "transport_peer.py"
MIB = 1024 * 1024
#: Bound on waits for what must happen (a close, an answer); the peers' own
#: deadlines in these tests are a fraction of it.
PATIENCE_SECS = 20.0


# --- the peer and what /proc says about it ---


def start_transport_peer(stderr_path: Path, limits: dict[str, Any], *extra: str) -> PeerProcess:
    """Starts tests/transport_peer.py with ``PeerServer(**limits)``; waits for LISTENING."""
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(TRANSPORT_PEER), json.dumps(limits), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    line = read_line(proc, STARTUP_TIMEOUT_SECS)
    if not line.startswith("LISTENING "):
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_SECS)
        pytest.fail(f"transport_peer.py did not start: {stderr_path.read_text(errors='replace')}")
    return PeerProcess(proc, line.split()[1], stderr_path)


@pytest.fixture
def transport_peer(tmp_path: Path) -> Iterator[Callable[..., PeerProcess]]:
    started: list[PeerProcess] = []

    def start(limits: dict[str, Any], *extra: str) -> PeerProcess:
        peer = start_transport_peer(tmp_path / f"peer-{len(started)}.txt", limits, *extra)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        died = peer.proc.poll()
        status = peer.stop()
        if died is not None or status != 0:
            pytest.fail(f"the peer ended with status {status}; its stderr:\n{peer.stderr()}")


def open_fds(peer: PeerProcess) -> int:
    return len(os.listdir(f"/proc/{peer.proc.pid}/fd"))


def cpu_secs(peer: PeerProcess) -> float:
    fields = Path(f"/proc/{peer.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(peer: PeerProcess, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of the peer, in MiB."""
    for line in Path(f"/proc/{peer.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc status")


def cpu_over_one_second(peer: PeerProcess) -> float:
    """CPU seconds the peer uses in one second of wall time (a spinning loop: ~1)."""
    before = cpu_secs(peer)
    time.sleep(1.0)
    return cpu_secs(peer) - before


def warnings_about(peer: PeerProcess, setting: str) -> list[str]:
    return warnings_about_text(peer.stderr(), setting)


def warnings_about_text(log: str, setting: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and setting in line]


async def call_within_one_second(address: str, tls: ClientTls | None = None) -> float:
    """Connects a new client and makes one call; fails unless both take under 1 s."""
    started = time.monotonic()

    async def call() -> None:
        client = await PeerClient.connect(address, node_id="normal", tls=tls)
        try:
            result = await client.run_remote_workflow("normal", ["transport::echo"], {"n": 1})
            assert result == {"n": 1}
        finally:
            await client.close()

    await asyncio.wait_for(call(), timeout=1.0)
    return time.monotonic() - started


def wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE_SECS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {PATIENCE_SECS} s: {what}")
        time.sleep(0.02)


# --- silent sockets ---


def enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def open_silent(port: int, count: int) -> list[socket.socket]:
    """``count`` connections to ``port`` that never send a byte (connects in parallel)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def wait_connected(sockets: list[socket.socket]) -> None:
    """Waits until every socket's TCP handshake completed (SYN retries take seconds)."""
    pending = set(sockets)
    deadline = time.monotonic() + PATIENCE_SECS
    with selectors.DefaultSelector() as selector:
        for sock in pending:
            selector.register(sock, selectors.EVENT_WRITE)
        while pending:
            if time.monotonic() > deadline:
                pytest.fail(f"{len(pending)} connections never completed their TCP handshake")
            for key, _ in selector.select(0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                assert error == 0, os.strerror(error)
                selector.unregister(sock)
                pending.discard(sock)


def closed_by_server(sockets: list[socket.socket], at_least: int, within: float) -> int:
    """Waits until at least ``at_least`` of ``sockets`` were closed by the server
    (EOF or reset, whatever it sent first); returns how many were."""
    closed = 0
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        while closed < len(sockets) and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    closed += 1
            if closed >= at_least:
                break
    assert closed >= at_least, f"only {closed} of {len(sockets)} connections were closed"
    return closed


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


# --- 3. cancelling calls never hurts other calls on the connection ---

STORM_CANCELLATIONS = 20000
STORM_TASKS = 64
VICTIM_TASKS = 8


async def test_a_cancellation_storm_fails_no_other_call_on_the_shared_connection(
    transport_peer: Callable[..., PeerProcess],
) -> None:
    peer = transport_peer({})
    client = await PeerClient.connect(peer.address, node_id="storm")
    victim_ok = 0
    victim_failures: list[str] = []
    storm_failures: list[str] = []
    cancelled = 0
    storm_done = asyncio.Event()

    async def victim() -> None:
        nonlocal victim_ok
        while not storm_done.is_set():
            try:
                result = await client.run_remote_workflow("victim", ["transport::echo"], {"v": 1})
                assert result == {"v": 1}
                victim_ok += 1
            except PeerError as exc:
                victim_failures.append(repr(exc))

    async def stormer() -> None:
        nonlocal cancelled
        while cancelled < STORM_CANCELLATIONS:
            call = asyncio.ensure_future(
                client.run_remote_workflow("storm", ["transport::sleep"], {"secs": 30})
            )
            # Right after it starts: on the wire, or about to be, or not yet.
            await asyncio.sleep(random.uniform(0, 0.002))
            call.cancel()
            try:
                await call
            except asyncio.CancelledError:
                cancelled += 1
            except PeerError as exc:
                storm_failures.append(repr(exc))
        storm_done.set()

    try:
        victims = [asyncio.create_task(victim()) for _ in range(VICTIM_TASKS)]
        await asyncio.gather(*(stormer() for _ in range(STORM_TASKS)))
        await asyncio.gather(*victims)
        assert victim_failures == [], (
            f"{len(victim_failures)} unrelated calls failed during the storm "
            f"({victim_ok} succeeded); first: {victim_failures[0]}"
        )
        assert storm_failures == [], storm_failures[:3]
        assert victim_ok > 0
        print(f"storm: {cancelled} calls cancelled, {victim_ok} unrelated calls succeeded")
        assert cancelled >= STORM_CANCELLATIONS
        # The same connection still serves.
        assert await client.run_remote_workflow("after", ["transport::echo"], {"a": 2}) == {"a": 2}
    finally:
        await client.close()


async def test_a_rapid_reset_flood_is_held_to_a_bounded_cost(
    transport_peer: Callable[..., PeerProcess],
) -> None:
    """The attack the reset limits guard against (CVE-2023-44487): HEADERS then
    RST_STREAM at once, as fast as the socket takes them. The peer reads the
    flood only as fast as it finishes the streams, so memory stays flat, and
    other clients are served meanwhile."""
    peer = transport_peer({})
    host, port = peer.host_port.rsplit(":", 1)
    baseline = memory_mib(peer, "VmRSS")
    attacker = RawH2Connection(host, int(port))
    flood = attacker.rapid_reset_pairs(100_000)
    sender = threading.Thread(target=attacker.send_ignoring_close, args=(flood,))
    sender.start()
    try:
        await call_within_one_second(peer.address)
    finally:
        await asyncio.to_thread(sender.join, PATIENCE_SECS)
        attacker.close()
    assert not sender.is_alive(), "the flood was never read"
    growth = memory_mib(peer, "VmHWM") - baseline
    assert growth < 64, f"a rapid-reset flood grew the peer by {growth:.0f} MiB"
    await call_within_one_second(peer.address)


# --- 5. silent connections are closed, and never starve calls ---

SILENT_CONNECTIONS = 1000


async def test_a_thousand_silent_connections_are_closed_and_calls_are_served_meanwhile(
    transport_peer: Callable[..., PeerProcess],
) -> None:
    enough_descriptors(SILENT_CONNECTIONS + 200)
    peer = transport_peer({"handshake_timeout_secs": 5})
    baseline = open_fds(peer)
    silent = open_silent(peer.port, SILENT_CONNECTIONS)
    try:
        wait_connected(silent)
        held = open_fds(peer) - baseline
        cpu = cpu_over_one_second(peer)
        assert cpu < 0.5, f"the peer used {cpu:.2f} s of CPU in 1 s holding {held} connections"
        await call_within_one_second(peer.address)
        closed_by_server(silent, at_least=SILENT_CONNECTIONS, within=PATIENCE_SECS)
        wait_until("the peer's descriptors back to baseline", lambda: open_fds(peer) <= baseline)
        # Rate-limited: one line per reason per few seconds, not one per connection.
        assert 1 <= len(warnings_about(peer, "handshake_timeout_secs")) <= 6
    finally:
        close_all(silent)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    return cert, key, ca_pem


async def test_tls_connections_without_a_handshake_or_preface_are_closed(
    transport_peer: Callable[..., PeerProcess], tls_files: tuple[Path, Path, Path]
) -> None:
    cert, key, ca = tls_files
    peer = transport_peer({"handshake_timeout_secs": 1}, "--tls", str(cert), str(key))
    silent = open_silent(peer.port, 20)
    # A TLS handshake completed, then not a byte of HTTP/2.
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    handshaken = [
        context.wrap_socket(
            socket.create_connection(("127.0.0.1", peer.port)), server_hostname="localhost"
        )
        for _ in range(5)
    ]
    try:
        wait_connected(silent)
        await call_within_one_second(
            f"https://127.0.0.1:{peer.port}", tls=ClientTls.from_pem(ca=ca)
        )
        closed_by_server(silent, at_least=len(silent), within=PATIENCE_SECS)
        for sock in handshaken:
            sock.settimeout(PATIENCE_SECS)
            try:
                while sock.recv(1 << 16):
                    pass
            except (ssl.SSLError, ConnectionError):
                pass
        messages = " ".join(warnings_about(peer, "handshake_timeout_secs"))
        assert "TLS handshake did not complete" in messages or "preface" in messages
    finally:
        close_all(silent)
        close_all(handshaken)


async def test_connections_past_the_cap_are_refused_at_once_and_silent_ones_make_room(
    transport_peer: Callable[..., PeerProcess],
) -> None:
    peer = transport_peer({"max_connections": 20, "handshake_timeout_secs": 60})
    client = await PeerClient.connect(peer.address, node_id="early")
    silent = open_silent(peer.port, 60)
    opened = time.monotonic()
    try:
        wait_connected(silent)
        # 19 slots were left: at least the other 41 are closed at once.
        closed_by_server(silent, at_least=41, within=PATIENCE_SECS)
        assert await client.run_remote_workflow("early", ["transport::echo"], {"e": 1}) == {"e": 1}
        # The peer makes room by closing a connection silent for a second or more.
        await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - opened)))
        await call_within_one_second(peer.address)
        assert 1 <= len(warnings_about(peer, "max_connections")) <= 6
    finally:
        await client.close()
        close_all(silent)


async def test_out_of_file_descriptors_the_peer_pauses_accepting_instead_of_spinning(
    transport_peer: Callable[..., PeerProcess],
) -> None:
    # 150 silent connections, room for about 50: the rest wait in the listen
    # queue, ahead of the call below, and the handshake deadline is far off.
    peer = transport_peer({"handshake_timeout_secs": 60}, "--nofile", "64")
    silent = open_silent(peer.port, 150)
    try:
        wait_until("the peer out of descriptors", lambda: open_fds(peer) >= 60)
        cpu = cpu_over_one_second(peer)
        assert cpu < 0.3, f"the peer used {cpu:.2f} s of CPU in 1 s with accept failing"
        assert warnings_about(peer, "Too many open files")
        # Silent connections make way (a second after being accepted) until the
        # call's connection, queued behind them, is accepted; long before 60 s.
        client = await asyncio.wait_for(
            PeerClient.connect(peer.address, node_id="late", connect_timeout_secs=PATIENCE_SECS),
            timeout=PATIENCE_SECS,
        )
        try:
            assert await client.run_remote_workflow("late", ["transport::echo"], {"l": 1}) == {
                "l": 1
            }
        finally:
            await client.close()
    finally:
        close_all(silent)


# --- 6. stalled request bodies hold only what arrived, within the caps ---

BUDGET_MIB = 32
MAX_MESSAGE_MIB = 16
STREAMS_PER_CONNECTION = 32


async def test_stalled_bodies_hold_only_what_arrived_within_the_caps_and_time_out(
    transport_peer: Callable[..., PeerProcess],
) -> None:
    peer = transport_peer(
        {
            "max_message_bytes": MAX_MESSAGE_MIB * MIB,
            "max_buffered_request_bytes": BUDGET_MIB * MIB,
            "max_concurrent_streams": STREAMS_PER_CONNECTION,
            "request_body_timeout_secs": 3,
        }
    )
    host, port = peer.host_port.rsplit(":", 1)
    baseline = memory_mib(peer, "VmRSS")
    declared = MAX_MESSAGE_MIB * MIB - 1024

    # Bodies that declare 16 MiB and send 256 KiB, 8 more than the stream limit.
    slow = RawH2Connection(host, int(port))
    slow_streams = []
    for _ in range(STREAMS_PER_CONNECTION + 8):
        stream = slow.open_grpc_stream()
        slow.send_data(stream, grpc_message_header(declared) + b"s" * (256 * 1024))
        slow_streams.append(stream)
    refused = set(slow_streams[STREAMS_PER_CONNECTION:])
    deadline = time.monotonic() + PATIENCE_SECS
    while not refused <= slow.ended_streams() and time.monotonic() < deadline:
        slow.read_frames(0.2)
    assert refused <= slow.ended_streams(), "streams past max_concurrent_streams were not refused"
    assert not set(slow_streams[:STREAMS_PER_CONNECTION]) & slow.ended_streams()
    await call_within_one_second(peer.address)
    held = memory_mib(peer, "VmRSS") - baseline
    assert held < 8 + 24, f"{held:.0f} MiB held for 8 MiB of partial bodies"

    # Then two connections push 6 MiB into each of their streams: 384 MiB in all.
    floods = [RawH2Connection(host, int(port)) for _ in range(2)]
    for flood in floods:
        for _ in range(STREAMS_PER_CONNECTION):
            stream = flood.open_grpc_stream()
            flood.send_data(stream, grpc_message_header(declared) + b"f" * (6 * MIB))
            flood.read_frames(0)
    for flood in floods:
        flood.read_frames(0.5)
    peak = memory_mib(peer, "VmHWM") - baseline
    # What may be held: the budget, plus what HTTP/2 lets each of the three
    # connections send before the server reads (its 32 MiB window), plus slack.
    bound = BUDGET_MIB + 3 * 32 + 64
    assert peak < bound, f"the peer's peak RSS grew {peak:.0f} MiB (bound {bound} MiB)"
    assert warnings_about(peer, "max_buffered_request_bytes"), "no refusal was logged"

    # Every stalled body is answered once it has been silent for 3 s.
    stalled = set(slow_streams[:STREAMS_PER_CONNECTION])
    deadline = time.monotonic() + PATIENCE_SECS
    while not stalled <= slow.ended_streams() and time.monotonic() < deadline:
        slow.read_frames(0.2)
    answered = {
        frame.stream_id
        for frame in slow.frames
        if frame.type == HEADERS and frame.stream_id in stalled
    }
    assert answered == stalled, f"{len(stalled - answered)} stalled bodies were never answered"
    assert 1 <= len(warnings_about(peer, "request_body_timeout_secs")) <= 6
    for connection in [slow, *floods]:
        connection.close()
    await call_within_one_second(peer.address)


# --- the CLI takes the limits as flags ---

READY = re.compile(r"blazen-peer: node \S+ serving on (?P<address>\S+) ")


def test_serve_takes_the_connection_limits_as_flags(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "blazen_peer", "serve", str(TRANSPORT_PEER), "--listen"]
    bad = subprocess.run(
        [*cli, "127.0.0.1:0", "--node-id", "n", "--max-buffered-request-bytes", "1000"],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_SECS,
    )
    assert bad.returncode == 2, bad.stderr
    assert "--max-buffered-request-bytes must be at least" in bad.stderr

    stderr_path = tmp_path / "serve.txt"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                *cli,
                "127.0.0.1:0",
                "--node-id",
                "cli-limits",
                "--max-connections",
                "2",
                "--handshake-timeout",
                "0.5",
                "--idle-connection-timeout",
                "none",
                "--max-concurrent-streams",
                "8",
                "--request-body-timeout",
                "5",
                "--max-buffered-request-bytes",
                str(128 * MIB),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until(
            "serve announced it was serving",
            lambda: READY.search(stderr_path.read_text()) is not None,
        )
        match = READY.search(stderr_path.read_text())
        assert match is not None
        port = int(match["address"].rsplit(":", 1)[1])
        silent = open_silent(port, 3)
        try:
            wait_connected(silent)
            # Two slots: one of the three is closed at once, the others at 0.5 s.
            closed_by_server(silent, at_least=3, within=PATIENCE_SECS)
        finally:
            close_all(silent)
        assert warnings_about_text(stderr_path.read_text(), "max_connections")
        assert warnings_about_text(stderr_path.read_text(), "handshake_timeout_secs")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_TIMEOUT_SECS) == 0, stderr_path.read_text()
