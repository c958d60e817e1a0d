"""The blocking API: every async call of PeerClient and PeerPool has a ``*_blocking``
twin for code without an event loop (scripts, threads, notebooks' sync cells), and
``with client.parent_run()`` scopes refs as ``async with`` does.

The tests here are plain ``def`` functions: pytest runs them with no event loop,
as a script would. The peers are tests/peer_app.py processes (see conftest.py).
Ctrl-C on the blocking calls and streams is tested in test_cancellation.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ref_support
from blazen_peer import (
    PeerClient,
    PeerPool,
    RefNotFoundError,
    StopEvent,
    SubWorkflowBlockingStream,
    SubWorkflowResponse,
    UnknownStepError,
    ValidationError,
    WorkflowError,
)
from conftest import PeerProcess
from stream_events import Progress

README_STEPS = ["my_app::analyze", "my_app::summarize"]
README_RESULT = {"words": 4, "summary": "the quick brown fox"}
LEASE_SECS = 1.0


def item(seed: int, size: int, lifetime: str) -> dict[str, Any]:
    return {"seed": seed, "size": size, "lifetime": lifetime}


def make_refs(client: PeerClient | PeerPool, *items: dict[str, Any]) -> list[uuid.UUID]:
    """Runs `refs::make` (blocking); the keys of the refs it inserted, in order."""
    response = client.invoke_sub_workflow_blocking("refs", ["refs::make"], {"items": list(items)})
    response.raise_for_error()
    return [uuid.UUID(ref["key"]) for ref in response.result["refs"]]


def registry_keys(client: PeerClient) -> list[str]:
    """Keys the peer's registry holds (listing renews no lease)."""
    listed: dict[str, Any] = client.run_remote_workflow_blocking("refs", ["refs::registry"])
    return list(listed["keys"])


@pytest.fixture
def blocking_client(peer_address: str) -> Iterator[PeerClient]:
    with PeerClient.connect_blocking(peer_address, node_id="node-a") as client:
        yield client


@pytest.fixture
def blocking_pool(peer_address: str) -> Iterator[PeerPool]:
    with PeerPool.connect_blocking([peer_address], node_id="node-a") as pool:
        pool.wait_for_healthy_blocking(1, timeout_secs=10)
        yield pool


# --- completeness ---


@pytest.mark.parametrize("cls", [PeerClient, PeerPool])
def test_every_async_call_has_a_blocking_twin(cls: type[Any]) -> None:
    asynchronous = [
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    ]
    # stream_sub_workflow returns an async iterator instead of being a coroutine function.
    asynchronous.append("stream_sub_workflow")
    missing = [name for name in asynchronous if not hasattr(cls, f"{name}_blocking")]
    assert not missing, f"{cls.__name__} has no *_blocking twin of {missing}"
    assert hasattr(cls, "__enter__") and hasattr(cls, "__exit__")


# --- PeerClient ---


def test_list_steps_and_health_blocking(blocking_client: PeerClient) -> None:
    steps = blocking_client.list_steps_blocking()
    assert steps.node_id == "node-b"
    assert set(README_STEPS) <= steps.step_ids
    assert steps.can_run("analyze-pipeline", [])
    assert blocking_client.health_blocking() == "SERVING"
    assert blocking_client.health_blocking("no.such.Service") == "SERVICE_UNKNOWN"


def test_stream_blocking_yields_events_in_order_then_the_stop_event(
    blocking_client: PeerClient,
) -> None:
    with blocking_client.stream_sub_workflow_blocking(
        "stream", ["stream::progress"], {"n": 100}
    ) as stream:
        assert isinstance(stream, SubWorkflowBlockingStream)
        events = list(stream)
    assert events[:-1] == [Progress(epoch=epoch) for epoch in range(100)]
    assert events[-1] == StopEvent(result={"written": 100})
    assert isinstance(stream.response, SubWorkflowResponse)
    assert stream.response.state == {"epochs": 100}
    assert repr(stream) == "SubWorkflowBlockingStream(finished)"
    assert list(stream) == []


