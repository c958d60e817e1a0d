"""Session refs: values a peer keeps and callers fetch, release or let expire by key.

The peer is tests/peer_app.py in another process (the session's node-b, or one
started for a test with other settings); its `refs::*` steps insert values built
from a seed by `ref_support.pattern_bytes`, so this side checks what it fetched
by rebuilding the same bytes. Nothing here waits on a fixed sleep: the run-ending
tests hold a run open with a gate the test opens, and the lease tests poll the
peer's registry with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import ref_support
from blazen_peer import (
    Context,
    EncodeError,
    MessageTooLargeError,
    PeerClient,
    PeerServer,
    PeerTimeoutError,
    RefInfo,
    RefLifetime,
    RefNotFoundError,
    SessionRefRegistry,
    StartEvent,
    StopEvent,
    SubWorkflowResponse,
    ValidationError,
    Workflow,
    WorkflowError,
    register_ref_codec,
    step,
)
from conftest import TESTS_DIR, PeerProcess, start_peer_process

# The codec the peer registers too (tests/steps_refs.py, at import).
register_ref_codec(
    ref_support.POINT_TAG,
    ref_support.encode_point,
    ref_support.decode_point,
    type=ref_support.Point,
)

WORKFLOW = "refs"
MIB = 1024 * 1024
LEASE_SECS = 1.0
SERVER_LIMIT = 64 * 1024
EXPIRY_DEADLINE_SECS = 6.0
PARENT_CLIENT = TESTS_DIR / "parent_client.py"

OUTLIVING = ("UNTIL_PARENT_FINISH", "UNTIL_EXPLICIT_DROP")
RUNS, BATCH = 10_000, 200


# --- helpers ---


def item(seed: int, size: int, lifetime: str = "DEFAULT") -> dict[str, Any]:
    """One ref for `refs::make`; "DEFAULT" inserts without naming a lifetime."""
    return {"seed": seed, "size": size, "lifetime": lifetime}


async def make_refs(
    client: PeerClient, *items: dict[str, Any], barrier: dict[str, Any] | None = None
) -> tuple[SubWorkflowResponse, list[dict[str, Any]]]:
    """Runs `refs::make`; returns the response and, per item, its key, size and sha256."""
    payload: dict[str, Any] = {"items": list(items)}
    if barrier is not None:
        payload["barrier"] = barrier
    response = await client.invoke_sub_workflow(WORKFLOW, ["refs::make"], payload)
    response.raise_for_error()
    return response, response.result["refs"]


async def make_value(client: PeerClient, kind: str, **extra: Any) -> tuple[uuid.UUID, str]:
    """Runs `refs::make_value`; returns the key and the type tag the response lists."""
    response = await client.invoke_sub_workflow(
        WORKFLOW, ["refs::make_value"], {"kind": kind, **extra}
    )
    response.raise_for_error()
    key = uuid.UUID(response.result)
    assert set(response.remote_refs) == {key}
    return key, response.remote_refs[key].type_tag


async def peer_registry(client: PeerClient) -> dict[str, Any]:
    """The peer's registry: count, total_bytes, keys (listing renews no lease), lease_secs."""
    result: dict[str, Any] = await client.run_remote_workflow(WORKFLOW, ["refs::registry"])
    return result


async def assert_gone(client: PeerClient, key: uuid.UUID | str) -> None:
    with pytest.raises(RefNotFoundError) as info:
        await client.deref_session_ref(key)
    assert str(key) in str(info.value)


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


async def start_gated_run(
    client: PeerClient,
    tag: str,
    lifetimes: list[str],
    then: str,
    timeout_secs: float | None = None,
) -> tuple[asyncio.Task[SubWorkflowResponse], dict[str, str]]:
    """Starts `refs::gated` and returns it with its keys once it inserted them,
    after checking every one of them can be fetched while the run is still going."""
    run = asyncio.create_task(
        client.invoke_sub_workflow(
            WORKFLOW,
            ["refs::gated"],
            {"tag": tag, "lifetimes": lifetimes, "then": then},
            timeout_secs=timeout_secs,
        )
    )
    keys: dict[str, str] = await client.run_remote_workflow(
        WORKFLOW, ["refs::recorded"], {"tag": tag}
    )
    assert sorted(keys) == sorted(lifetimes)
    for seed, lifetime in enumerate(lifetimes):
        assert await client.deref_session_ref(keys[lifetime]) == ref_support.pattern_bytes(seed, 64)
    assert not run.done(), "the gated run ended before the test opened its gate"
    return run, keys


