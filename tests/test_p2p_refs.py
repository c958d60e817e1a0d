"""Peer-to-peer refs: a step on peer B reads a value peer A holds, from A, directly.

Three processes: this test (the parent), A and B (tests/peer_app.py, `p2p::*`
steps in tests/steps_upload.py). The parent reaches both peers through
`byte_counter.CountingProxy`, which counts every byte this process receives from
them, so "the parent sees no bytes" is measured, not assumed.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from blazen_peer import PeerClient, QuotaExceededError, RefLifetime, RemoteRef, WorkflowError
from byte_counter import CountingProxy
from conftest import PeerProcess, start_peer_process
from test_cli import PEER_APP, start_serve

MIB = 1024 * 1024
SIZE = 256 * MIB
ORIGIN_ERROR = "blazen_peer.errors.RefOriginError"


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Fleet:
    a: PeerProcess
    b: PeerProcess


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A (peer-a), and B (peer-b), whose directory lets its steps reach A, and
    names peer-gone at a port where nothing listens."""
    a = start_peer_process(tmp_path_factory.mktemp("a") / "stderr.txt", "--node-id", "peer-a")
    directory = {"peer-a": a.address, "peer-gone": f"http://127.0.0.1:{closed_port()}"}
    b = start_peer_process(
        tmp_path_factory.mktemp("b") / "stderr.txt",
        "--node-id",
        "peer-b",
        "--peers",
        json.dumps(directory),
    )
    yield Fleet(a, b)
    for peer in (b, a):
        assert peer.stop() == 0, peer.stderr()


@pytest.fixture
async def proxies(fleet: Fleet) -> AsyncIterator[tuple[CountingProxy, CountingProxy]]:
    counted = (CountingProxy(fleet.a.port), CountingProxy(fleet.b.port))
    yield counted
    for proxy in counted:
        proxy.close()


async def make_ref(client_a: PeerClient, size: int) -> tuple[RemoteRef, str]:
    """Has A keep `size` bytes under the current parent run; returns the handle and digest."""
    response = await client_a.invoke_sub_workflow(
        "extract", ["p2p::make"], {"seed": 5, "size": size}, timeout_secs=120
    )
    response.raise_for_error()
    return response.remote_ref("features"), response.result["sha256"]


async def fetch_on(client: PeerClient, handle: RemoteRef | dict[str, Any], step: str) -> Any:
    return await client.run_remote_workflow("train", [step], {"features": handle}, timeout_secs=120)


@pytest.mark.timeout(180)
async def test_a_step_on_b_reads_a_ref_of_a_from_a_and_the_parent_sees_none_of_it(
    proxies: tuple[CountingProxy, CountingProxy],
) -> None:
    proxy_a, proxy_b = proxies
    async with (
        await PeerClient.connect(proxy_a.address, node_id="parent") as client_a,
        await PeerClient.connect(proxy_b.address, node_id="parent") as client_b,
        client_a.parent_run(),
    ):
        ref, digest = await make_ref(client_a, SIZE)
        assert (ref.origin_node_id, ref.type_tag) == ("peer-a", "bytes")
        before = proxy_a.received + proxy_b.received
        seen = await fetch_on(client_b, ref, "p2p::fetch")
        received = proxy_a.received + proxy_b.received - before
        # The counter sees the bytes when they do pass through the parent.
        assert len(await client_a.deref_session_ref(ref.key)) == SIZE
        through_parent = proxy_a.received + proxy_b.received - before - received
    assert seen == {"type": "bytes", "size": SIZE, "readonly": True, "sha256": digest}
    print(f"parent received {received} bytes while B read A's {SIZE >> 20} MiB ref")
    assert received < MIB, received
    assert through_parent >= SIZE


async def test_a_def_step_fetches_with_fetch_sync(fleet: Fleet) -> None:
    async with (
        await PeerClient.connect(fleet.a.address, node_id="parent") as client_a,
        await PeerClient.connect(fleet.b.address, node_id="parent") as client_b,
        client_a.parent_run(),
    ):
        ref, digest = await make_ref(client_a, 1000)
        seen = await fetch_on(client_b, ref, "p2p::fetch_sync")
    assert seen["sha256"] == digest