def test_stream_blocking_of_a_failing_run_raises_after_its_events(
    blocking_client: PeerClient,
) -> None:
    seen = []
    stream = blocking_client.stream_sub_workflow_blocking(
        "fails", ["stream::fail_after"], {"k": 3, "then": "raise"}
    )
    assert repr(stream) == "SubWorkflowBlockingStream(not started)"
    with pytest.raises(WorkflowError, match="failed after 3 events"):
        for event in stream:
            seen.append(event)
    assert seen == [Progress(epoch=0), Progress(epoch=1), Progress(epoch=2)]


def test_stream_blocking_closed_early_stops_yielding(blocking_client: PeerClient) -> None:
    with blocking_client.stream_sub_workflow_blocking(
        "slow", ["stream::fail_after"], {"k": 1, "then": "sleep"}
    ) as stream:
        assert next(stream) == Progress(epoch=0)
    # Leaving the block cancelled the run (it would sleep 60 s): nothing more comes.
    began = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - began < 1
    assert stream.response is None
    # The client keeps working.
    assert blocking_client.run_remote_workflow_blocking(
        "p", README_STEPS, {"document": "the quick brown fox"}
    ) == (README_RESULT)


def test_session_refs_blocking_within_a_blocking_parent_run(blocking_client: PeerClient) -> None:
    client = blocking_client
    with client.parent_run() as run:
        parent, explicit = make_refs(
            client, item(1, 3000, "UNTIL_PARENT_FINISH"), item(2, 5000, "UNTIL_EXPLICIT_DROP")
        )
        assert client.deref_session_ref_blocking(parent) == ref_support.pattern_bytes(1, 3000)
        buffer = bytearray(8000)
        assert client.deref_session_ref_into_blocking(explicit, buffer) == 5000
        assert buffer[:5000] == ref_support.pattern_bytes(2, 5000)
        assert client.fetch_session_ref_blocking(str(explicit)) == ref_support.pattern_bytes(
            2, 5000
        )
        assert run.client is client
    # Leaving the block finished the parent run: its ref is gone, the explicit one stays.
    with pytest.raises(RefNotFoundError):
        client.deref_session_ref_blocking(parent)
    assert client.release_session_ref_blocking(explicit) is True
    assert client.release_session_ref_blocking(explicit) is False
    with pytest.raises(RefNotFoundError):
        client.fetch_session_ref_blocking(explicit)


def test_finish_parent_blocking_returns_how_many_it_released(blocking_client: PeerClient) -> None:
    client = blocking_client
    with client.parent_run() as run:
        keys = make_refs(
            client, item(3, 10, "UNTIL_PARENT_FINISH"), item(4, 10, "UNTIL_PARENT_FINISH")
        )
        assert client.finish_parent_blocking(run.id) == 2
        for key in keys:
            with pytest.raises(RefNotFoundError):
                client.deref_session_ref_blocking(key)
    assert client.finish_parent_blocking(uuid.uuid4()) == 0


