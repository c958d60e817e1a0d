"""Streaming runs: `client.stream_sub_workflow(...)` yields the events a step writes
with `ctx.write_event_to_stream`, in order, then the terminal StopEvent. Steps are
the `stream::*` steps of tests/steps_streaming.py and steps_probes.py, in a peer of
this module's own (its stats move only with these tests' runs); `probe::status`
shows what a run did inside the peer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable
from typing import Any

import pytest
from blazen_peer import (
    Event,
    GenericEvent,
    PeerClient,
    PeerTimeoutError,
    StopEvent,
    SubWorkflowResponse,
    WorkflowError,
)
from conftest import new_tag, probe_state, probe_status, wait_for_probe, wait_started
from stream_events import Blob, Progress

STREAM_DEADLINE_SECS = 15.0


async def collect(events: AsyncIterable[Event], into: list[Event] | None = None) -> list[Event]:
    """Every event of a stream, in arrival order (into `into`, when given, as they come)."""
    seen = [] if into is None else into
    async with asyncio.timeout(STREAM_DEADLINE_SECS):
        async for event in events:
            seen.append(event)
    return seen


def epochs(events: list[Event]) -> list[int]:
    assert all(type(event) is Progress for event in events), [type(e) for e in events]
    return [event.epoch for event in events if isinstance(event, Progress)]


def cancelled_counter(status: dict[str, Any]) -> int:
    count: int = status["stats"]["runs_cancelled"]
    return count


# --- what a stream yields ---


@pytest.mark.parametrize("count", [0, 1, 200])
async def test_a_stream_yields_the_written_events_in_order_then_the_stop_event(
    module_client: PeerClient, count: int
) -> None:
    stream = module_client.stream_sub_workflow("progress", ["stream::progress"], {"n": count})
    events = await collect(stream)
    assert len(events) == count + 1
    *written, last = events
    assert epochs(written) == list(range(count))
    assert type(last) is StopEvent
    assert last.result == {"written": count}
    response = stream.response
    assert isinstance(response, SubWorkflowResponse)
    assert response.result == {"written": count}
    assert response.state == {"epochs": count}
    assert response.error is None
    assert response.remote_refs == {}


async def test_a_sync_step_streams_its_events_in_order(module_client: PeerClient) -> None:
    # 300 events is more than the stream buffer holds: the step's writes block on a
    # full buffer while this side reads, and resume.
    stream = module_client.stream_sub_workflow("sync", ["stream::sync_progress"], {"n": 300})
    *written, last = await collect(stream)
    assert epochs(written) == list(range(300))
    assert isinstance(last, StopEvent)
    assert last.result == {"written": 300, "on_main_thread": False}
    assert stream.response is not None
    assert stream.response.result == last.result


async def test_an_event_type_this_process_does_not_know_arrives_as_generic_event(
    module_client: PeerClient,
) -> None:
    first, last = await collect(module_client.stream_sub_workflow("x", ["stream::peer_only"]))
    assert type(first) is GenericEvent
    assert first.event_type == "tests.PeerOnly"
    assert first.data == {"note": "only the peer knows", "values": [1, 2, 3]}
    # Its fields are attributes too, as StartEvent's input keys are.
    assert first.note == "only the peer knows"
    assert first.values == [1, 2, 3]
    assert isinstance(last, StopEvent)
    assert last.result == "sent"


async def test_a_step_failing_mid_stream_yields_the_events_written_before_then_raises(
    module_client: PeerClient,
) -> None:
    seen: list[Event] = []
    stream = module_client.stream_sub_workflow(
        "fails", ["stream::fail_after"], {"k": 3, "then": "raise"}
    )
    with pytest.raises(WorkflowError) as excinfo:
        await collect(stream, into=seen)
    assert epochs(seen) == [0, 1, 2]
    err = excinfo.value
    assert type(err) is WorkflowError
    assert err.failure_kind == "StepFailed"
    assert err.remote_type == "RuntimeError"
    assert err.step_id == "stream::fail_after"
    assert "failed after 3 events" in str(err)


async def test_a_stream_past_its_deadline_yields_the_events_then_raises_peer_timeout_error(
    module_client: PeerClient,
) -> None:
    seen: list[Event] = []
    stream = module_client.stream_sub_workflow(
        "slow", ["stream::fail_after"], {"k": 2, "then": "sleep"}, timeout_secs=1
    )
    started = time.monotonic()
    with pytest.raises(PeerTimeoutError):
        await collect(stream, into=seen)
    elapsed = time.monotonic() - started
    assert epochs(seen) == [0, 1]
    # Not before the deadline (a lower bound only grows on a loaded machine); the step
    # sleeps 60 s after its events, so the PeerTimeoutError is the deadline's.
    assert elapsed > 0.9, elapsed


async def test_events_written_in_a_run_that_is_not_streamed_are_discarded(
    module_client: PeerClient,
) -> None:
    # More events than the stream buffer holds: were they kept, the step would block.
    async with asyncio.timeout(STREAM_DEADLINE_SECS):
        response = await module_client.invoke_sub_workflow(
            "plain", ["stream::progress"], {"n": 500}
        )
    assert response.result == {"written": 500}
    assert response.state == {"epochs": 500}


# --- ending a stream early cancels the run ---


def endless(tag: str) -> dict[str, Any]:
    """Input of `stream::produce` for a run that never finishes by itself."""
    return {"tag": tag, "count": 10**9, "size": 16}


async def wait_cancelled(
    probe_client: PeerClient, tag: str, before: dict[str, Any]
) -> dict[str, Any]:
    status = await wait_for_probe(
        probe_client,
        tag,
        lambda s: (
            probe_state(s) == "cancelled"
            and s["ref_held"] is False
            and cancelled_counter(s) > cancelled_counter(before)
        ),
        "the producer records 'cancelled', its ref is purged and runs_cancelled grows",
    )
    assert cancelled_counter(status) == cancelled_counter(before) + 1
    assert status["stats"]["runs_in_flight"] == 1, status  # only the probe reporting it
    return status


async def test_breaking_out_of_the_loop_cancels_the_run(
    module_client: PeerClient, probe_client: PeerClient
) -> None:
    tag = new_tag()
    before = await probe_status(probe_client, tag)
    seen: list[int] = []
    # The stream is referenced only by the loop: breaking out drops it.
    async for event in module_client.stream_sub_workflow(
        "produce", ["stream::produce"], endless(tag)
    ):
        assert isinstance(event, Blob)
        seen.append(event.index)
        if len(seen) == 3:
            break
    assert seen == [0, 1, 2]
    await wait_cancelled(probe_client, tag, before)


async def test_aclose_cancels_an_unfinished_run(
    module_client: PeerClient, probe_client: PeerClient
) -> None:
    tag = new_tag()
    before = await probe_status(probe_client, tag)
    stream = module_client.stream_sub_workflow("produce", ["stream::produce"], endless(tag))
    events = aiter(stream)
    # Blob payloads are the index, zero-padded to 8 digits, then "x" up to `size` (16).
    assert [await anext(events), await anext(events)] == [
        Blob(index=0, payload="00000000xxxxxxxx"),
        Blob(index=1, payload="00000001xxxxxxxx"),
    ]
    await wait_started(probe_client, tag)
    await stream.aclose()
    await wait_cancelled(probe_client, tag, before)


async def test_leaving_async_with_cancels_an_unfinished_run(
    module_client: PeerClient, probe_client: PeerClient
) -> None:
    tag = new_tag()
    before = await probe_status(probe_client, tag)
    async with module_client.stream_sub_workflow(
        "produce", ["stream::produce"], endless(tag)
    ) as stream:
        events = aiter(stream)  # stays referenced after the block
        first = await anext(events)
        assert isinstance(first, Blob) and first.index == 0
    await wait_cancelled(probe_client, tag, before)
    del events


async def test_leaving_async_with_after_the_last_event_cancels_nothing(
    module_client: PeerClient, probe_client: PeerClient
) -> None:
    tag = new_tag()
    before = await probe_status(probe_client, tag)
    async with module_client.stream_sub_workflow(
        "produce", ["stream::produce"], {"tag": tag, "count": 5, "size": 16}
    ) as stream:
        events = await collect(stream)
    assert [e.index for e in events if isinstance(e, Blob)] == [0, 1, 2, 3, 4]
    assert isinstance(events[-1], StopEvent) and len(events) == 6
    assert stream.response is not None
    assert stream.response.result == {"written": 5}
    status = await wait_for_probe(
        probe_client,
        tag,
        lambda s: s["stats"]["runs_succeeded"] >= before["stats"]["runs_succeeded"] + 2,
        "the stream's run (and the first probe) counted as succeeded",
    )
    assert probe_state(status) == "finished"
    assert status["ref_held"] is False
    assert cancelled_counter(status) == cancelled_counter(before)


# --- back-pressure ---

BLOB_BYTES = 256 * 1024
BLOBS = 1200
"""300 MiB in all: far more than the peer may hold at once."""
STREAM_BUFFER_EVENTS = 64
"""Events a streaming run buffers before `write_event_to_stream` holds the step."""
HTTP2_WINDOW_BYTES = 32 * 1024 * 1024
"""The largest HTTP/2 window (the connection's; a stream's is 8 MiB): bytes the peer may
send before this side has read them."""
AHEAD_BOUND = STREAM_BUFFER_EVENTS + HTTP2_WINDOW_BYTES // BLOB_BYTES + 8
"""How many events the producer may have written beyond those consumed: the buffer, the
window's worth in flight (128), and 8 for events being encoded, decoded or handed over."""
RSS_GROWTH_LIMIT = 128 * 1024 * 1024
"""The peer's allowed growth: the buffer (16 MiB) and the window (32 MiB), each possibly
held twice (object and encoded), with allocator slack. Without back-pressure the peer
would hold most of the 300 MiB produced (several times over, encoded)."""


