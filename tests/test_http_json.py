"""The HTTP/JSON routes (`PeerServer(http_json=True)`, `serve --http-json`), with
requests shaped exactly as the published crate's `HttpPeerClient` (blazen-peer
0.7.0, `src/http_client.rs`) sends them: `POST {base}/v1/peer/<method>` over
HTTP/1.1, headers `Content-Type: application/json` and `X-Blazen-Peer-Node-Id`,
the body serde_json of the protocol struct (bytes fields as arrays of numbers,
uuids as strings), errors read from `{"error": ...}`. The peers run in their own
processes (`tests/peer_app.py --http-json`); `tests/test_interop.py` runs the
crate's own client against them too.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from blazen_peer import PeerClient
from conftest import PeerProcess, start_peer_process

TOKEN = "http-json-" + uuid.uuid4().hex
MAX_MESSAGE_BYTES = 64 * 1024
# The JSON body limit: 4 characters per byte (arrays of numbers) plus 64 KiB.
BODY_LIMIT = 4 * MAX_MESSAGE_BYTES + 64 * 1024
TIMEOUT_SECS = 30.0


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("http://").removeprefix("https://").rpartition(":")
    return host, int(port)


def post(
    address: str,
    path: str,
    body: bytes | dict[str, Any],
    *,
    token: str | None = TOKEN,
    content_type: str | None = "application/json",
    method: str = "POST",
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request as `HttpPeerClient::post_json` makes it; (status, headers, JSON body)."""
    host, port = _host_port(address)
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_SECS, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECS)
    data = body if isinstance(body, bytes) else compact(body)
    headers = {"X-Blazen-Peer-Node-Id": "http-tester"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=data if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return (
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            json.loads(raw) if raw else None,
        )
    finally:
        conn.close()


def compact(value: Any) -> bytes:
    """JSON as serde_json writes it: no spaces."""
    return json.dumps(value, separators=(",", ":")).encode()


def invoke_body(steps: list[str], value: Any, **overrides: Any) -> dict[str, Any]:
    """serde_json of the crate's `SubWorkflowRequest::new(name, steps, &value, Some(30))`."""
    body = {
        "envelope_version": 1,
        "workflow_name": "http-json",
        "step_ids": steps,
        "input_json": list(compact(value)),
        "timeout_secs": 30,
    }
    body.update(overrides)
    return body


def json_of(byte_array: list[int]) -> Any:
    return json.loads(bytes(byte_array))


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """A peer with the HTTP/JSON routes, a token and a small max_message_bytes."""
    process = start_peer_process(
        tmp_path_factory.mktemp("http-json") / "stderr.txt",
        *("--http-json", "--token", TOKEN, "--max-message-bytes", str(MAX_MESSAGE_BYTES)),
    )
    yield process
    status = process.stop()
    assert status == 0, f"the peer ended with status {status}; stderr:\n{process.stderr()}"
    assert "panicked" not in process.stderr(), process.stderr()


def test_invoke_as_the_crate_client_sends_it(peer: PeerProcess) -> None:
    status, headers, body = post(
        peer.address,
        "/v1/peer/invoke_sub_workflow",
        invoke_body(["my_app::analyze", "my_app::summarize"], {"document": "one two"}),
    )
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert set(body) == {"envelope_version", "state_json", "result_json", "remote_refs", "error"}
    assert body["error"] is None
    assert json_of(body["result_json"]) == {"words": 2, "summary": "one two"}
    assert {key: json_of(value) for key, value in body["state_json"].items()} == {"language": "en"}


def test_a_failed_run_is_200_with_error(peer: PeerProcess) -> None:
    status, _, body = post(
        peer.address, "/v1/peer/invoke_sub_workflow", invoke_body(["test::boom"], {})
    )
    assert status == 200, body
    assert "boom" in body["error"]
    assert body["result_json"] is None


def test_unknown_step_is_404_naming_it(peer: PeerProcess) -> None:
    status, _, body = post(
        peer.address, "/v1/peer/invoke_sub_workflow", invoke_body(["nope::missing"], {})
    )
    assert status == 404, body
    assert "nope::missing" in body["error"]


def test_session_ref_deref_and_release(peer: PeerProcess) -> None:
    value = {"kind": "json", "value": {"from": "http"}}
    status, _, body = post(
        peer.address, "/v1/peer/invoke_sub_workflow", invoke_body(["refs::make_value"], value)
    )
    assert status == 200, body
    key = json_of(body["result_json"])
    assert key in body["remote_refs"], body
    ref = {"envelope_version": 1, "ref_uuid": key}
    status, _, body = post(peer.address, "/v1/peer/deref_session_ref", ref)
    assert status == 200, body
    assert json_of(body["payload"]) == {"from": "http"}
    assert post(peer.address, "/v1/peer/release_session_ref", ref)[2] == {
        "envelope_version": 1,
        "released": True,
    }
    assert post(peer.address, "/v1/peer/release_session_ref", ref)[2]["released"] is False
    status, _, body = post(peer.address, "/v1/peer/deref_session_ref", ref)
    assert status == 404 and key in body["error"], body


def test_the_token_is_required(peer: PeerProcess) -> None:
    request = invoke_body(["security::mark"], "http-no-token")
    status, headers, body = post(peer.address, "/v1/peer/invoke_sub_workflow", request, token=None)
    assert status == 401, body
    assert headers["www-authenticate"] == "Bearer"
    assert "requires a token" in body["error"]
    status, _, body = post(peer.address, "/v1/peer/invoke_sub_workflow", request, token="wrong")
    assert status == 401, body
    assert "does not match" in body["error"]
    assert TOKEN not in json.dumps(body)
    # Refused before the body was read: the step never ran.
    status, _, body = post(
        peer.address, "/v1/peer/invoke_sub_workflow", invoke_body(["security::marks"], None)
    )
    assert status == 200, body
    assert "http-no-token" not in json.dumps(json_of(body["result_json"]))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"envelope_version": 1,', "EOF while parsing"),
        (b"not json", "expected ident"),
        (b'{"envelope_version": 1}', "missing field `workflow_name`"),
        (json.dumps(invoke_body(["test::echo"], {}, input_json="x" * 3)).encode(), "input_json"),
        (
            json.dumps(invoke_body(["test::echo"], {}, step_ids="one")).encode(),
            "expected a sequence",
        ),
    ],
)
def test_a_malformed_body_is_400_saying_what_is_wrong(
    peer: PeerProcess, payload: bytes, expected: str
) -> None:
    status, _, body = post(peer.address, "/v1/peer/invoke_sub_workflow", payload)
    assert status == 400, body
    assert expected in body["error"], body