def test_a_blocking_parent_run_renews_its_lease(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = spawn_peer("--lease-secs", str(LEASE_SECS))
    with PeerClient.connect_blocking(peer.address, node_id="node-a") as client:
        with client.parent_run():
            (key,) = make_refs(client, item(9, 500, "UNTIL_PARENT_FINISH"))
            inserted_at = time.monotonic()
            while time.monotonic() - inserted_at < 2.5 * LEASE_SECS:
                assert str(key) in registry_keys(client), (
                    f"ref expired {time.monotonic() - inserted_at:.2f}s after insert while "
                    "its blocking parent_run block was renewing the lease"
                )
                time.sleep(0.1)
        assert str(key) not in registry_keys(client)
        # The renewing thread ended with the block.
        assert not [t for t in threading.enumerate() if t.name.startswith("blazen_peer lease")]


async def test_blocking_calls_refuse_to_run_inside_an_event_loop(peer_address: str) -> None:
    async with await PeerClient.connect(peer_address, node_id="node-a") as client:
        key = uuid.uuid4()
        calls: dict[str, Callable[[], object]] = {
            "list_steps": client.list_steps_blocking,
            "health": client.health_blocking,
            "stream_sub_workflow": lambda: client.stream_sub_workflow_blocking("s", ["x"]),
            "deref_session_ref": lambda: client.deref_session_ref_blocking(key),
            "deref_session_ref_into": lambda: client.deref_session_ref_into_blocking(
                key, bytearray(1)
            ),
            "fetch_session_ref": lambda: client.fetch_session_ref_blocking(key),
            "release_session_ref": lambda: client.release_session_ref_blocking(key),
            "finish_parent": lambda: client.finish_parent_blocking(key),
        }
        for name, call in calls.items():
            with pytest.raises(ValidationError, match=rf"use `await client\.{name}\(\.\.\.\)`"):
                call()
        with (
            pytest.raises(ValidationError, match=r"use `async with client\.parent_run\(\)`"),
            client.parent_run(),
        ):
            pass
        # Nothing was left half-done: the client still works.
        assert await client.health() == "SERVING"


# --- PeerPool ---


def test_pool_blocking_calls(blocking_pool: PeerPool) -> None:
    pool = blocking_pool
    document = {"document": "the quick brown fox"}
    assert pool.run_remote_workflow_blocking("p", README_STEPS, document) == README_RESULT
    response = pool.invoke_sub_workflow_blocking("p", README_STEPS, document, timeout_secs=30)
    assert response.result == README_RESULT
    assert response.state == {"language": "en"}
    text = pool.run_remote_workflow_json_blocking("p", README_STEPS, json.dumps(document))
    assert json.loads(text) == README_RESULT
    with pool.stream_sub_workflow_blocking("stream", ["stream::progress"], {"n": 3}) as stream:
        events = list(stream)
    assert events == [*(Progress(epoch=epoch) for epoch in range(3)), StopEvent({"written": 3})]
    assert stream.response is not None and stream.response.state == {"epochs": 3}
    pool.probe_now_blocking()
    assert [member.healthy for member in pool.peers] == [True]
    # A misspelled step is the same typed error as from the async API.
    with pytest.raises(UnknownStepError):
        pool.run_remote_workflow_blocking("p", ["my_app::analyse"])


def test_pool_blocking_session_refs(blocking_pool: PeerPool) -> None:
    pool = blocking_pool
    (key,) = make_refs(pool, item(5, 2000, "UNTIL_EXPLICIT_DROP"))
    assert pool.deref_session_ref_blocking(key) == ref_support.pattern_bytes(5, 2000)
    assert pool.fetch_session_ref_blocking(key) == ref_support.pattern_bytes(5, 2000)
    buffer = bytearray(2000)
    assert pool.deref_session_ref_into_blocking(key, buffer) == 2000
    assert buffer == ref_support.pattern_bytes(5, 2000)
    assert pool.release_session_ref_blocking(key) is True


def test_a_closed_blocking_pool_stops_its_loop_and_refuses_calls(peer_address: str) -> None:
    def pool_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "blazen_peer pool"]

    before = len(pool_threads())
    pool = PeerPool.connect_blocking(peer_address, node_id="node-a")
    assert len(pool_threads()) == before + 1
    pool.close_blocking()
    pool.close_blocking()  # idempotent
    assert len(pool_threads()) == before
    with pytest.raises(ValidationError):
        pool.run_remote_workflow_blocking("p", README_STEPS, {"document": "x"})


async def test_blocking_twins_of_an_async_pool_work_from_other_threads(peer_address: str) -> None:
    async with await PeerPool.connect([peer_address], node_id="node-a") as pool:
        await pool.wait_for_healthy(1)
        result = await asyncio.to_thread(
            pool.run_remote_workflow_blocking, "p", README_STEPS, {"document": "a b"}
        )
        assert result == {"words": 2, "summary": "a b"}
        # On the pool's own loop, they refuse (they would block it) and say what to await.
        with pytest.raises(ValidationError, match=r"await pool\.run_remote_workflow\("):
            pool.run_remote_workflow_blocking("p", README_STEPS, {"document": "a b"})