@pytest.mark.parametrize(
    ("step_id", "ended_state"),
    [
        pytest.param("stream::produce", "cancelled", id="async-step"),
        pytest.param("stream::produce_sync", "stopped", id="sync-step"),
    ],
)
async def test_a_slow_consumer_holds_back_the_producer(
    module_client: PeerClient, probe_client: PeerClient, step_id: str, ended_state: str
) -> None:
    tag = new_tag()
    baseline_rss: int = (await probe_status(probe_client, tag))["rss_bytes"]
    peak_rss = baseline_rss
    consumed = 0

    async def produced_so_far() -> int:
        nonlocal peak_rss
        status = await probe_status(probe_client, tag)
        produced: int = status["produced"] or 0
        peak_rss = max(peak_rss, status["rss_bytes"])
        assert produced <= consumed + AHEAD_BOUND, (
            f"the producer wrote {produced} events while {consumed} were consumed "
            f"(at most {AHEAD_BOUND} may be buffered or in flight)"
        )
        return produced

    stream = module_client.stream_sub_workflow(
        "produce", [step_id], {"tag": tag, "count": BLOBS, "size": BLOB_BYTES}
    )
    events = aiter(stream)
    try:
        async with asyncio.timeout(STREAM_DEADLINE_SECS):
            first = await anext(events)
            consumed = 1
            assert isinstance(first, Blob)
            assert first.index == 0 and len(first.payload) == BLOB_BYTES
            # The consumer stalls; the producer must stop too. Wait until its count has
            # not moved for 0.5 s (every poll checks the bound).
            last, last_change = -1, time.monotonic()
            while time.monotonic() - last_change < 0.5:
                produced = await produced_so_far()
                if produced != last:
                    last, last_change = produced, time.monotonic()
                await asyncio.sleep(0.02)
            stalled_at = last
            # Then it reads slowly, and the producer keeps pace within the bound.
            for _ in range(300):
                event = await anext(events)
                assert isinstance(event, Blob) and event.index == consumed
                consumed += 1
                await asyncio.sleep(0.001)
                if consumed % 25 == 0:
                    produced = await produced_so_far()
            assert produced > stalled_at, "the producer did not resume when reading resumed"
    finally:
        await stream.aclose()
    growth = peak_rss - baseline_rss
    assert growth < RSS_GROWTH_LIMIT, (
        f"the peer's RSS grew by {growth / 2**20:.0f} MiB while it produced "
        f"{produced * BLOB_BYTES / 2**20:.0f} MiB"
    )
    await wait_for_probe(
        probe_client,
        tag,
        lambda s: probe_state(s) == ended_state and s["ref_held"] is False,
        f"the producer records {ended_state!r} after aclose() and its ref is purged",
    )