async def open_gate(client: PeerClient, tag: str) -> None:
    assert await client.run_remote_workflow(WORKFLOW, ["refs::open_gate"], {"tag": tag}) is True


def assert_descriptor_fresh(created_at_epoch_ms: int) -> None:
    now_ms = time.time() * 1000
    assert abs(now_ms - created_at_epoch_ms) < 60_000, (created_at_epoch_ms, now_ms)


@pytest.fixture(scope="module")
def lease_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """A node-b whose registry leases UNTIL_PARENT_FINISH refs for LEASE_SECS."""
    peer = start_peer_process(
        tmp_path_factory.mktemp("lease-peer") / "stderr.txt", "--lease-secs", str(LEASE_SECS)
    )
    yield peer
    assert peer.stop() == 0, peer.stderr()


@pytest.fixture(scope="module")
def limited_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """A node-b that sends and accepts messages of at most SERVER_LIMIT bytes."""
    peer = start_peer_process(
        tmp_path_factory.mktemp("limited-peer") / "stderr.txt",
        "--max-message-bytes",
        str(SERVER_LIMIT),
    )
    yield peer
    assert peer.stop() == 0, peer.stderr()


@pytest.fixture
async def lease_client(lease_peer: PeerProcess) -> AsyncIterator[PeerClient]:
    lease_peer.check_alive()
    connected = await PeerClient.connect(lease_peer.address, node_id="node-a")
    yield connected
    await connected.close()


@pytest.fixture
async def limited_client(limited_peer: PeerProcess) -> AsyncIterator[PeerClient]:
    limited_peer.check_alive()
    connected = await PeerClient.connect(limited_peer.address, node_id="node-a")
    yield connected
    await connected.close()


# --- lifetimes ---


async def test_default_lifetime_refs_are_purged_when_the_run_succeeds_and_never_listed(
    client: PeerClient,
) -> None:
    tag = uuid.uuid4().hex
    lifetimes = ["DEFAULT", "UNTIL_CONTEXT_DROP", "UNTIL_EXPLICIT_DROP"]
    run, keys = await start_gated_run(client, tag, lifetimes, then="return")
    await open_gate(client, tag)
    response = await run
    assert response.error is None
    assert response.result == keys
    explicit = uuid.UUID(keys["UNTIL_EXPLICIT_DROP"])
    assert set(response.remote_refs) == {explicit}
    await assert_gone(client, keys["DEFAULT"])
    await assert_gone(client, keys["UNTIL_CONTEXT_DROP"])
    assert await client.deref_session_ref(explicit) == ref_support.pattern_bytes(2, 64)
    assert await client.release_session_ref(explicit) is True


async def test_a_run_failing_in_a_step_purges_its_refs(client: PeerClient) -> None:
    tag = uuid.uuid4().hex
    lifetimes = ["DEFAULT", "UNTIL_CONTEXT_DROP", *OUTLIVING]
    run, keys = await start_gated_run(client, tag, lifetimes, then="raise")
    await open_gate(client, tag)
    response = await run
    assert response.error is not None and "fails on purpose" in response.error
    assert response.remote_refs == {}
    with pytest.raises(WorkflowError, match="fails on purpose"):
        response.raise_for_error()
    for key in keys.values():
        await assert_gone(client, key)


async def test_a_run_passing_its_deadline_purges_its_refs(client: PeerClient) -> None:
    tag = uuid.uuid4().hex
    lifetimes = ["DEFAULT", "UNTIL_CONTEXT_DROP", *OUTLIVING]
    # The gate is never opened: the run sits in its step until the peer's deadline.
    run, keys = await start_gated_run(client, tag, lifetimes, then="return", timeout_secs=2)
    with pytest.raises(PeerTimeoutError):
        await run
    for key in keys.values():
        await assert_gone(client, key)


