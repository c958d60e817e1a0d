"""Interop with the published Rust implementation of blazen.peer.v1 (crate
`blazen-peer` 0.7.0 with `blazen-core`/`blazen-events` 0.7.0), both directions,
each side in its own process, over loopback.

- The crate's client against our peer (`tests/peer_app.py`): the harness runs
  each case and reports it; one test per case below.
- The crate's HTTP/JSON client (`HttpPeerClient`) against our peer's HTTP/JSON
  routes (`PeerServer(http_json=True)`), with a token: the same cases, one test each.
- Our client (async, blocking, pool) against the crate's server, which speaks
  v1 only: what it has works, what it lacks fails with PeerUnsupportedError or
  degrades (parent_run releases refs one by one; the pool probes and routes
  without health or ListSteps).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from blazen_peer import (
    PeerClient,
    PeerPool,
    PeerTimeoutError,
    PeerUnsupportedError,
    RefLifetime,
    RefNotFoundError,
    RunUsage,
    UnknownStepError,
    WorkflowError,
)
from conftest import PeerProcess, start_peer_process
from interop_harness import (
    BYTES_TAG,
    ECHO,
    FAILING,
    MAKE_REF,
    RUST_NODE_ID,
    SLOW,
    STATE,
    RustPeer,
    run_rust_client,
    start_rust_peer,
)

# ---- the crate's client -> our server ------------------------------------

RUST_CLIENT_CASES = [
    "pipeline",
    "state",
    "unknown_step",
    "workflow_error",
    "newer_envelope",
    "timeout",
    "remote_refs",
    "deref",
    "release",
]


@pytest.fixture(scope="module")
def rust_client_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every case of the crate's client, run once against a peer of ours."""
    peer = start_peer_process(tmp_path_factory.mktemp("interop-peer") / "stderr.txt")
    try:
        yield run_rust_client(peer.address)
    finally:
        status = peer.stop()
    assert status == 0, f"our peer ended with status {status}; stderr:\n{peer.stderr()}"


@pytest.mark.parametrize("case", RUST_CLIENT_CASES)
def test_rust_client_against_our_server(rust_client_results: dict[str, Any], case: str) -> None:
    outcome = rust_client_results.get(case)
    assert outcome is not None, f"the harness did not run `{case}`: {rust_client_results}"
    assert outcome["ok"], f"{case}: {outcome['detail']}"


# ---- the crate's HTTP/JSON client -> our server's HTTP/JSON routes ---------

RUST_HTTP_CLIENT_CASES = [
    "http_pipeline",
    "http_unknown_step",
    "http_workflow_error",
    "http_newer_envelope",
    "http_remote_refs",
    "http_deref",
    "http_release",
    "http_token_required",
]


