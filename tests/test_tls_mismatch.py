"""A client and a peer that disagree about TLS: plaintext HTTP/2 sent to a TLS
peer, and a TLS handshake sent to a plaintext one.

Left to HTTP/2 and TLS, either shows as whichever of "broken pipe", "h2
protocol error", "operation was canceled" or "received corrupt message" wins a
race, and the plaintext connect() even succeeded. The client now tells at
connect time, every time, with a TlsError naming the address and the fix. The
peers are tests/peer_app.py processes, as in test_security.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from blazen_peer import ClientTls, PeerClient, TlsError
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, PeerProcess, start_peer_process

ATTEMPTS = 4


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    root = tmp_path_factory.mktemp("mismatch-pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = root / "ca.crt", root / "server.crt", root / "server.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    server.cert_chain_pems[0].write_to_path(str(paths[1]))
    server.private_key_pem.write_to_path(str(paths[2]))
    yield paths


@pytest.fixture(scope="module")
def tls_peer(
    ca_file: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PeerProcess]:
    _, cert, key = ca_file
    stderr = tmp_path_factory.mktemp("tls-peer") / "stderr.txt"
    peer = start_peer_process(stderr, "--tls-cert", str(cert), "--tls-key", str(key))
    yield peer
    assert peer.stop() == 0, peer.stderr()


@pytest.fixture(scope="module")
def plain_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    peer = start_peer_process(tmp_path_factory.mktemp("plain-peer") / "stderr.txt")
    yield peer
    assert peer.stop() == 0, peer.stderr()


def speaks_tls(port: int) -> str:
    return (
        f"the peer at http://127.0.0.1:{port} speaks TLS: use https://127.0.0.1:{port} "
        "and a CA (ClientTls.from_pem / --tls-ca)"
    )


def speaks_plaintext(port: int) -> str:
    return (
        f"the peer at https://127.0.0.1:{port} does not speak TLS (it answered in "
        f"plaintext): use http://127.0.0.1:{port} and no CA (drop tls= / --tls-ca)"
    )


async def marks_as_node_a(address: str, **options: Any) -> None:
    """A few calls over one connection to ``address`` reach the step."""
    async with await PeerClient.connect(address, node_id="node-a", **options) as client:
        for _ in range(3):
            result = await client.run_remote_workflow(
                "security", ["security::mark"], {"tag": "mismatch"}
            )
            assert result["caller_node_id"] == "node-a"


async def test_plaintext_to_a_tls_peer_fails_at_connect_saying_it_speaks_tls(
    tls_peer: PeerProcess, ca_file: tuple[Path, Path, Path]
) -> None:
    ca = ca_file[0]
    for _ in range(ATTEMPTS):
        with pytest.raises(TlsError) as info:
            await PeerClient.connect(f"http://127.0.0.1:{tls_peer.port}", node_id="node-a")
        assert type(info.value) is TlsError
        assert str(info.value) == speaks_tls(tls_peer.port)
    # The fix it names works.
    await marks_as_node_a(f"https://127.0.0.1:{tls_peer.port}", tls=ClientTls.from_pem(ca=ca))


async def test_tls_to_a_plaintext_peer_fails_at_connect_saying_it_does_not_speak_tls(
    plain_peer: PeerProcess, ca_file: tuple[Path, Path, Path]
) -> None:
    tls = ClientTls.from_pem(ca=ca_file[0])
    for _ in range(ATTEMPTS):
        with pytest.raises(TlsError) as info:
            await PeerClient.connect(
                f"https://127.0.0.1:{plain_peer.port}", node_id="node-a", tls=tls
            )
        assert type(info.value) is TlsError
        assert str(info.value) == speaks_plaintext(plain_peer.port)
    # The fix it names works (the plaintext connection's HTTP/2 preface, sent
    # ahead to tell a TLS peer, is not sent twice).
    await marks_as_node_a(f"http://127.0.0.1:{plain_peer.port}")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blazen_peer", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30 + EXIT_TIMEOUT_SECS,
        check=False,
    )


def test_cli_names_its_flags_in_both_directions(
    tls_peer: PeerProcess, plain_peer: PeerProcess, ca_file: tuple[Path, Path, Path]
) -> None:
    to_tls = run_cli("steps", f"http://127.0.0.1:{tls_peer.port}")
    assert to_tls.returncode == 2, to_tls.stderr
    assert to_tls.stderr.strip() == (
        f"blazen-peer: error (Tls): the peer at http://127.0.0.1:{tls_peer.port} speaks TLS: "
        f"use https://127.0.0.1:{tls_peer.port} and a CA (--tls-ca)"
    )
    # HOST:PORT with --tls-ca means https://.
    to_plain = run_cli("steps", f"127.0.0.1:{plain_peer.port}", "--tls-ca", str(ca_file[0]))
    assert to_plain.returncode == 2, to_plain.stderr
    assert to_plain.stderr.strip() == (
        f"blazen-peer: error (Tls): the peer at https://127.0.0.1:{plain_peer.port} does not "
        f"speak TLS (it answered in plaintext): use http://127.0.0.1:{plain_peer.port} and no "
        "CA (drop --tls-ca)"
    )