async def test_an_origin_b_cannot_reach_is_a_typed_error_naming_it(fleet: Fleet) -> None:
    gone = RemoteRef(
        key=uuid.uuid4(),
        origin_node_id="peer-gone",
        origin_address="http://192.0.2.1:9",
        type_tag="bytes",
    )
    async with await PeerClient.connect(fleet.b.address, node_id="parent") as client_b:
        with pytest.raises(WorkflowError) as caught:
            await fetch_on(client_b, gone, "p2p::fetch")
    assert caught.value.remote_type == ORIGIN_ERROR
    message = str(caught.value)
    # Named, and reached at the directory's address, not the one in the handle.
    assert "peer-gone" in message and "192.0.2.1" not in message, message


async def test_b_refuses_an_origin_without_a_directory_entry(
    fleet: Fleet, peer_process: PeerProcess
) -> None:
    async with (
        await PeerClient.connect(fleet.a.address, node_id="parent") as client_a,
        await PeerClient.connect(fleet.b.address, node_id="parent") as client_b,
        await PeerClient.connect(peer_process.address, node_id="parent") as no_directory,
        client_a.parent_run(),
    ):
        ref, _ = await make_ref(client_a, 1000)
        # A handle that names another node at A's address: B's entry for peer-a is
        # not used for it, so no request can point B's credentials elsewhere.
        impostor = RemoteRef(
            key=ref.key,
            origin_node_id="peer-x",
            origin_address="http://10.255.0.1:7443",
            type_tag="bytes",
        )
        with pytest.raises(WorkflowError) as not_listed:
            await fetch_on(client_b, impostor, "p2p::fetch")
        # node-b, the session's peer, has no directory at all.
        with pytest.raises(WorkflowError) as no_entries:
            await fetch_on(no_directory, ref, "p2p::fetch")
    assert not_listed.value.remote_type == ORIGIN_ERROR
    assert "peer-x" in str(not_listed.value) and "peer directory" in str(not_listed.value)
    assert no_entries.value.remote_type == ORIGIN_ERROR
    assert "peer-a" in str(no_entries.value) and "no peer directory" in str(no_entries.value)


async def test_a_released_ref_is_ref_not_found_on_the_fetching_peer(fleet: Fleet) -> None:
    async with (
        await PeerClient.connect(fleet.a.address, node_id="parent") as client_a,
        await PeerClient.connect(fleet.b.address, node_id="parent") as client_b,
        client_a.parent_run(),
    ):
        ref, _ = await make_ref(client_a, 10)
        assert await client_a.release_session_ref(ref.key)
        with pytest.raises(WorkflowError) as caught:
            await fetch_on(client_b, ref, "p2p::fetch")
    assert caught.value.remote_type == "blazen_peer.errors.RefNotFoundError"
    assert str(ref.key) in str(caught.value)


@pytest.mark.timeout(120)
def test_serve_takes_the_directory_and_the_upload_bound_from_its_flags(
    fleet: Fleet, tmp_path: Path
) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"peer-a": {"address": fleet.a.address}}))
    served = start_serve(
        PEER_APP,
        *("--listen", "127.0.0.1:0", "--node-id", "cli-b"),
        *("--peers", str(peers), "--max-upload-bytes", "1000"),
    )
    try:
        with (
            PeerClient.connect_blocking(fleet.a.address, node_id="parent") as client_a,
            PeerClient.connect_blocking(served.host_port, node_id="parent") as client_b,
            client_a.parent_run(),
        ):
            response = client_a.invoke_sub_workflow_blocking(
                "extract", ["p2p::make"], {"seed": 3, "size": 5000}
            )
            ref = response.remote_ref("features")
            seen = client_b.run_remote_workflow_blocking("train", ["p2p::fetch"], {"features": ref})
            assert seen["sha256"] == response.result["sha256"]
            with pytest.raises(QuotaExceededError, match="max_upload_bytes of 1000"):
                client_b.put_session_ref_blocking(
                    bytes(1001), lifetime=RefLifetime.UNTIL_EXPLICIT_DROP
                )
    finally:
        assert served.stop() == 0, served.stderr()