@pytest.fixture(scope="module")
def rust_http_client_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Every case of the crate's `HttpPeerClient`, run once against a peer of ours
    serving the HTTP/JSON routes behind a token."""
    token = "interop-" + uuid.uuid4().hex
    peer = start_peer_process(
        tmp_path_factory.mktemp("interop-http-peer") / "stderr.txt",
        "--http-json",
        "--token",
        token,
    )
    try:
        yield run_rust_client(peer.address, http=True, token=token)
    finally:
        status = peer.stop()
    assert status == 0, f"our peer ended with status {status}; stderr:\n{peer.stderr()}"


@pytest.mark.parametrize("case", RUST_HTTP_CLIENT_CASES)
def test_rust_http_client_against_our_server(
    rust_http_client_results: dict[str, Any], case: str
) -> None:
    outcome = rust_http_client_results.get(case)
    assert outcome is not None, f"the harness did not run `{case}`: {rust_http_client_results}"
    assert outcome["ok"], f"{case}: {outcome['detail']}"


# ---- our client -> the crate's server ------------------------------------


@pytest.fixture(scope="module")
def rust_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RustPeer]:
    peer = start_rust_peer(tmp_path_factory.mktemp("rust-peer") / "stderr.txt")
    yield peer
    assert peer.stop() == 0, peer.stderr_path.read_text(errors="replace")


@pytest.fixture
async def client(rust_peer: RustPeer) -> AsyncIterator[PeerClient]:
    connected = await PeerClient.connect(rust_peer.address, node_id="py-client")
    yield connected
    await connected.close()


async def test_echo(client: PeerClient) -> None:
    value = {"text": "héllo", "n": [1, 2.5, None, True]}
    assert await client.run_remote_workflow("wf", [ECHO], value, timeout_secs=30) == value


async def test_a_v1_response_reads_as_zero_usage(client: PeerClient) -> None:
    # The published crate sends no usage extension: zero, not an error.
    response = await client.invoke_sub_workflow("wf", [ECHO], {"x": 1}, timeout_secs=30)
    assert response.usage == RunUsage()


async def test_no_timeout_means_no_deadline(client: PeerClient) -> None:
    # The crate reads timeout_secs None as "no deadline"; the run still ends.
    assert await client.run_remote_workflow("wf", [ECHO], {"x": 1}) == {"x": 1}


async def test_state_is_never_exported(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow("wf", [STATE], {"k": 1}, timeout_secs=30)
    assert response.error is None
    assert response.result == {"stored": True}
    assert response.state == {}


async def test_unknown_step_names_the_step(client: PeerClient) -> None:
    with pytest.raises(UnknownStepError) as caught:
        await client.run_remote_workflow("wf", ["interop::missing"], {}, timeout_secs=30)
    assert caught.value.step_id == "interop::missing"
    assert "interop::missing" in str(caught.value)


async def test_workflow_error(client: PeerClient) -> None:
    with pytest.raises(WorkflowError) as caught:
        await client.run_remote_workflow("wf", [FAILING], {}, timeout_secs=30)
    assert not isinstance(caught.value, PeerTimeoutError)
    assert "interop step failed on purpose" in str(caught.value)
    assert caught.value.failure_kind == "StepFailed"


async def test_timeout_is_a_timeout(client: PeerClient) -> None:
    with pytest.raises(PeerTimeoutError) as caught:
        await client.run_remote_workflow("wf", [SLOW], {"secs": 30}, timeout_secs=1)
    assert "timed out after 1s" in str(caught.value)
    with pytest.raises(PeerTimeoutError):
        await client.invoke_sub_workflow("wf", [SLOW], {"secs": 30}, timeout_secs=1)


async def test_remote_ref_deref_and_release(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow(
        "wf", [MAKE_REF], {"text": "ref ✓"}, timeout_secs=30
    )
    key = uuid.UUID(response.result["ref"])
    descriptor = response.remote_refs[key]
    assert (descriptor.origin_node_id, descriptor.type_tag) == (RUST_NODE_ID, BYTES_TAG)
    assert await client.deref_session_ref(key) == "ref ✓".encode()
    buffer = bytearray(64)
    size = await client.deref_session_ref_into(key, buffer)  # v1 unary deref underneath
    assert bytes(buffer[:size]) == "ref ✓".encode()
    assert await client.release_session_ref(key) is True
    assert await client.release_session_ref(key) is False
    with pytest.raises(RefNotFoundError):
        await client.deref_session_ref(key)


async def test_every_ref_listed_in_every_response(client: PeerClient) -> None:
    # The crate lists every ref its registry holds, not just this run's.
    first = await client.invoke_sub_workflow("wf", [MAKE_REF], {"text": "a"}, timeout_secs=30)
    second = await client.invoke_sub_workflow("wf", [MAKE_REF], {"text": "b"}, timeout_secs=30)
    a, b = (uuid.UUID(r.result["ref"]) for r in (first, second))
    assert {a, b} <= set(second.remote_refs)
    echoed = await client.invoke_sub_workflow("wf", [ECHO], 1, timeout_secs=30)
    assert {a, b} <= set(echoed.remote_refs)
    for key in (a, b):
        assert await client.release_session_ref(key) is True


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("ListSteps", lambda c: c.list_steps()),
        ("Health", lambda c: c.health()),
        (
            "PutSessionRef",
            lambda c: c.put_session_ref(b"x", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP),
        ),
    ],
)
async def test_missing_methods_are_typed_errors(client: PeerClient, method: str, call: Any) -> None:
    with pytest.raises(PeerUnsupportedError) as caught:
        await call(client)
    assert caught.value.method == method
    assert f"does not implement {method}: it speaks v1 only" in str(caught.value)
    assert caught.value.started is False


async def test_streaming_is_a_typed_error(client: PeerClient) -> None:
    with pytest.raises(PeerUnsupportedError) as caught:
        async for _ in client.stream_sub_workflow("wf", [ECHO], 1, timeout_secs=30):
            pass
    assert "does not implement StreamSubWorkflowEvents: it speaks v1 only" in str(caught.value)


async def test_parent_run_releases_refs_one_by_one(
    client: PeerClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="blazen_peer")
    before = await client.invoke_sub_workflow(
        "wf", [MAKE_REF], {"text": "outside"}, timeout_secs=30
    )
    outside = uuid.UUID(before.result["ref"])
    made = []
    for _ in range(2):
        async with client.parent_run():
            response = await client.invoke_sub_workflow(
                "wf", [MAKE_REF], {"text": "inside"}, timeout_secs=30
            )
            made.append(uuid.UUID(response.result["ref"]))
    for key in made:
        assert await client.release_session_ref(key) is False, "parent_run() left it"
    # Listed again inside the block, but made before it: not the parent's to release.
    assert await client.release_session_ref(outside) is True
    noted = [r for r in caplog.records if "speaks v1 only" in r.getMessage()]
    assert len(noted) == 1, [r.getMessage() for r in noted]


def test_blocking_client(rust_peer: RustPeer) -> None:
    with PeerClient.connect_blocking(rust_peer.address, node_id="py-blocking") as client:
        assert client.run_remote_workflow_blocking("wf", [ECHO], [1, 2], timeout_secs=30) == [1, 2]
        with pytest.raises(PeerTimeoutError):
            client.run_remote_workflow_blocking("wf", [SLOW], {"secs": 30}, timeout_secs=1)
        with pytest.raises(UnknownStepError) as caught:
            client.run_remote_workflow_blocking("wf", ["interop::missing"], timeout_secs=30)
        assert caught.value.step_id == "interop::missing"
        with pytest.raises(PeerUnsupportedError):
            client.list_steps_blocking()
        with (
            pytest.raises(PeerUnsupportedError),
            client.stream_sub_workflow_blocking("wf", [ECHO], 1, timeout_secs=30) as stream,
        ):
            next(iter(stream))
        with client.parent_run():
            response = client.invoke_sub_workflow_blocking(
                "wf", [MAKE_REF], {"text": "blocking"}, timeout_secs=30
            )
            key = uuid.UUID(response.result["ref"])
            assert client.deref_session_ref_blocking(key) == b"blocking"
        assert client.release_session_ref_blocking(key) is False


# ---- a pool mixing the crate's server and ours ----------------------------


@pytest.fixture(scope="module")
def our_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    peer = start_peer_process(tmp_path_factory.mktemp("interop-pool-peer") / "stderr.txt")
    yield peer
    assert peer.stop() == 0, peer.stderr()


async def test_pool_takes_a_v1_peer_as_member(rust_peer: RustPeer, our_peer: PeerProcess) -> None:
    async with await PeerPool.connect(
        [rust_peer.address, our_peer.address], node_id="py-pool"
    ) as pool:
        await pool.wait_for_healthy(2)
        by_address = {status.address: status for status in pool.peers}
        assert by_address[rust_peer.address].v1_only
        assert not by_address[our_peer.address].v1_only
        # Only the v1 member has it; it lists nothing, so the pool tries it.
        assert await pool.run_remote_workflow("wf", [ECHO], {"x": 1}, timeout_secs=30) == {"x": 1}
        # Only ours has it: a try on the v1 member answers UnknownStep (nothing
        # ran), is remembered, and the call goes to ours.
        for n in range(4):
            result = await pool.run_remote_workflow("wf", ["test::echo"], n, timeout_secs=30)
            assert result["data"] == n
        # An UnknownStep answer is no failure: both members stay in rotation.
        assert all(status.healthy for status in pool.peers)
        with pytest.raises(UnknownStepError) as caught:
            await pool.run_remote_workflow("wf", ["nowhere::step"], timeout_secs=30)
        assert "speaks v1 only" in str(caught.value)
        # Refs are fetched from the member whose run made them.
        response = await pool.invoke_sub_workflow(
            "wf", [MAKE_REF], {"text": "pooled"}, timeout_secs=30
        )
        key = uuid.UUID(response.result["ref"])
        assert await pool.deref_session_ref(key) == b"pooled"
        assert await pool.release_session_ref(key) is True


def test_blocking_pool_of_only_a_v1_peer(rust_peer: RustPeer) -> None:
    with PeerPool.connect_blocking([rust_peer.address], node_id="py-pool-blocking") as pool:
        pool.wait_for_healthy_blocking(1)
        assert pool.run_remote_workflow_blocking("wf", [ECHO], "hi", timeout_secs=30) == "hi"
        with pytest.raises(UnknownStepError):
            pool.run_remote_workflow_blocking("wf", ["interop::missing"], timeout_secs=30)
        # Known missing now: refused without another call.
        with pytest.raises(UnknownStepError):
            pool.run_remote_workflow_blocking("wf", ["interop::missing"], timeout_secs=30)
        # It cannot stream; that is no failure of the member, which stays in rotation.
        streaming = pool.stream_sub_workflow_blocking("wf", [ECHO], 1, timeout_secs=30)
        with pytest.raises(PeerUnsupportedError, match="does not implement StreamSubWorkflow"):
            next(iter(streaming))
        streaming.close()
        assert all(status.healthy for status in pool.peers)
