"""Uploads: values a client streams into a peer's session refs, read there by steps.

Every peer is tests/peer_app.py in another process; its `upload::*` steps
(tests/steps_upload.py) read what was uploaded and report what they saw, and
`upload::held` reports the server's upload counters. Nothing sleeps: the killed
uploads are observed through those counters, polled with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ref_support
from blazen_peer import (
    AuthenticationError,
    PeerClient,
    QuotaExceededError,
    RefLifetime,
    RemoteRef,
    ValidationError,
    WorkflowError,
    register_ref_codec,
)
from conftest import TESTS_DIR, PeerProcess, read_line, start_peer_process

register_ref_codec(
    ref_support.POINT_TAG,
    ref_support.encode_point,
    ref_support.decode_point,
    type=ref_support.Point,
)

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024
UPLOAD_CLIENT = TESTS_DIR / "upload_client.py"
DEADLINE_SECS = 30.0


# --- helpers ---


async def run(client: PeerClient, step_id: str, data: dict[str, Any]) -> Any:
    return await client.run_remote_workflow("uploads", [step_id], data, timeout_secs=120)


async def held(client: PeerClient) -> dict[str, int]:
    """The peer's upload counters and its registry's size (`upload::held`)."""
    result: dict[str, int] = await run(client, "upload::held", {})
    return result


async def wait_for(
    client: PeerClient, what: str, predicate: Any, deadline_secs: float = DEADLINE_SECS
) -> dict[str, int]:
    """Polls `upload::held` until `predicate(counters)` holds, failing after the deadline."""
    deadline = time.monotonic() + deadline_secs
    while True:
        counters = await held(client)
        if predicate(counters):
            return counters
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {deadline_secs}s; last counters {counters}")
        await asyncio.sleep(0.01)


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def start(tmp_path: Path, *args: str) -> PeerProcess:
    return start_peer_process(tmp_path / "stderr.txt", *args)


@pytest.fixture(scope="module")
def upload_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    peer = start_peer_process(tmp_path_factory.mktemp("upload-peer") / "stderr.txt")
    yield peer
    assert peer.stop() == 0, peer.stderr()


@pytest.fixture
async def client(upload_peer: PeerProcess) -> AsyncIterator[PeerClient]:
    upload_peer.check_alive()
    connected = await PeerClient.connect(upload_peer.address, node_id="node-a")
    yield connected
    await connected.close()


# --- sizes and types ---


@pytest.mark.parametrize("value", [b"", b"x"], ids=["0 bytes", "1 byte"])
async def test_an_upload_of_0_or_1_byte_is_read_by_a_step(client: PeerClient, value: bytes) -> None:
    async with client.parent_run():
        ref = await client.put_session_ref(value)
        assert isinstance(ref, RemoteRef)
        assert ref.origin_node_id == "node-b" and ref.type_tag == "bytes"
        assert ref.descriptor.type_tag == "bytes"
        seen = await run(client, "upload::describe", {"key": str(ref)})
        assert seen == {
            "type": "memoryview",
            "size": len(value),
            "readonly": True,
            "sha256": hashlib.sha256(value).hexdigest(),
        }
        assert (await held(client))["bytes_held"] == len(value)
    # Leaving the parent run freed the upload, and its share of the quota.
    counters = await held(client)
    assert counters["bytes_held"] == 0 and counters["refs"] == 0, counters


async def test_json_values_and_codecs_are_uploaded_as_steps_insert_them(
    client: PeerClient,
) -> None:
    async with client.parent_run():
        as_json = await client.put_session_ref({"a": [1, 2.5, "é"]})
        as_codec = await client.put_session_ref(ref_support.Point(3, -4, "pointé"))
        assert (as_json.type_tag, as_codec.type_tag) == ("json", ref_support.POINT_TAG)
        seen_json = await run(client, "upload::describe", {"key": as_json})
        seen_codec = await run(client, "upload::describe", {"key": str(as_codec)})
        # The client decodes them as it decodes refs made by steps.
        assert await client.fetch_session_ref(as_json.key) == {"a": [1, 2.5, "é"]}
    assert seen_json == {"type": "dict", "value": repr({"a": [1, 2.5, "é"]})}
    assert seen_codec["type"] == "Point"


async def test_a_numpy_array_is_read_by_a_step_without_a_copy(client: PeerClient) -> None:
    array = np.arange(1_000_000, dtype=np.float32)
    async with client.parent_run():
        ref = await client.put_session_ref(array)
        seen = await run(client, "upload::numpy", {"key": str(ref), "dtype": "float32"})
    assert seen == {
        # Two reads are views of the same stored bytes: neither made a copy.
        "same_memory": True,
        "owns_data": False,
        "writeable": False,
        "exporter": "RefBuffer",
        "sum": float(array.sum(dtype=np.float64)),
        "size": array.size,
    }


async def test_a_def_step_reads_an_upload_with_get_sync(client: PeerClient) -> None:
    async with client.parent_run():
        ref = await client.put_session_ref(bytearray(b"plain def step"))
        seen = await run(client, "upload::describe_sync", {"key": str(ref)})
    assert seen["size"] == len(b"plain def step")


async def test_a_wrong_key_is_ref_not_found_raised_in_the_step(client: PeerClient) -> None:
    missing = uuid.uuid4()
    with pytest.raises(WorkflowError) as caught:
        await run(client, "upload::describe", {"key": str(missing)})
    assert caught.value.remote_type == "blazen_peer.errors.RefNotFoundError"
    assert str(missing) in str(caught.value)
    assert caught.value.step_id == "upload::describe"


# --- lifetimes ---


async def test_outside_a_parent_run_an_upload_needs_an_explicit_lifetime(
    client: PeerClient,
) -> None:
    with pytest.raises(ValidationError, match="parent_run"):
        await client.put_session_ref(b"orphan")
    with pytest.raises(ValidationError, match="UNTIL_PARENT_FINISH or UNTIL_EXPLICIT_DROP"):
        await client.put_session_ref(b"x", lifetime=RefLifetime.UNTIL_CONTEXT_DROP)
    ref = await client.put_session_ref(b"kept", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    assert (await run(client, "upload::describe", {"key": str(ref)}))["size"] == 4
    assert await client.release_session_ref(ref.key) is True
    assert (await held(client))["bytes_held"] == 0


def test_the_blocking_twin_uploads_inside_a_blocking_parent_run(
    upload_peer: PeerProcess,
) -> None:
    with PeerClient.connect_blocking(upload_peer.address, node_id="node-a") as blocking:
        with blocking.parent_run():
            ref = blocking.put_session_ref_blocking(memoryview(b"from a thread"))
            seen = blocking.run_remote_workflow_blocking(
                "uploads", ["upload::describe"], {"key": str(ref)}
            )
        assert seen["size"] == len(b"from a thread")
        counters = blocking.run_remote_workflow_blocking("uploads", ["upload::held"], {})
        assert counters["bytes_held"] == 0


# --- large, cut off, bounded, refused ---


@pytest.mark.timeout(300)
async def test_an_upload_of_1_gib_is_streamed_into_less_than_1_3x_its_size(
    tmp_path: Path,
) -> None:
    peer = start(tmp_path)
    try:
        value = np.frombuffer(ref_support.pattern_bytes(11, GIB), dtype=np.uint8)
        digest = hashlib.sha256(value).hexdigest()
        async with (
            await PeerClient.connect(peer.address, node_id="node-a") as client,
            client.parent_run(),
        ):
            ref = await client.put_session_ref(value)
            seen = await run(client, "upload::describe", {"key": str(ref)})
            peak = peak_rss_bytes(peer.proc.pid)
        assert seen["size"] == GIB and seen["sha256"] == digest
        ratio = peak / GIB
        print(f"receiver peak RSS {peak / MIB:.0f} MiB for a 1024 MiB upload: {ratio:.3f}x")
        assert ratio < 1.3, f"peer peak RSS {peak / MIB:.0f} MiB is {ratio:.2f}x the value"
    finally:
        assert peer.stop() == 0, peer.stderr()


def start_uploader(address: str, size: int, *flags: str) -> subprocess.Popen[bytes]:
    """Starts tests/upload_client.py and waits until it says it is uploading."""
    uploader = subprocess.Popen(
        [sys.executable, str(UPLOAD_CLIENT), address, str(size), *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = read_line(uploader, DEADLINE_SECS)
    assert line.startswith("UPLOADING"), line
    return uploader


def kill(uploader: subprocess.Popen[bytes]) -> None:
    """SIGKILLs the uploader (a machine going away) and reaps it."""
    uploader.kill()
    uploader.wait(timeout=DEADLINE_SECS)
    for stream in (uploader.stdin, uploader.stdout):
        assert stream is not None
        stream.close()


@pytest.mark.timeout(120)
async def test_an_upload_cut_off_by_killing_the_client_leaves_nothing(
    client: PeerClient, upload_peer: PeerProcess
) -> None:
    before = await held(client)
    uploader = start_uploader(upload_peer.address, 256 * MIB)
    try:
        midway = await wait_for(
            client,
            "the upload's first pieces arrive",
            lambda c: c["in_progress"] == 1 and c["bytes_arriving"] > 0,
        )
    finally:
        kill(uploader)
    assert midway["bytes_arriving"] < 256 * MIB
    after = await wait_for(client, "the cut-off upload is dropped", lambda c: c["in_progress"] == 0)
    assert after == before, (before, after)


@pytest.mark.timeout(120)
async def test_an_upload_of_a_parent_that_died_is_freed_when_its_lease_lapses(
    tmp_path: Path,
) -> None:
    peer = start(tmp_path, "--lease-secs", "1")
    try:
        uploader = start_uploader(peer.address, MIB, "--parent")
        try:
            done = read_line(uploader, DEADLINE_SECS)
            assert done.startswith("DONE "), done
        finally:
            kill(uploader)
        async with await PeerClient.connect(peer.address, node_id="node-a") as client:
            counters = await wait_for(
                client, "the dead parent's upload is freed", lambda c: c["refs"] == 0
            )
        assert counters["bytes_held"] == 0, counters
    finally:
        assert peer.stop() == 0, peer.stderr()


async def test_an_upload_past_max_upload_bytes_is_refused_before_its_bytes(
    tmp_path: Path,
) -> None:
    peer = start(tmp_path, "--max-upload-bytes", str(MIB))
    try:
        async with await PeerClient.connect(peer.address, node_id="node-a") as client:
            first = await client.put_session_ref(
                bytes(600 * 1024), lifetime=RefLifetime.UNTIL_EXPLICIT_DROP
            )
            with pytest.raises(QuotaExceededError) as refused:
                await client.put_session_ref(
                    bytes(600 * 1024), lifetime=RefLifetime.UNTIL_EXPLICIT_DROP
                )
            message = str(refused.value)
            assert "max_upload_bytes" in message and str(MIB) in message, message
            assert (await held(client))["bytes_held"] == 600 * 1024
            # Releasing gives the bytes back.
            assert await client.release_session_ref(first.key)
            second = await client.put_session_ref(
                bytes(600 * 1024), lifetime=RefLifetime.UNTIL_EXPLICIT_DROP
            )
            assert await client.release_session_ref(second.key)
    finally:
        assert peer.stop() == 0, peer.stderr()


async def test_an_upload_without_the_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BLAZEN_PEER_TOKEN", raising=False)
    peer = start(tmp_path, "--token", "s3cret")
    try:
        async with await PeerClient.connect(peer.address, node_id="intruder") as intruder:
            with pytest.raises(AuthenticationError):
                await intruder.put_session_ref(b"x", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        async with await PeerClient.connect(
            peer.address, node_id="node-a", token="s3cret"
        ) as client:
            counters = await held(client)
            assert counters["bytes_held"] == 0 and counters["refs"] == 0
            ref = await client.put_session_ref(b"ok", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
            assert await client.release_session_ref(ref.key)
    finally:
        assert peer.stop() == 0, peer.stderr()