async def test_parent_finish_refs_are_listed_and_live_until_the_parent_run_block_exits(
    client: PeerClient,
) -> None:
    async with client.parent_run() as run:
        response, refs = await make_refs(
            client,
            item(1, 100, "UNTIL_PARENT_FINISH"),
            item(2, 100, "UNTIL_PARENT_FINISH"),
            item(3, 100, "UNTIL_EXPLICIT_DROP"),
            item(4, 100),
        )
        parent_a, parent_b, explicit, default = (uuid.UUID(ref["key"]) for ref in refs)
        assert set(response.remote_refs) == {parent_a, parent_b, explicit}
        await assert_gone(client, default)
        # Other calls in the block leave them alone.
        echoed = await client.run_remote_workflow("echo", ["test::echo"], "still inside")
        assert echoed["data"] == "still inside"
        assert await client.deref_session_ref(parent_a) == ref_support.pattern_bytes(1, 100)
        assert await client.deref_session_ref(parent_b) == ref_support.pattern_bytes(2, 100)
        # Released early: gone at once, and a second release says so.
        assert await client.release_session_ref(parent_b) is True
        assert await client.release_session_ref(parent_b) is False
        await assert_gone(client, parent_b)
        assert run.client is client
    await assert_gone(client, parent_a)
    # UNTIL_EXPLICIT_DROP made inside the block outlives it.
    assert await client.deref_session_ref(explicit) == ref_support.pattern_bytes(3, 100)
    assert await client.release_session_ref(explicit) is True


async def test_finish_parent_releases_only_that_parents_refs(client: PeerClient) -> None:
    async with client.parent_run() as outer:
        _, refs = await make_refs(
            client, item(1, 10, "UNTIL_PARENT_FINISH"), item(2, 10, "UNTIL_PARENT_FINISH")
        )
        async with client.parent_run() as inner:
            assert inner.id != outer.id
            _, inner_refs = await make_refs(client, item(3, 10, "UNTIL_PARENT_FINISH"))
            inner_key = inner_refs[0]["key"]
            assert await client.finish_parent(outer.id) == 2
            for ref in refs:
                await assert_gone(client, ref["key"])
            assert await client.deref_session_ref(inner_key) == ref_support.pattern_bytes(3, 10)
            assert await client.finish_parent(outer.id) == 0
        await assert_gone(client, inner_key)
    assert await client.finish_parent(uuid.uuid4()) == 0


async def test_parent_runs_on_two_peers_at_once_each_tag_their_own_calls(
    client: PeerClient,
) -> None:
    """An orchestrator holding a parent run on each of two peers (here: two clients of
    node-b). ParentRun's contract: every call of `client` inside its block carries its id."""
    other_client = await PeerClient.connect(client.address, node_id="node-c")
    key = None
    try:
        async with client.parent_run() as run, other_client.parent_run() as other_run:
            assert run.id != other_run.id
            _, refs = await make_refs(client, item(1, 10, "UNTIL_PARENT_FINISH"))
            key = refs[0]["key"]
            _, other_refs = await make_refs(other_client, item(2, 10, "UNTIL_PARENT_FINISH"))
            other_key = other_refs[0]["key"]
            assert await client.deref_session_ref(key) == ref_support.pattern_bytes(1, 10)
        # Leaving both blocks finished both parent runs, releasing both refs.
        await assert_gone(client, other_key)
        await assert_gone(client, key)
    finally:
        if key is not None:
            await client.release_session_ref(key)
        await other_client.close()


async def test_explicit_drop_refs_live_until_released(client: PeerClient) -> None:
    response, refs = await make_refs(client, item(5, 1000, "UNTIL_EXPLICIT_DROP"))
    key = uuid.UUID(refs[0]["key"])
    assert set(response.remote_refs) == {key}
    descriptor = response.remote_refs[key]
    assert descriptor.origin_node_id == "node-b"
    assert descriptor.type_tag == "bytes"
    assert_descriptor_fresh(descriptor.created_at_epoch_ms)
    # A parent run starting and finishing, and other runs, leave it alone.
    async with client.parent_run() as run:
        await make_refs(client, item(6, 10, "UNTIL_PARENT_FINISH"))
    assert await client.finish_parent(run.id) == 0
    await make_refs(client, item(7, 10))
    for _ in range(2):
        assert await client.deref_session_ref(key) == ref_support.pattern_bytes(5, 1000)
    assert await client.release_session_ref(key) is True
    assert await client.release_session_ref(key) is False
    await assert_gone(client, key)


