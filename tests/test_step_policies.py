"""Per-step limits as the engine defines them (max_concurrency, timeout_secs,
retries), on a peer in another process (tests/policy_peer.py) and in local runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from blazen_peer import (
    Context,
    PeerClient,
    PeerTimeoutError,
    Retry,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    register_step,
)
from conftest import POLICY_PEER, PeerProcess, start_peer_process

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def policy_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    peer = start_peer_process(tmp_path_factory.mktemp("policy") / "stderr.txt", script=POLICY_PEER)
    yield peer
    assert peer.stop() == 0, peer.stderr()


@pytest.fixture
async def policy_client(policy_peer: PeerProcess) -> AsyncIterator[PeerClient]:
    client = await PeerClient.connect(policy_peer.address, node_id="parent")
    yield client
    await client.close()


async def test_ten_concurrent_runs_never_overlap_more_than_the_limit(
    policy_client: PeerClient,
) -> None:
    total = 10
    peaks = await asyncio.gather(
        *(
            policy_client.run_remote_workflow("pair", ["policy::pair"], {"total": total})
            for _ in range(total)
        )
    )
    report = await policy_client.run_remote_workflow("report", ["policy::report"], {})
    # Measured inside the step, across all ten runs: the limit was reached, never passed.
    assert report["peak"] == 2, report
    assert max(peaks) == 2
    assert report["entered"] == total


async def test_list_steps_reports_the_limit_and_its_use(policy_client: PeerClient) -> None:
    stream = policy_client.stream_sub_workflow("held", ["policy::held"], {})
    async with stream:
        entered = await anext(stream)
        assert entered.event_type == "policy.Entered"  # type: ignore[attr-defined]
        listing = await policy_client.list_steps()
        held = next(step for step in listing.steps if step.id == "policy::held")
        assert (held.max_concurrency, held.in_use) == (1, 1)
        hangs = next(step for step in listing.steps if step.id == "policy::hangs")
        assert (hangs.max_concurrency, hangs.timeout_secs) == (None, 1.0)
        flaky = next(step for step in listing.steps if step.id == "policy::flaky")
        assert flaky.attempts == 3
        plain = next(step for step in listing.steps if step.id == "policy::report")
        assert (plain.max_concurrency, plain.timeout_secs, plain.attempts) == (None, None, 1)
        await policy_client.run_remote_workflow("release", ["policy::release"], {})
        rest = [event async for event in stream]
    assert rest[-1].result == "released"
    listing = await policy_client.list_steps()
    held = next(step for step in listing.steps if step.id == "policy::held")
    assert held.in_use == 0


async def test_a_run_waiting_for_a_slot_is_bounded_by_its_own_deadline(
    policy_client: PeerClient,
) -> None:
    stream = policy_client.stream_sub_workflow("held", ["policy::held"], {})
    async with stream:
        entered = await anext(stream)  # the only slot is taken
        assert entered.event_type == "policy.Entered"  # type: ignore[attr-defined]
        with pytest.raises(PeerTimeoutError) as caught:
            await policy_client.run_remote_workflow("held", ["policy::held"], {}, timeout_secs=1)
        assert caught.value.failure_kind == "Timeout"
        await policy_client.run_remote_workflow("release", ["policy::release"], {})
        rest = [event async for event in stream]
    assert rest[-1].result == "released"  # type: ignore[attr-defined]


async def test_an_async_step_past_its_timeout_is_cancelled_and_named(
    policy_client: PeerClient,
) -> None:
    with pytest.raises(WorkflowError) as caught:
        await policy_client.run_remote_workflow("hangs", ["policy::hangs"], {})
    err = caught.value
    assert err.failure_kind == "StepTimeout"
    assert err.step_id == "policy::hangs"
    assert "policy::hangs" in str(err) and "1s timeout" in str(err)
    report = await policy_client.run_remote_workflow("report", ["policy::report"], {})
    assert report["async_cancelled"] is True


async def test_a_def_step_past_its_timeout_sees_cancelled_and_the_run_fails(
    policy_client: PeerClient,
) -> None:
    with pytest.raises(WorkflowError) as caught:
        await policy_client.run_remote_workflow("hangs", ["policy::hangs_def"], {})
    assert caught.value.failure_kind == "StepTimeout"
    assert caught.value.step_id == "policy::hangs_def"
    report = await policy_client.run_remote_workflow(
        "report", ["policy::report"], {"wait_def_cancel": True}
    )
    assert report == {"def_saw_cancel": True}


async def test_a_timed_out_def_step_keeps_its_slot_until_its_thread_returns(
    policy_client: PeerClient,
) -> None:
    with pytest.raises(WorkflowError) as caught:
        await policy_client.run_remote_workflow("stubborn", ["policy::stubborn"], {"wait": True})
    assert caught.value.failure_kind == "StepTimeout"
    # The run failed, but its thread still runs the step: the slot is still taken.
    listing = await policy_client.list_steps()
    (stubborn,) = [step for step in listing.steps if step.id == "policy::stubborn"]
    assert (stubborn.max_concurrency, stubborn.in_use) == (1, 1)
    after = asyncio.ensure_future(
        policy_client.run_remote_workflow("stubborn", ["policy::stubborn"], {})
    )
    await policy_client.run_remote_workflow("unblock", ["policy::unblock"], {})
    seen = await after
    # Measured inside the step: the second call ran only once the first had returned.
    assert seen["peak"] == 1, seen


async def test_retries_run_the_stated_attempts(policy_client: PeerClient) -> None:
    succeeded = await policy_client.run_remote_workflow(
        "flaky",
        ["policy::flaky"],
        {"key": "third-time", "succeed_on": 3, "error": "ConnectionError"},
    )
    assert succeeded == 3
    with pytest.raises(WorkflowError) as caught:
        await policy_client.run_remote_workflow(
            "flaky",
            ["policy::flaky"],
            {"key": "never", "succeed_on": 99, "error": "ConnectionError"},
        )
    assert "after 3 attempts" in str(caught.value)
    assert caught.value.remote_type == "ConnectionError"
    # A ValueError is not among the policy's types: one attempt, no retry.
    with pytest.raises(WorkflowError) as caught:
        await policy_client.run_remote_workflow(
            "flaky",
            ["policy::flaky"],
            {"key": "wrong-type", "succeed_on": 99, "error": "ValueError"},
        )
    assert "attempts" not in str(caught.value)
    report = await policy_client.run_remote_workflow("report", ["policy::report"], {})
    assert report["attempts"] == {"third-time": 3, "never": 3, "wrong-type": 1}


def test_each_retry_is_logged_by_the_peer(policy_peer: PeerProcess) -> None:
    # Written by the tests above; the peer logs WARNING and up to its stderr.
    assert "failed on attempt 1 of 3" in policy_peer.stderr()


async def test_retries_and_timeouts_hold_in_local_runs(
    step_ids: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    tried: list[int] = []

    async def sometimes(ctx: Context, ev: StartEvent) -> StopEvent:
        tried.append(len(tried) + 1)
        if len(tried) < 2:
            raise TimeoutError("provider hiccup")
        return StopEvent(result=len(tried))

    flaky_id = step_ids("sometimes")
    register_step(flaky_id, sometimes, retries=Retry(attempts=2, backoff_secs=0))
    with caplog.at_level(logging.WARNING, logger="blazen_peer"):
        assert await (await Workflow("local", [flaky_id]).run()) == 2
    assert tried == [1, 2]
    assert any("attempt 1 of 2" in record.getMessage() for record in caplog.records)

    async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
        await asyncio.Event().wait()
        return StopEvent(result=None)

    slow_id = step_ids("forever")
    register_step(slow_id, forever, timeout_secs=0.2)
    with pytest.raises(WorkflowError) as caught:
        await (await Workflow("local", [slow_id]).run())
    assert caught.value.failure_kind == "StepTimeout"
    assert caught.value.step_id == slow_id


def test_limits_are_checked_when_the_step_is_registered(step_ids: Callable[[str], str]) -> None:

    def plain(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=None)

    with pytest.raises(ValidationError, match="max_concurrency must be at least 1"):
        register_step(step_ids("zero"), plain, max_concurrency=0)
    with pytest.raises(ValidationError, match="attempts"):
        register_step(step_ids("none"), plain, retries=Retry(attempts=0))
    with pytest.raises(ValidationError, match="exception classes"):
        Retry(on=("ConnectionError",))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="timeout_secs"):
        register_step(step_ids("neg"), plain, timeout_secs=-1)


def test_the_retry_defaults_are_the_cores() -> None:
    from blazen_peer import _native

    retry = Retry()
    assert retry.backoff_secs == _native.DEFAULT_RETRY_BACKOFF_SECS
    assert retry.multiplier == _native.DEFAULT_RETRY_MULTIPLIER
    assert retry.max_backoff_secs == _native.DEFAULT_RETRY_MAX_BACKOFF_SECS
