"""Security: mutual TLS, the shared token, secure defaults and limits.

Certificates are made at test time with trustme: one CA that signs the peer's
certificate (IP and DNS names) and a client's, and an unrelated second CA. The
peers are tests/peer_app.py processes started with the matching flags; the
`security::mark` step counts every call that reached it, so a refused call can
be shown never to have run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from blazen_peer import (
    AuthenticationError,
    ClientTls,
    Context,
    EncodeError,
    PeerBusyError,
    PeerClient,
    PeerServer,
    ServerTls,
    StartEvent,
    StopEvent,
    TlsError,
    TransportError,
    ValidationError,
    step,
)
from conftest import PeerProcess

TOKEN = "s3cret-token-for-tests"
WRONG_TOKEN = "not-the-token"


@dataclass
class Pki:
    """PEM files of a test PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "peer-b.test")
    client = ca.issue_cert("node-a.clients.test", common_name="node-a")
    stranger = other_ca.issue_cert("node-x.clients.test", common_name="node-x")

    def write(name: str, blob: trustme.Blob) -> Path:
        path = root / name
        blob.write_to_path(str(path))
        return path

    return Pki(
        ca=write("ca.crt", ca.cert_pem),
        server_cert=write("server.crt", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.crt", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.crt", other_ca.cert_pem),
        other_client_cert=write("other-client.crt", stranger.cert_chain_pems[0]),
        other_client_key=write("other-client.key", stranger.private_key_pem),
    )


def tls_args(pki: Pki, mutual: bool = True) -> list[str]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    if mutual:
        args += ["--tls-client-ca", str(pki.ca)]
    return args