async def test_unknown_keys_are_not_found_and_not_released(client: PeerClient) -> None:
    key = uuid.uuid4()
    await assert_gone(client, key)
    with pytest.raises(LookupError):
        await client.fetch_session_ref(key)
    assert await client.release_session_ref(key) is False


async def test_remote_refs_hold_exactly_this_runs_outliving_refs(client: PeerClient) -> None:
    barrier = {"name": uuid.uuid4().hex, "parties": 2}

    def items(base: int) -> list[dict[str, Any]]:
        return [
            item(base, 10),
            item(base + 1, 10, "UNTIL_CONTEXT_DROP"),
            item(base + 2, 10, "UNTIL_PARENT_FINISH"),
            item(base + 3, 10, "UNTIL_EXPLICIT_DROP"),
            item(base + 4, 10, "UNTIL_EXPLICIT_DROP"),
        ]

    # Both runs are alive at once (each waits at the barrier for the other).
    (first, first_refs), (second, second_refs) = await asyncio.gather(
        make_refs(client, *items(100), barrier=barrier),
        make_refs(client, *items(200), barrier=barrier),
    )
    assert first.result["run_id"] != second.result["run_id"]
    for response, refs in ((first, first_refs), (second, second_refs)):
        keys = [uuid.UUID(ref["key"]) for ref in refs]
        assert set(response.remote_refs) == set(keys[2:])
        for key in keys[2:]:
            descriptor = response.remote_refs[key]
            assert descriptor.origin_node_id == "node-b"
            assert descriptor.type_tag == "bytes"
            assert_descriptor_fresh(descriptor.created_at_epoch_ms)
        for key in keys[:2]:
            await assert_gone(client, key)
        for key in keys[2:]:
            assert await client.release_session_ref(key) is True
    assert not set(first.remote_refs) & set(second.remote_refs)


# --- values: sizes, codecs ---


@pytest.mark.parametrize(
    "size", [0, 1, 4 * MIB + 1, 256 * MIB], ids=["0B", "1B", "4MiB+1B", "256MiB"]
)
async def test_deref_returns_values_of_any_size_byte_identical(
    client: PeerClient, size: int
) -> None:
    seed = 1000 + size % 997
    _, refs = await make_refs(client, item(seed, size, "UNTIL_EXPLICIT_DROP"))
    key, peer_sha = refs[0]["key"], refs[0]["sha256"]
    assert refs[0]["size"] == size
    try:
        raw = await client.deref_session_ref(key)
        assert type(raw) is bytes
        assert len(raw) == size
        expected_sha = ref_support.pattern_sha256(seed, size)
        assert peer_sha == expected_sha
        assert sha256(raw) == expected_sha
        del raw
    finally:
        released = await client.release_session_ref(key)
    assert released is True
    assert await client.release_session_ref(key) is False
    await assert_gone(client, key)


async def test_deref_into_fills_a_reused_buffer_and_returns_the_size(
    client: PeerClient,
) -> None:
    sizes = (3 * MIB + 5, 1, 0)
    _, refs = await make_refs(
        client, *(item(40 + n, size, "UNTIL_EXPLICIT_DROP") for n, size in enumerate(sizes))
    )
    buffer = bytearray(b"\xee" * (4 * MIB))
    try:
        for n, (ref, size) in enumerate(zip(refs, sizes, strict=True)):
            assert await client.deref_session_ref_into(ref["key"], buffer) == size
            assert sha256(buffer[:size]) == ref_support.pattern_sha256(40 + n, size)
        # Bytes past the value are left as they were.
        assert buffer[3 * MIB + 5 :] == b"\xee" * (MIB - 5)
        view = memoryview(buffer)[MIB:]
        assert await client.deref_session_ref_into(refs[1]["key"], view) == 1
        assert buffer[MIB : MIB + 1] == ref_support.pattern_bytes(41, 1)
    finally:
        for ref in refs:
            assert await client.release_session_ref(ref["key"]) is True


