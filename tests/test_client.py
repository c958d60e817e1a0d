"""PeerClient against a peer running in another process (tests/peer_app.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from blazen_peer import (
    PeerClient,
    RefNotFoundError,
    RemoteRefDescriptor,
    SubWorkflowResponse,
    TransportError,
    UnknownStepError,
    ValidationError,
    WorkflowError,
)
from conftest import PeerProcess, run_call_peer

README_STEPS = ["my_app::analyze", "my_app::summarize"]
README_RESULT = {"words": 4, "summary": "the quick brown fox"}


# --- the README round trip ---


async def test_invoke_sub_workflow_runs_the_readme_pipeline_on_the_peer(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow(
        workflow_name="analyze-pipeline",
        step_ids=["my_app::analyze", "my_app::summarize"],
        input={"document": "the quick brown fox"},
        timeout_secs=60,
    )
    assert isinstance(response, SubWorkflowResponse)
    assert response.result == README_RESULT
    assert response.state == {"language": "en"}
    assert response.error is None
    assert response.remote_refs == {}
    response.raise_for_error()  # a successful run raises nothing


async def test_summarize_truncates_long_documents_to_40_characters(client: PeerClient) -> None:
    document = "one two three four five six seven eight nine ten eleven"
    result = await client.run_remote_workflow(
        "analyze-pipeline", README_STEPS, {"document": document}
    )
    assert result == {"words": 11, "summary": document[:40]}


async def test_run_remote_workflow_returns_the_result(client: PeerClient) -> None:
    result = await client.run_remote_workflow(
        "analyze-pipeline", README_STEPS, {"document": "the quick brown fox"}, timeout_secs=60
    )
    assert result == README_RESULT


async def test_run_remote_workflow_json_takes_and_returns_json_text(client: PeerClient) -> None:
    text = await client.run_remote_workflow_json(
        "analyze-pipeline", README_STEPS, '{"document": "the quick brown fox"}', timeout_secs=60
    )
    assert isinstance(text, str)
    assert json.loads(text) == README_RESULT


async def test_run_remote_workflow_json_keeps_non_ascii_text(client: PeerClient) -> None:
    text = await client.run_remote_workflow_json("wf", ["test::echo"], '"héllo ✓"')
    assert json.loads(text)["data"] == "héllo ✓"


async def test_run_remote_workflow_json_default_input_is_null(client: PeerClient) -> None:
    text = await client.run_remote_workflow_json("wf", ["test::echo"])
    assert json.loads(text)["data"] is None


async def test_named_workflow_runs_with_empty_step_ids(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow(
        "analyze-pipeline", [], {"document": "the quick brown fox"}
    )
    assert response.result == README_RESULT
    assert response.state == {"language": "en"}
    assert await client.run_remote_workflow("analyze-pipeline", input={"document": "a b"}) == {
        "words": 2,
        "summary": "a b",
    }


# --- what a step sees ---


@pytest.mark.parametrize(
    "value",
    [None, 0, 3.5, True, "héllo ✓", [1, "two", None], {"nested": {"list": [1, 2], "x": None}}],
)
async def test_any_json_input_reaches_the_start_event_as_data(
    client: PeerClient, value: object
) -> None:
    result = await client.run_remote_workflow("echo-wf", ["test::echo"], value)
    assert result["data"] == value


async def test_step_context_reports_node_workflow_and_a_fresh_run_id(client: PeerClient) -> None:
    first = await client.run_remote_workflow("named-run", ["test::echo"], 1)
    second = await client.run_remote_workflow("named-run", ["test::echo"], 2)
    assert first["node_id"] == "node-b"
    assert first["workflow_name"] == "named-run"
    assert uuid.UUID(first["run_id"]) != uuid.UUID(second["run_id"])


async def test_sync_steps_run_in_worker_threads_and_async_steps_on_the_loop(
    client: PeerClient,
) -> None:
    sync = await client.run_remote_workflow("wf", ["test::echo"], "x")
    asynchronous = await client.run_remote_workflow("wf", ["test::async_echo"], "x")
    assert sync["on_main_thread"] is False
    assert asynchronous["on_main_thread"] is True
    assert sync["data"] == asynchronous["data"] == "x"


async def test_public_state_is_exported_and_private_keys_stay_on_the_peer(
    client: PeerClient,
) -> None:
    response = await client.invoke_sub_workflow("wf", ["test::state"])
    assert response.result == {"count": 3, "secret_kept": True}
    assert response.state == {"count": 3, "nested": {"a": [1, 2, None], "ok": True}}


# --- concurrency ---


async def test_100_concurrent_calls_on_one_client_overlap(client: PeerClient) -> None:
    # `test::meet` returns only once all 100 runs are in the step at the same time;
    # calls that did not overlap would never meet (the step fails after 20 s).
    name = f"overlap-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(
            client.run_remote_workflow(
                "meet", ["test::meet"], {"name": name, "parties": 100, "i": i}
            )
            for i in range(100)
        )
    )
    assert results == list(range(100))


async def test_sync_steps_of_concurrent_calls_overlap(client: PeerClient) -> None:
    # `test::sync_meet` blocks its worker thread on a barrier of 10: the 10 sync steps
    # must block their threads at the same time, or the barrier breaks after 20 s.
    name = f"sync-overlap-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(
            client.run_remote_workflow(
                "sync-meet", ["test::sync_meet"], {"name": name, "parties": 10, "i": i}
            )
            for i in range(10)
        )
    )
    assert results == list(range(10))


# --- lifecycle and properties ---


async def test_client_properties_and_repr(peer_address: str) -> None:
    client = await PeerClient.connect(peer_address, node_id="node-a")
    assert client.node_id == "node-a"
    assert client.address == peer_address
    assert client.closed is False
    assert repr(client) == f"PeerClient({peer_address!r}, node_id='node-a')"
    await client.close()
    assert client.closed is True


async def test_close_is_idempotent_and_later_calls_raise_validation_error(
    peer_address: str,
) -> None:
    client = await PeerClient.connect(peer_address, node_id="node-a")
    await client.close()
    await client.close()
    client.close_blocking()
    with pytest.raises(ValidationError, match="closed") as excinfo:
        await client.invoke_sub_workflow("wf", ["test::echo"])
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(ValidationError, match="closed"):
        await client.run_remote_workflow_json("wf", ["test::echo"], "1")


async def test_async_with_closes_the_client(peer_address: str) -> None:
    async with await PeerClient.connect(peer_address, node_id="node-a") as client:
        assert (await client.run_remote_workflow("wf", ["test::echo"], 5))["data"] == 5
        assert client.closed is False
    assert client.closed is True


def test_with_closes_a_blocking_client(peer_address: str) -> None:
    with PeerClient.connect_blocking(peer_address, node_id="node-a") as client:
        assert client.run_remote_workflow_blocking("wf", ["test::echo"], 6)["data"] == 6
    assert client.closed is True


async def test_closing_one_client_leaves_another_client_of_the_peer_working(
    peer_address: str,
) -> None:
    first = await PeerClient.connect(peer_address, node_id="node-a")
    second = await PeerClient.connect(peer_address, node_id="node-c")
    await first.close()
    assert (await second.run_remote_workflow("wf", ["test::echo"], "x"))["data"] == "x"
    await second.close()


# --- argument validation (raised before anything is sent) ---


@pytest.mark.parametrize("bad_timeout", [-1, 0, -0.5, float("nan"), float("inf"), True, "10"])
async def test_bad_timeout_secs_raises_validation_error(
    client: PeerClient, bad_timeout: object
) -> None:
    with pytest.raises(ValidationError, match="timeout_secs") as excinfo:
        await client.run_remote_workflow("wf", ["test::echo"], None, timeout_secs=bad_timeout)  # type: ignore[arg-type]
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.kind == "Validation"


async def test_fractional_timeout_is_rounded_up_not_down(client: PeerClient) -> None:
    # `test::slow` takes 0.5 s: a 0.5 s timeout travels as 1 s and the run finishes.
    assert await client.run_remote_workflow("wf", ["test::slow"], "ok", timeout_secs=0.5) == "ok"


@pytest.mark.parametrize("address", ["not a url", "", "http://[::1"])
async def test_connect_to_a_malformed_address_raises_validation_error(address: str) -> None:
    with pytest.raises(ValidationError, match="use HOST:PORT, http://HOST:PORT or https://"):
        await PeerClient.connect(address, node_id="node-a", connect_timeout_secs=2)


async def test_non_positive_connect_timeout_raises_validation_error(peer_address: str) -> None:
    with pytest.raises(ValidationError, match="connect_timeout_secs"):
        await PeerClient.connect(peer_address, node_id="node-a", connect_timeout_secs=0)


async def test_node_id_must_be_printable_ascii(peer_address: str) -> None:
    with pytest.raises(ValidationError, match="node_id"):
        await PeerClient.connect(peer_address, node_id="nöde\n")


# --- session refs ---


async def test_release_of_an_unknown_session_ref_returns_false(client: PeerClient) -> None:
    assert await client.release_session_ref(uuid.uuid4()) is False
    assert await client.release_session_ref(str(uuid.uuid4())) is False


async def test_session_ref_keys_must_be_uuids(client: PeerClient) -> None:
    with pytest.raises(ValidationError, match="not-a-uuid"):
        await client.deref_session_ref("not-a-uuid")
    with pytest.raises(ValidationError, match="not-a-uuid"):
        await client.release_session_ref("not-a-uuid")


async def test_deref_of_an_unknown_session_ref_raises_session_ref_not_found(
    client: PeerClient,
) -> None:
    key = uuid.uuid4()
    with pytest.raises(RefNotFoundError) as excinfo:
        await client.deref_session_ref(key)
    err = excinfo.value
    assert isinstance(err, LookupError)
    assert not isinstance(err, UnknownStepError)
    assert err.kind == "RefNotFound"
    assert str(key) in str(err)
    assert "node-b" in str(err)


def test_remote_ref_descriptor_is_a_frozen_value() -> None:
    ref = RemoteRefDescriptor("node-b", "bytes", 1700000000000)
    assert ref == RemoteRefDescriptor("node-b", "bytes", 1700000000000)
    with pytest.raises(AttributeError):
        ref.type_tag = "other"  # type: ignore[misc]


# --- a peer that goes away ---


async def test_a_killed_peer_makes_calls_fail_with_transport_error(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = spawn_peer()
    client = await PeerClient.connect(peer.address, node_id="node-a")
    assert (await client.run_remote_workflow("wf", ["test::echo"], 1))["data"] == 1
    peer.kill()
    started = time.monotonic()
    with pytest.raises(TransportError) as excinfo:
        await client.run_remote_workflow("wf", ["test::echo"], 2, timeout_secs=5)
    assert time.monotonic() - started < 15
    assert excinfo.value.kind == "Transport"
    await client.close()


async def test_a_peer_killed_during_a_call_fails_that_call_with_transport_error(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = spawn_peer()
    client = await PeerClient.connect(peer.address, node_id="node-a")
    call = asyncio.ensure_future(client.run_remote_workflow("wf", ["test::sleep"], timeout_secs=20))
    # The call is in flight once the peer answers a later one on the same channel.
    assert (await client.run_remote_workflow("wf", ["test::echo"], "ready"))["data"] == "ready"
    peer.kill()
    with pytest.raises(TransportError):
        await asyncio.wait_for(call, timeout=15)
    await client.close()


async def test_a_peer_that_stops_answering_cannot_hang_the_caller(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    # The peer process is frozen (SIGSTOP): the connection stays open but nothing answers.
    # The client's gRPC deadline (timeout_secs + 5 s) must end the call.
    peer = spawn_peer()
    client = await PeerClient.connect(peer.address, node_id="node-a")
    assert (await client.run_remote_workflow("wf", ["test::echo"], 1))["data"] == 1
    peer.proc.send_signal(signal.SIGSTOP)
    try:
        # A stop takes effect when each of the peer's threads next gets the CPU; on a loaded
        # machine the peer answered a call sent right after kill(). Wait for the kernel's
        # word that the whole process is stopped.
        _, status = await asyncio.to_thread(os.waitpid, peer.proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        started = time.monotonic()
        with pytest.raises(TransportError, match="Timeout expired"):
            await asyncio.wait_for(
                client.run_remote_workflow("wf", ["test::echo"], 2, timeout_secs=1), timeout=30
            )
        elapsed = time.monotonic() - started
    finally:
        peer.proc.send_signal(signal.SIGCONT)
    # The deadline has its 5 s grace (a lower bound only grows on a loaded machine); the
    # client's deadline, not the 30 s guard, ended the call: "Timeout expired" above.
    assert elapsed > 5.5, elapsed
    await client.close()


def test_blocking_calls_work_from_a_plain_thread(peer_address: str) -> None:
    outcome: dict[str, object] = {}

    def worker() -> None:
        try:
            client = PeerClient.connect_blocking(peer_address, node_id="node-a")
            with client:
                outcome["result"] = client.run_remote_workflow_blocking(
                    "analyze-pipeline", README_STEPS, {"document": "the quick brown fox"}
                )
                outcome["json"] = client.run_remote_workflow_json_blocking(
                    "analyze-pipeline", README_STEPS, '{"document": "the quick brown fox"}'
                )
                outcome["response"] = client.invoke_sub_workflow_blocking(
                    workflow_name="analyze-pipeline",
                    step_ids=README_STEPS,
                    input={"document": "the quick brown fox"},
                    timeout_secs=60,
                )
            outcome["closed"] = client.closed
        except BaseException as exc:  # reported below, in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"] == README_RESULT
    assert json.loads(outcome["json"]) == README_RESULT  # type: ignore[arg-type]
    response = outcome["response"]
    assert isinstance(response, SubWorkflowResponse)
    assert (response.result, response.state, response.error) == (
        README_RESULT,
        {"language": "en"},
        None,
    )
    assert outcome["closed"] is True


def test_blocking_calls_work_without_an_event_loop(peer_address: str) -> None:
    client = PeerClient.connect_blocking(peer_address, node_id="node-a")
    try:
        assert client.run_remote_workflow_blocking(
            "analyze-pipeline", input={"document": "x y z"}
        ) == {"words": 3, "summary": "x y z"}
        with pytest.raises(WorkflowError, match="boom"):
            client.run_remote_workflow_blocking("wf", ["test::boom"])
        with pytest.raises(WorkflowError, match="boom"):
            client.run_remote_workflow_json_blocking("wf", ["test::boom"])
        failed = client.invoke_sub_workflow_blocking("wf", ["test::boom"])
        assert failed.error is not None and "boom" in failed.error
    finally:
        client.close_blocking()
    assert client.closed


@pytest.mark.parametrize(
    ("method", "alternative"),
    [
        ("run_remote_workflow_blocking", "run_remote_workflow"),
        ("run_remote_workflow_json_blocking", "run_remote_workflow_json"),
        ("invoke_sub_workflow_blocking", "invoke_sub_workflow"),
    ],
)
async def test_blocking_variants_refuse_to_run_inside_an_event_loop(
    client: PeerClient, method: str, alternative: str
) -> None:
    with pytest.raises(ValidationError) as excinfo:
        getattr(client, method)("wf", ["test::echo"])
    message = str(excinfo.value)
    assert f"{method}()" in message
    assert f"await client.{alternative}(" in message
    assert isinstance(excinfo.value, ValueError)


async def test_connect_blocking_refuses_to_run_inside_an_event_loop(peer_address: str) -> None:
    with pytest.raises(ValidationError, match=r"await PeerClient\.connect\("):
        PeerClient.connect_blocking(peer_address, node_id="node-a")


# --- client processes ---


async def test_a_client_in_another_process_uses_the_blocking_api(peer_address: str) -> None:
    code, out, err = await run_call_peer(
        peer_address, "analyze-pipeline", json.dumps(README_STEPS), '{"document": "a b c d"}'
    )
    assert code == 0, err
    assert json.loads(out) == {"words": 4, "summary": "a b c d"}


async def test_a_client_in_another_process_reports_typed_errors(peer_address: str) -> None:
    code, out, _ = await run_call_peer(peer_address, "wf", '["test::boom"]', "null")
    assert code == 2
    assert out.startswith("ERROR Workflow step `test::boom` failed on node `node-b`")


async def test_client_processes_exit_cleanly_after_async_calls(peer_address: str) -> None:
    """A program that made async calls and returned from asyncio.run must exit with 0.

    The crash this guards against (a native thread touching the interpreter while it
    finalizes; SIGSEGV/SIGABRT) happens at a fraction of exits, so 24 clients run.
    """
    slots = asyncio.Semaphore(4)

    async def one_client() -> tuple[int, str, str]:
        async with slots:
            return await run_call_peer(
                peer_address, "wf", '["test::async_echo"]', '"x"', "--async-calls", "100"
            )

    outcomes = await asyncio.gather(*(one_client() for _ in range(24)))
    for code, out, _ in outcomes:
        if code == 0:
            assert json.loads(out)["data"] == "x"
    crashed = [(code, err) for code, _, err in outcomes if code != 0]
    assert not crashed, (
        f"{len(crashed)} of {len(outcomes)} client processes crashed on exit; first: "
        f"status {crashed[0][0]}, stderr:\n{crashed[0][1]}"
    )