def test_a_bad_ref_uuid_is_400(peer: PeerProcess) -> None:
    status, _, body = post(
        peer.address, "/v1/peer/deref_session_ref", {"envelope_version": 1, "ref_uuid": "nope"}
    )
    assert status == 400, body
    assert "DerefRequest" in body["error"]


def test_an_oversized_body_is_413(peer: PeerProcess) -> None:
    # Refused from its Content-Length, before the body is read (so, as curl does for
    # large bodies, the client sends its head and waits for the answer).
    host, port = _host_port(peer.address)
    head = (
        "POST /v1/peer/invoke_sub_workflow HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=TIMEOUT_SECS) as sock:
        sock.sendall(head.encode() + b'{"envelope_version": 1, ')
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert f"exceeds {BODY_LIMIT} bytes" in body["error"]
    assert "max_message_bytes" in body["error"]
    # Within the JSON limit, but more than max_message_bytes once decoded.
    near = invoke_body(["test::echo"], "x" * (MAX_MESSAGE_BYTES + 1000))
    assert len(compact(near)) < BODY_LIMIT
    status, _, body = post(peer.address, "/v1/peer/invoke_sub_workflow", near)
    assert status == 413, body
    assert "exceeds max_message_bytes" in body["error"]
    # The peer still serves.
    status, _, body = post(
        peer.address, "/v1/peer/invoke_sub_workflow", invoke_body(["test::echo"], "small")
    )
    assert status == 200, body


def test_unknown_route_wrong_method_and_content_type(peer: PeerProcess) -> None:
    status, _, body = post(peer.address, "/v1/peer/list_steps", {})
    assert status == 404, body
    assert "/v1/peer/invoke_sub_workflow" in body["error"]
    status, headers, body = post(peer.address, "/v1/peer/deref_session_ref", b"", method="GET")
    assert status == 405, body
    assert headers["allow"] == "POST"
    status, _, body = post(
        peer.address,
        "/v1/peer/invoke_sub_workflow",
        invoke_body(["test::echo"], {}),
        content_type="text/plain",
    )
    assert status == 415, body
    assert "application/json" in body["error"]


async def test_grpc_still_served_on_the_same_port(peer: PeerProcess) -> None:
    client = await PeerClient.connect(peer.address, node_id="grpc-caller", token=TOKEN)
    try:
        response = await client.run_remote_workflow("w", ["test::echo"], {"a": 1})
        assert isinstance(response, dict)
    finally:
        await client.close()
    assert response["data"] == {"a": 1}


def test_off_by_default(tmp_path: Path) -> None:
    process = start_peer_process(tmp_path / "stderr.txt")
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            post(process.address, "/v1/peer/invoke_sub_workflow", invoke_body(["test::echo"], 1))
    finally:
        assert process.stop() == 0, process.stderr()


def test_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    process = start_peer_process(
        tmp_path / "stderr.txt",
        *("--http-json", "--tls-cert", str(cert_path), "--tls-key", str(key_path)),
    )
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        status, _, body = post(
            process.address,
            "/v1/peer/invoke_sub_workflow",
            invoke_body(["test::echo"], "over tls"),
            token=None,
            context=context,
        )
        assert status == 200, body
        assert json_of(body["result_json"])["data"] == "over tls"
        # Plain HTTP to the TLS port gets no answer.
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            post(process.address, "/v1/peer/invoke_sub_workflow", invoke_body(["test::echo"], 1))
    finally:
        assert process.stop() == 0, process.stderr()