async def test_deref_into_a_buffer_too_small_or_read_only_says_what_is_needed(
    client: PeerClient,
) -> None:
    size = 2 * MIB
    _, refs = await make_refs(client, item(50, size, "UNTIL_EXPLICIT_DROP"))
    key = refs[0]["key"]
    try:
        small = bytearray(size - 1)
        with pytest.raises(ValidationError) as info:
            await client.deref_session_ref_into(key, small)
        assert f"holds {size} bytes" in str(info.value)
        assert f"room for {size - 1}" in str(info.value)
        with pytest.raises(ValidationError, match="writable, contiguous buffer"):
            await client.deref_session_ref_into(key, b"\0" * size)
        with pytest.raises(ValidationError, match="writable, contiguous buffer"):
            await client.deref_session_ref_into(key, memoryview(bytearray(2 * size))[::2])
        # The buffer is released after a refused fetch: it can be resized again.
        small.extend(b"\0")
        assert await client.deref_session_ref_into(key, small) == size
        assert sha256(small) == ref_support.pattern_sha256(50, size)
    finally:
        assert await client.release_session_ref(key) is True
    with pytest.raises(RefNotFoundError):
        await client.deref_session_ref_into(key, bytearray(size))


async def test_fetch_decodes_bytes_json_and_registered_codecs(client: PeerClient) -> None:
    bytes_key, bytes_tag = await make_value(client, "bytearray")
    assert bytes_tag == "bytes"
    fetched = await client.fetch_session_ref(bytes_key)
    assert type(fetched) is bytes and fetched == b"a mutable buffer"

    value = {"a": [1, 2.5, None, "é"], "b": True, "c": {"nested": "ok"}}
    json_key, json_tag = await make_value(client, "json", value=value)
    assert json_tag == "json"
    assert await client.fetch_session_ref(json_key) == value
    assert await client.deref_session_ref(json_key) == (
        b'{"a":[1,2.5,null,"\xc3\xa9"],"b":true,"c":{"nested":"ok"}}'
    )

    point_key, point_tag = await make_value(client, "point")
    assert point_tag == ref_support.POINT_TAG
    point = await client.fetch_session_ref(point_key)
    assert point == ref_support.Point(3, -4, "pointé")
    assert type(point) is ref_support.Point
    assert await client.deref_session_ref(point_key) == ref_support.encode_point(point)

    for key in (bytes_key, json_key, point_key):
        assert await client.release_session_ref(key) is True


async def test_fetch_of_a_tag_with_no_codec_here_raises_encode_error_naming_it(
    client: PeerClient,
) -> None:
    key, tag = await make_value(client, "peer_only")
    assert tag == ref_support.PEER_ONLY_TAG
    try:
        with pytest.raises(EncodeError) as info:
            await client.fetch_session_ref(key)
        assert ref_support.PEER_ONLY_TAG in str(info.value)
        assert "register_ref_codec" in str(info.value)
        # The raw bytes are still there for whoever knows the format.
        assert await client.deref_session_ref(key) == b"peer-only:kept here"
    finally:
        assert await client.release_session_ref(key) is True


async def test_inserting_an_object_without_a_codec_fails_the_run_saying_to_register_one(
    client: PeerClient,
) -> None:
    before = await peer_registry(client)
    with pytest.raises(WorkflowError) as info:
        await client.run_remote_workflow(WORKFLOW, ["refs::make_value"], {"kind": "unencodable"})
    message = str(info.value)
    assert "register_ref_codec" in message
    assert "Opaque" in message
    assert info.value.step_id == "refs::make_value"
    assert info.value.node_id == "node-b"
    assert (await peer_registry(client))["count"] == before["count"]


# --- concurrency ---


async def test_100_concurrent_derefs_of_one_ref(client: PeerClient) -> None:
    size = 2 * MIB + 3  # three pieces on the wire
    _, refs = await make_refs(client, item(42, size, "UNTIL_EXPLICIT_DROP"))
    key = refs[0]["key"]
    expected = ref_support.pattern_bytes(42, size)
    try:
        results = await asyncio.gather(*(client.deref_session_ref(key) for _ in range(100)))
        assert len(results) == 100
        for raw in results:
            assert raw == expected
    finally:
        assert await client.release_session_ref(key) is True