@pytest.fixture(scope="module")
def mtls_peer(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    from conftest import start_peer_process

    peer = start_peer_process(tmp_path_factory.mktemp("mtls") / "stderr.txt", *tls_args(pki))
    yield peer
    assert peer.stop() == 0, peer.stderr()


def https(peer: PeerProcess, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{peer.port}"


def client_tls(pki: Pki, **overrides: Any) -> ClientTls:
    options: dict[str, Any] = {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
    options.update(overrides)
    return ClientTls.from_pem(**options)


async def mark(client: PeerClient, tag: str) -> dict[str, Any]:
    result: dict[str, Any] = await client.run_remote_workflow(
        "security", ["security::mark"], {"tag": tag}
    )
    return result


async def marks(client: PeerClient) -> dict[str, int]:
    result: dict[str, int] = await client.run_remote_workflow("security", ["security::marks"])
    return result


async def connect_and_mark(address: str, tag: str, **options: Any) -> dict[str, Any]:
    """Connects and makes one call (a refused TLS client may fail at either step)."""
    async with await PeerClient.connect(address, node_id="node-a", **options) as client:
        return await mark(client, tag)


# --- mutual TLS ---


async def test_mtls_call_reaches_the_step_with_the_callers_verified_identity(
    mtls_peer: PeerProcess, pki: Pki
) -> None:
    result = await connect_and_mark(https(mtls_peer), "mtls-ok", tls=client_tls(pki))
    assert result["caller_node_id"] == "node-a"
    identity = result["peer_identity"]
    assert identity["common_name"] == "node-a"
    assert "CN=node-a" in identity["subject"]
    assert identity["dns_names"] == ["node-a.clients.test"]
    assert identity["der_len"] > 100


async def test_mtls_by_dns_name_and_with_an_explicit_domain(
    mtls_peer: PeerProcess, pki: Pki
) -> None:
    by_dns = await connect_and_mark(https(mtls_peer, "localhost"), "by-dns", tls=client_tls(pki))
    by_domain = await connect_and_mark(
        https(mtls_peer), "by-domain", tls=client_tls(pki, domain="peer-b.test")
    )
    for result in (by_dns, by_domain):
        assert result["caller_node_id"] == "node-a", result
        assert result["peer_identity"]["common_name"] == "node-a", result


@pytest.mark.parametrize(
    ("case", "options", "expected"),
    [
        ("no-client-cert", {"cert": None, "key": None}, "requires a client certificate"),
        (
            "cert-from-other-ca",
            {"cert": "other_client_cert", "key": "other_client_key"},
            "refused this client's certificate",
        ),
        ("trusts-other-ca", {"ca": "other_ca"}, "not signed by the CA this client trusts"),
        ("wrong-host-name", {"domain": "someone-else.test"}, "does not name the host"),
    ],
    ids=["no-client-cert", "cert-from-other-ca", "trusts-other-ca", "wrong-host-name"],
)
async def test_refused_tls_clients_get_tls_error_and_never_reach_the_step(
    mtls_peer: PeerProcess, pki: Pki, case: str, options: dict[str, Any], expected: str
) -> None:
    resolved = {
        key: getattr(pki, value) if isinstance(value, str) and key != "domain" else value
        for key, value in options.items()
    }
    with pytest.raises(TlsError) as info:
        await connect_and_mark(https(mtls_peer), case, tls=client_tls(pki, **resolved))
    assert "TLS handshake failed" in str(info.value)
    assert expected in str(info.value)
    async with await PeerClient.connect(
        https(mtls_peer), node_id="node-a", tls=client_tls(pki)
    ) as good:
        assert case not in await marks(good)
        assert (await mark(good, "still-serving"))["caller_node_id"] == "node-a"
    mtls_peer.check_alive()


async def test_server_only_tls_accepts_clients_without_certificates(
    spawn_peer: Callable[..., PeerProcess], pki: Pki
) -> None:
    peer = spawn_peer(*tls_args(pki, mutual=False))
    result = await connect_and_mark(https(peer), "server-only", tls=ClientTls.from_pem(ca=pki.ca))
    assert result["peer_identity"] is None
    assert result["caller_node_id"] == "node-a"


async def test_plaintext_client_cannot_talk_to_a_tls_peer(mtls_peer: PeerProcess) -> None:
    with pytest.raises(Exception) as info:
        await connect_and_mark(f"http://127.0.0.1:{mtls_peer.port}", "plaintext")
    assert type(info.value).__name__ in {"TransportError", "TlsError"}


async def test_scheme_and_tls_config_must_agree(pki: Pki) -> None:
    with pytest.raises(ValidationError, match=re.escape("https://127.0.0.1:1")):
        await PeerClient.connect("http://127.0.0.1:1", node_id="a", tls=client_tls(pki))
    with pytest.raises(ValidationError, match="no TLS config"):
        await PeerClient.connect("https://127.0.0.1:1", node_id="a")


# --- TLS settings are checked when built ---


def test_missing_files_bad_pem_and_mismatched_keys_raise_tls_error_naming_the_file(
    pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(TlsError, match=re.escape(f"cannot read certificate file '{missing}'")):
        ServerTls.from_pem(cert=missing, key=pki.server_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello, not a certificate\n")
    with pytest.raises(TlsError, match=re.escape(f"certificate {garbage} holds no certificate")):
        ServerTls.from_pem(cert=garbage, key=pki.server_key)
    with pytest.raises(TlsError, match=re.escape(f"key {garbage} holds no private key")):
        ServerTls.from_pem(cert=pki.server_cert, key=garbage)
    with pytest.raises(
        TlsError, match=re.escape(f"key {pki.client_key} does not belong to certificate")
    ):
        ServerTls.from_pem(cert=pki.server_cert, key=pki.client_key)
    with pytest.raises(TlsError, match=re.escape(f"client CA {garbage} holds no certificate")):
        ServerTls.from_pem(cert=pki.server_cert, key=pki.server_key, client_ca=garbage)
    with pytest.raises(TlsError, match=re.escape(f"CA {garbage} holds no certificate")):
        ClientTls.from_pem(ca=garbage)
    with pytest.raises(TlsError, match="both cert= and key="):
        ClientTls.from_pem(ca=pki.ca, cert=pki.client_cert)
    with pytest.raises(TlsError, match="does not belong to certificate"):
        ClientTls.from_pem(ca=pki.ca, cert=pki.client_cert, key=pki.other_client_key)


def test_pem_bytes_work_like_files(pki: Pki) -> None:
    tls = ServerTls.from_pem(
        cert=pki.server_cert.read_bytes(),
        key=pki.server_key.read_bytes(),
        client_ca=pki.ca.read_bytes(),
    )
    assert tls.requires_client_certificates
    ClientTls.from_pem(
        ca=pki.ca.read_bytes(),
        cert=pki.client_cert.read_bytes(),
        key=pki.client_key.read_bytes(),
    )
    with pytest.raises(TlsError, match="<certificate bytes> holds no certificate"):
        ServerTls.from_pem(cert=b"junk", key=pki.server_key)


# --- the token ---


@pytest.fixture(scope="module")
def token_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    from conftest import start_peer_process

    peer = start_peer_process(tmp_path_factory.mktemp("token") / "stderr.txt", "--token", TOKEN)
    yield peer
    assert peer.stop() == 0, peer.stderr()


@pytest.fixture(scope="module")
def tls_token_peer(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    from conftest import start_peer_process

    peer = start_peer_process(
        tmp_path_factory.mktemp("tls-token") / "stderr.txt", *tls_args(pki), "--token", TOKEN
    )
    yield peer
    assert peer.stop() == 0, peer.stderr()


@pytest.fixture(params=["plaintext", "tls"])
def guarded(request: pytest.FixtureRequest, pki: Pki) -> tuple[str, dict[str, Any]]:
    """(address, connect options) of a token-guarded peer, over plaintext and over mTLS."""
    if request.param == "plaintext":
        peer: PeerProcess = request.getfixturevalue("token_peer")
        return peer.address, {}
    peer = request.getfixturevalue("tls_token_peer")
    return https(peer), {"tls": client_tls(pki)}


@pytest.mark.parametrize(
    "token", [None, WRONG_TOKEN, "", TOKEN + "x"], ids=["none", "wrong", "empty", "longer"]
)
async def test_calls_without_the_right_token_are_refused_and_never_run(
    guarded: tuple[str, dict[str, Any]], token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BLAZEN_PEER_TOKEN", raising=False)
    address, options = guarded
    tag = f"refused-{uuid.uuid4()}"
    if token == "":
        # An empty variable counts as unset: no token is sent.
        monkeypatch.setenv("BLAZEN_PEER_TOKEN", "")
        token = None
    with pytest.raises(AuthenticationError) as info:
        await connect_and_mark(address, tag, token=token, **options)
    message = str(info.value)
    assert TOKEN not in message
    assert WRONG_TOKEN not in message
    assert "token" in message
    async with await PeerClient.connect(address, node_id="node-a", token=TOKEN, **options) as good:
        assert tag not in await marks(good)


async def test_the_right_token_is_accepted_from_the_argument_or_the_environment(
    guarded: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, options = guarded
    monkeypatch.delenv("BLAZEN_PEER_TOKEN", raising=False)
    by_arg = await connect_and_mark(address, "token-arg", token=TOKEN, **options)
    assert by_arg["caller_node_id"] == "node-a", by_arg
    monkeypatch.setenv("BLAZEN_PEER_TOKEN", TOKEN)
    by_env = await connect_and_mark(address, "token-env", **options)
    assert by_env["caller_node_id"] == "node-a", by_env
    async with await PeerClient.connect(address, node_id="node-a", **options) as client:
        counted = await marks(client)
    assert (counted["token-arg"], counted["token-env"]) == (1, 1), counted


async def test_a_server_accepts_each_of_several_tokens_while_rotating(
    monkeypatch: pytest.MonkeyPatch, step_ids: Callable[[str], str]
) -> None:
    monkeypatch.delenv("BLAZEN_PEER_TOKEN", raising=False)
    ran: list[str] = []

    @step(step_ids("rotated"))
    async def rotated(ctx: Context, ev: StartEvent) -> StopEvent:
        ran.append(ev.token)
        return StopEvent(result="ok")

    async with PeerServer("rotating", token=["old-token", "new-token"]) as server:
        address = f"http://{await server.start()}"
        for token in ("old-token", "new-token", "other-token"):
            async with await PeerClient.connect(address, node_id="a", token=token) as client:
                call = client.run_remote_workflow("rotation", [rotated.id], {"token": token})
                if token == "other-token":
                    with pytest.raises(AuthenticationError):
                        await call
                else:
                    assert await call == "ok"
    assert ran == ["old-token", "new-token"]


async def test_a_token_sent_to_a_peer_without_one_is_ignored(peer_address: str) -> None:
    result = await connect_and_mark(peer_address, "unneeded-token", token=TOKEN)
    assert result["caller_node_id"] == "node-a", result


async def test_the_server_reads_its_token_from_the_environment(
    spawn_peer: Callable[..., PeerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLAZEN_PEER_TOKEN", TOKEN)
    peer = spawn_peer()
    monkeypatch.delenv("BLAZEN_PEER_TOKEN")
    with pytest.raises(AuthenticationError):
        await connect_and_mark(peer.address, "env-server")
    result = await connect_and_mark(peer.address, "env-server", token=TOKEN)
    assert result["caller_node_id"] == "node-a", result
    async with await PeerClient.connect(peer.address, node_id="node-a", token=TOKEN) as client:
        assert (await marks(client))["env-server"] == 1  # the refused call never ran


async def test_a_token_over_plaintext_to_another_host_logs_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing answers there.
    address = "http://192.0.2.7:50051"
    with caplog.at_level(logging.WARNING, logger="blazen_peer"):
        for _ in range(2):
            with pytest.raises(TransportError):
                await PeerClient.connect(
                    address, node_id="a", token=TOKEN, connect_timeout_secs=0.05
                )
    warnings = [record for record in caplog.records if "plaintext" in record.getMessage()]
    assert len(warnings) == 1
    assert TOKEN not in warnings[0].getMessage()
    assert "192.0.2.7" in warnings[0].getMessage()


# --- secure by default ---


async def test_a_non_loopback_bind_without_tls_or_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    monkeypatch.delenv("BLAZEN_PEER_TOKEN", raising=False)
    server = PeerServer("open")
    with pytest.raises(ValidationError) as info:
        await server.start("0.0.0.0:0")
    for hint in ("without TLS or a token", "tls=", "token=", "insecure=True"):
        assert hint in str(info.value)
    assert server.address is None
    for settings in (
        {"insecure": True},
        {"token": TOKEN},
        {"tls": ServerTls.from_pem(cert=pki.server_cert, key=pki.server_key)},
    ):
        async with PeerServer("guarded", **settings) as guarded:
            assert (await guarded.start("0.0.0.0:0")).startswith("0.0.0.0:")


# --- limits ---


async def test_runs_beyond_max_concurrent_runs_get_peer_busy_error(
    spawn_peer: Callable[..., PeerProcess], tmp_path: Path
) -> None:
    peer = spawn_peer("--max-concurrent-runs", "2")
    release = tmp_path / "release"
    started = [tmp_path / f"started-{n}" for n in range(2)]
    async with await PeerClient.connect(peer.address, node_id="node-a") as client:
        holders = [
            asyncio.create_task(
                client.run_remote_workflow(
                    "hold", ["security::hold"], {"release": str(release), "started": str(path)}
                )
            )
            for path in started
        ]
        try:
            await wait_for_files(started, holders)
            with pytest.raises(PeerBusyError) as info:
                await mark(client, "probe")
            assert "maximum of 2 concurrent runs" in str(info.value)
            assert "max_concurrent_runs" in str(info.value)
        finally:
            release.touch()
        assert await asyncio.gather(*holders) == ["released", "released"]
        assert "probe" not in await marks(client)


async def wait_for_files(paths: list[Path], tasks: list[asyncio.Task[Any]]) -> None:
    """Waits until every path exists, failing early if a task ended (e.g. was refused)."""
    deadline = asyncio.get_running_loop().time() + 20
    while not all(path.exists() for path in paths):
        for task in tasks:
            if task.done():
                task.result()
                pytest.fail("a holder finished before every holder started")
        assert asyncio.get_running_loop().time() < deadline, "the holders never started"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("limit", [5, 100])
async def test_json_nested_deeper_than_the_limit_is_refused(
    spawn_peer: Callable[..., PeerProcess], peer_address: str, limit: int
) -> None:
    address = peer_address if limit == 100 else spawn_peer("--max-json-depth", str(limit)).address
    async with await PeerClient.connect(address, node_id="node-a") as client:
        at_limit: Any = "leaf"
        for _ in range(limit - 1):
            at_limit = [at_limit]
        echoed = await client.run_remote_workflow("echo", ["test::echo"], {"v": at_limit})
        assert echoed["data"] == {"v": at_limit}
        with pytest.raises(EncodeError) as info:
            await client.run_remote_workflow("echo", ["test::echo"], {"v": [at_limit]})
        assert f"maximum nesting depth of {limit}" in str(info.value)
        assert "max_json_depth" in str(info.value)


def test_limits_out_of_range_are_refused_at_construction() -> None:
    with pytest.raises(ValidationError, match="max_concurrent_runs"):
        PeerServer("x", max_concurrent_runs=0)
    with pytest.raises(ValidationError, match="max_json_depth must be between 1 and 128"):
        PeerServer("x", max_json_depth=129)
    with pytest.raises(ValidationError, match="token is empty"):
        PeerServer("x", token="")
    with pytest.raises(ValidationError, match="keepalive_interval_secs"):
        PeerServer("x", keepalive_interval_secs=0)


async def test_keepalive_pings_keep_a_long_silent_call_alive(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = spawn_peer("--keepalive-interval", "0.1")
    async with await PeerClient.connect(
        peer.address, node_id="node-a", keepalive_interval_secs=0.1, keepalive_timeout_secs=1.0
    ) as client:
        result = await client.run_remote_workflow("silent", ["security::silent"], {"secs": 1.5})
        assert result == "still connected"