async def test_100_concurrent_derefs_of_different_refs(client: PeerClient) -> None:
    _, refs = await make_refs(
        client, *(item(seed, 1000 + 37 * seed, "UNTIL_EXPLICIT_DROP") for seed in range(100))
    )
    keys = [ref["key"] for ref in refs]
    assert len(set(keys)) == 100
    try:
        results = await asyncio.gather(*(client.deref_session_ref(key) for key in keys))
        for seed, raw in enumerate(results):
            assert raw == ref_support.pattern_bytes(seed, 1000 + 37 * seed), seed
    finally:
        released = await asyncio.gather(*(client.release_session_ref(key) for key in keys))
    assert released == [True] * 100


# --- one registry shared by a local run and a server ---


async def test_a_registry_shared_by_a_local_run_and_a_server(
    step_ids: Callable[[str], str],
) -> None:
    keep_id = step_ids("keep")

    @step(keep_id)
    async def keep(ctx: Context, ev: StartEvent) -> StopEvent:
        value = bytearray(ev.data.encode())
        await ctx.set("_value", value)
        key = await ctx.session_refs.insert(value, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        assert await ctx.session_refs.get(key) is value
        await ctx.session_refs.insert(b"dropped with the run")  # default lifetime
        return StopEvent(result={"key": str(key), "run_id": ctx.run_id})

    reg = SessionRefRegistry()
    assert len(reg) == 0 and reg.total_bytes == 0 and reg.list() == []
    async with PeerServer("node-local", session_refs=reg) as server:
        assert len(server.session_refs) == 0
        bound = await server.start("127.0.0.1:0")
        handler = await Workflow("local-refs", [keep_id]).run("kept locally", session_refs=reg)
        result = await handler.result()
        key = uuid.UUID(result["key"])
        value = handler.context.get_sync("_value")
        assert result["run_id"] == handler.run_id

        assert len(reg) == 1  # the default-lifetime ref went with the run
        assert len(server.session_refs) == 1  # the server sees the same registry
        assert reg.total_bytes == len(b"kept locally")
        (info,) = reg.list()
        assert isinstance(info, RefInfo)
        assert info.key == key
        assert info.type_tag == "bytes"
        assert info.size == len(b"kept locally")
        assert info.lifetime is RefLifetime.UNTIL_EXPLICIT_DROP
        assert_descriptor_fresh(info.created_at_epoch_ms)
        assert info.owner_run == handler.run_id
        assert info.parent_run is None
        assert reg.get(key) is value
        assert reg.get(str(key)) is value

        async with await PeerClient.connect(f"http://{bound}", node_id="node-a") as remote:
            assert await remote.deref_session_ref(key) == b"kept locally"
            assert await remote.fetch_session_ref(key) == b"kept locally"
            # A remote run on that server stores into the same registry.
            response = await remote.invoke_sub_workflow("remote-refs", [keep_id], "kept remotely")
            response.raise_for_error()
            remote_key = uuid.UUID(response.result["key"])
            assert set(response.remote_refs) == {remote_key}
            assert response.remote_refs[remote_key].origin_node_id == "node-local"
            assert len(reg) == 2
            assert reg.total_bytes == len(b"kept locally") + len(b"kept remotely")
            assert {info.key for info in reg.list()} == {key, remote_key}
            assert reg.get(remote_key) == bytearray(b"kept remotely")

            assert await remote.release_session_ref(key) is True
            assert await remote.release_session_ref(remote_key) is True
        assert len(reg) == 0
        assert reg.total_bytes == 0
        assert reg.get(key) is None
        assert reg.get(key, "gone") == "gone"


def test_server_session_refs_is_the_registry_passed_in() -> None:
    holding = SessionRefRegistry()
    holding.insert(b"one value")
    assert PeerServer("node-local", session_refs=holding).session_refs is holding
    empty = SessionRefRegistry()
    assert PeerServer("node-local", session_refs=empty).session_refs is empty, (
        "an empty registry (falsy: len 0) was replaced by another wrapper"
    )


# --- leases ---


async def spawn_parent_client(address: str) -> tuple[asyncio.subprocess.Process, str, str]:
    """Starts tests/parent_client.py; returns it with the ref key and parent id it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PARENT_CLIENT),
        address,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
    except BaseException:
        proc.kill()
        await proc.communicate()
        raise
    match = re.fullmatch(r"REF (\S+) PARENT (\S+)\n", line)
    if match is None:
        proc.kill()
        _, err = await proc.communicate()
        pytest.fail(f"parent_client.py printed {line!r}; its stderr:\n{err.decode()}")
    return proc, match[1], match[2]


async def sigkill(proc: asyncio.subprocess.Process) -> None:
    """Kills the parent process abruptly: it never leaves its parent_run block."""
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL


async def test_a_crashed_parents_refs_are_freed_when_its_lease_runs_out(
    lease_client: PeerClient,
) -> None:
    assert (await peer_registry(lease_client))["lease_secs"] == LEASE_SECS
    proc, key, _parent = await spawn_parent_client(lease_client.address)
    try:
        assert key in (await peer_registry(lease_client))["keys"]
        assert await lease_client.deref_session_ref(key) == ref_support.pattern_bytes(7, 1000)
    finally:
        await sigkill(proc)
    killed_at = time.monotonic()
    # Poll the registry listing (which renews no lease) until the key is gone.
    while key in (await peer_registry(lease_client))["keys"]:
        assert time.monotonic() - killed_at < EXPIRY_DEADLINE_SECS, (
            f"the crashed parent's ref {key} is still held {EXPIRY_DEADLINE_SECS}s after the "
            f"kill, with a {LEASE_SECS}s lease"
        )
        await asyncio.sleep(0.05)
    await assert_gone(lease_client, key)


async def test_dereferencing_a_crashed_parents_ref_does_not_keep_it_alive(
    lease_client: PeerClient,
) -> None:
    """The brief's observation: poll deref until RefNotFoundError, within a deadline."""
    proc, key, _parent = await spawn_parent_client(lease_client.address)
    await sigkill(proc)
    killed_at = time.monotonic()
    while True:
        try:
            raw = await lease_client.deref_session_ref(key)
        except RefNotFoundError:
            break
        assert raw == ref_support.pattern_bytes(7, 1000)
        assert time.monotonic() - killed_at < EXPIRY_DEADLINE_SECS, (
            f"the crashed parent's ref {key} can still be fetched {EXPIRY_DEADLINE_SECS}s after "
            f"the kill, with a {LEASE_SECS}s lease (each deref renews its lease?)"
        )
        await asyncio.sleep(0.1)
    assert key not in (await peer_registry(lease_client))["keys"]


async def test_a_live_parent_run_keeps_its_refs_past_twice_the_lease(
    lease_client: PeerClient,
) -> None:
    async with lease_client.parent_run():
        _, refs = await make_refs(lease_client, item(9, 500, "UNTIL_PARENT_FINISH"))
        key = refs[0]["key"]
        inserted_at = time.monotonic()
        # Watch through the listing (no renewal): only the block's heartbeat renews it.
        while time.monotonic() - inserted_at < 2.5 * LEASE_SECS:
            assert key in (await peer_registry(lease_client))["keys"], (
                f"ref expired {time.monotonic() - inserted_at:.2f}s after insert, "
                "while its parent_run block was renewing the lease"
            )
            await asyncio.sleep(0.1)
        assert await lease_client.deref_session_ref(key) == ref_support.pattern_bytes(9, 500)
    assert key not in (await peer_registry(lease_client))["keys"]
    await assert_gone(lease_client, key)


# --- many runs ---


async def insert_default(client: PeerClient) -> int:
    count: int = await client.run_remote_workflow(WORKFLOW, ["refs::insert_default"])
    return count


async def test_10000_runs_with_the_default_lifetime_leave_the_registry_empty(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = await asyncio.to_thread(spawn_peer)
    async with await PeerClient.connect(peer.address, node_id="node-a") as client:
        assert (await peer_registry(client))["count"] == 0
        for _ in range(RUNS // BATCH):
            calls = [insert_default(client) for _ in range(BATCH)]
            counts = await asyncio.gather(*calls)
            # Each run saw its own ref in the registry while it ran.
            assert min(counts) >= 1
        after = await peer_registry(client)
    assert after["count"] == 0
    assert after["total_bytes"] == 0
    assert after["keys"] == []


# --- message limits ---


def numbers_in(message: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", message)]


async def test_a_client_limit_refuses_a_large_input_with_size_limit_and_fix(
    peer_address: str,
) -> None:
    async with await PeerClient.connect(
        peer_address, node_id="node-a", max_message_bytes=1024
    ) as small:
        with pytest.raises(MessageTooLargeError) as info:
            await small.run_remote_workflow("echo", ["test::echo"], "x" * 2048)
        message = str(info.value)
        assert "1024" in message
        assert any(n > 2048 for n in numbers_in(message)), message  # the request's size
        assert "max_message_bytes" in message
        assert "PeerClient.connect" in message
        # The client still works for inputs that fit.
        result = await small.run_remote_workflow("echo", ["test::echo"], "small")
        assert result["data"] == "small"


async def test_a_result_over_the_servers_limit_raises_and_the_server_keeps_serving(
    limited_client: PeerClient, limited_peer: PeerProcess
) -> None:
    size = 2 * SERVER_LIMIT
    with pytest.raises(MessageTooLargeError) as info:
        await limited_client.run_remote_workflow(WORKFLOW, ["refs::big_result"], {"size": size})
    message = str(info.value)
    assert str(SERVER_LIMIT) in message
    assert any(n > size for n in numbers_in(message)), message  # the response's size
    assert message.count("max_message_bytes") == 1, f"the fix, stated once: {message}"
    limited_peer.check_alive()
    result = await limited_client.run_remote_workflow("echo", ["test::echo"], "after")
    assert result["data"] == "after"
    fits = await limited_client.run_remote_workflow(
        WORKFLOW, ["refs::big_result"], {"size": SERVER_LIMIT // 2}
    )
    assert fits == "x" * (SERVER_LIMIT // 2)


async def test_a_refused_result_leaves_no_refs_behind(limited_client: PeerClient) -> None:
    """The caller of a refused reply never learns the run's keys, as with a failed run."""
    before = set((await peer_registry(limited_client))["keys"])
    with pytest.raises(MessageTooLargeError):
        await limited_client.run_remote_workflow(
            WORKFLOW, ["refs::big_result"], {"size": 2 * SERVER_LIMIT, "explicit_ref": True}
        )
    leaked = set((await peer_registry(limited_client))["keys"]) - before
    assert not leaked, f"refs of the refused run are still held: {leaked}"


async def test_deref_streams_a_ref_larger_than_the_servers_message_limit(
    limited_client: PeerClient,
) -> None:
    size = 4 * SERVER_LIMIT + 1
    _, refs = await make_refs(limited_client, item(11, size, "UNTIL_EXPLICIT_DROP"))
    key = refs[0]["key"]
    try:
        raw = await limited_client.deref_session_ref(key)
        assert sha256(raw) == ref_support.pattern_sha256(11, size)
    finally:
        assert await limited_client.release_session_ref(key) is True


async def test_deref_streams_a_ref_larger_than_the_clients_message_limit(
    client: PeerClient,
) -> None:
    size = 4 * SERVER_LIMIT + 1
    _, refs = await make_refs(client, item(12, size, "UNTIL_EXPLICIT_DROP"))
    key = refs[0]["key"]
    try:
        async with await PeerClient.connect(
            client.address, node_id="node-a", max_message_bytes=SERVER_LIMIT
        ) as small:
            raw = await small.deref_session_ref(key)
        assert sha256(raw) == ref_support.pattern_sha256(12, size)
    finally:
        assert await client.release_session_ref(key) is True


async def test_a_result_over_the_clients_limit_raises_message_too_large(
    peer_address: str,
) -> None:
    async with await PeerClient.connect(
        peer_address, node_id="node-a", max_message_bytes=4096
    ) as small:
        with pytest.raises(MessageTooLargeError) as info:
            await small.run_remote_workflow(WORKFLOW, ["refs::big_result"], {"size": 8192})
        assert "4096" in str(info.value)
        assert await small.run_remote_workflow(WORKFLOW, ["refs::big_result"], {"size": 10}) == (
            "x" * 10
        )
