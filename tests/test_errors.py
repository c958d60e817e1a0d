"""Every error class: raised for real where it can be (peer in another process),
and through `errors._from_native` (the one place native errors become Python ones)."""

from __future__ import annotations

import socket
import time

import blazen_peer
import pytest
from blazen_peer import (
    ENVELOPE_VERSION,
    AuthenticationError,
    EncodeError,
    EnvelopeVersionError,
    PeerClient,
    PeerError,
    PeerServer,
    PeerTimeoutError,
    RefNotFoundError,
    TlsError,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
    ValidationError,
    WorkflowError,
)
from blazen_peer import errors as errors_module

# --- the class tree and .kind ---

KINDS = {
    PeerError: "Peer",
    TransportError: "Transport",
    UnknownStepError: "UnknownStep",
    UnknownWorkflowError: "UnknownWorkflow",
    EnvelopeVersionError: "EnvelopeVersion",
    EncodeError: "Encode",
    TlsError: "Tls",
    AuthenticationError: "Authentication",
    WorkflowError: "Workflow",
    PeerTimeoutError: "Timeout",
    RefNotFoundError: "RefNotFound",
    ValidationError: "Validation",
}


@pytest.mark.parametrize(("cls", "kind"), list(KINDS.items()), ids=lambda v: str(v))
def test_every_error_is_a_peer_error_with_its_kind(cls: type[PeerError], kind: str) -> None:
    assert issubclass(cls, PeerError)
    assert cls.kind == kind
    assert getattr(blazen_peer, cls.__name__) is cls
    assert cls.__name__ in blazen_peer.__all__


def test_error_hierarchy_matches_the_builtin_exceptions_it_stands_for() -> None:
    assert issubclass(PeerTimeoutError, WorkflowError)
    assert issubclass(PeerTimeoutError, TimeoutError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(UnknownWorkflowError, UnknownStepError)
    assert issubclass(RefNotFoundError, LookupError)
    assert not issubclass(TransportError, ValueError | TimeoutError)


def test_envelope_version_is_1() -> None:
    assert ENVELOPE_VERSION == 1
    assert isinstance(ENVELOPE_VERSION, int)


# --- _from_native builds each class with its typed details ---


def test_from_native_builds_envelope_version_error_with_got_and_supported() -> None:
    err = errors_module._from_native(
        "EnvelopeVersion",
        "envelope version 2 is newer than supported 1",
        {"got": 2, "supported": 1},
    )
    assert type(err) is EnvelopeVersionError
    assert (err.got, err.supported) == (2, 1)
    assert err.kind == "EnvelopeVersion"
    assert str(err) == err.message == "envelope version 2 is newer than supported 1"


def test_from_native_builds_unknown_step_and_workflow_errors() -> None:
    step_err = errors_module._from_native(
        "UnknownStep", "no x::y", {"step_id": "x::y", "registered": ["a::b"]}
    )
    assert type(step_err) is UnknownStepError
    assert (step_err.step_id, step_err.registered) == ("x::y", ["a::b"])
    workflow_err = errors_module._from_native(
        "UnknownWorkflow", "no wf", {"workflow_name": "wf", "registered": ["other"]}
    )
    assert type(workflow_err) is UnknownWorkflowError
    assert (workflow_err.workflow_name, workflow_err.registered) == ("wf", ["other"])


def test_from_native_builds_workflow_and_timeout_errors_with_remote_details() -> None:
    details = {
        "failure_kind": "StepFailed",
        "remote_type": "ValueError",
        "remote_traceback": "Traceback ...\nValueError: boom\n",
        "step_id": "s",
        "node_id": "node-b",
    }
    err = errors_module._from_native("Workflow", "step `s` failed", details)
    assert type(err) is WorkflowError
    assert (err.remote_type, err.step_id, err.node_id) == ("ValueError", "s", "node-b")
    timeout = errors_module._from_native("Timeout", "late", {**details, "failure_kind": "Timeout"})
    assert type(timeout) is PeerTimeoutError
    assert isinstance(timeout, TimeoutError)
    assert timeout.failure_kind == "Timeout"


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("Transport", TransportError),
        ("Encode", EncodeError),
        ("Tls", TlsError),
        ("Authentication", AuthenticationError),
        ("Validation", ValidationError),
        ("RefNotFound", RefNotFoundError),
    ],
)
def test_from_native_builds_plain_errors(kind: str, cls: type[PeerError]) -> None:
    err = errors_module._from_native(kind, f"{kind} went wrong", {})
    assert type(err) is cls
    assert err.kind == kind
    assert err.message == f"{kind} went wrong"
    assert err.grpc_status is None


def test_from_native_keeps_the_grpc_status_of_transport_errors() -> None:
    err = errors_module._from_native("Transport", "unavailable", {"grpc_status": 14})
    assert type(err) is TransportError
    assert err.grpc_status == 14


def test_from_native_falls_back_to_peer_error_for_an_unknown_kind() -> None:
    err = errors_module._from_native("SomethingNew", "from a newer core", {})
    assert type(err) is PeerError
    assert str(err) == "from a newer core"


# --- TransportError, for real ---


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connecting_to_a_closed_port_fails_fast_with_transport_error() -> None:
    port = _closed_port()
    with pytest.raises(TransportError) as excinfo:
        await PeerClient.connect(f"http://127.0.0.1:{port}", node_id="node-a")
    # Refused by the OS, not the 5 s connect timeout waited out; nothing was sent.
    assert "Connection refused" in str(excinfo.value), excinfo.value
    assert excinfo.value.started is False
    assert f"127.0.0.1:{port}" in str(excinfo.value)
    assert excinfo.value.kind == "Transport"


def test_connect_blocking_to_a_closed_port_fails_with_transport_error() -> None:
    port = _closed_port()
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        PeerClient.connect_blocking(f"http://127.0.0.1:{port}", node_id="node-a")


async def test_two_servers_on_the_same_port_transport_error() -> None:
    first = PeerServer("node-x")
    second = PeerServer("node-y")
    async with first, second:
        bound = await first.start("127.0.0.1:0")
        with pytest.raises(TransportError, match="cannot listen") as excinfo:
            await second.start(bound)
        assert bound in str(excinfo.value)
        assert second.address is None
        # The failed start leaves `second` unused: it can still serve elsewhere.
        assert (await second.start("127.0.0.1:0")) != bound


async def test_listening_on_the_port_of_a_peer_in_another_process_transport_error(
    peer_address: str,
) -> None:
    taken = peer_address.removeprefix("http://")
    async with PeerServer("node-x") as server:
        with pytest.raises(TransportError, match="cannot listen"):
            await server.start(taken)


# --- UnknownStepError / UnknownWorkflowError from the peer ---


async def test_unknown_step_error_names_the_step_and_lists_the_registered_ones(
    client: PeerClient,
) -> None:
    with pytest.raises(UnknownStepError) as excinfo:
        await client.invoke_sub_workflow("wf", ["my_app::analyze", "nope::missing"])
    err = excinfo.value
    assert type(err) is UnknownStepError
    assert err.kind == "UnknownStep"
    assert err.step_id == "nope::missing"
    assert "my_app::analyze" in err.registered
    assert "my_app::summarize" in err.registered
    assert "test::boom" in err.registered
    assert err.registered == sorted(err.registered)
    assert "nope::missing" in str(err)
    assert "my_app::analyze" in str(err) and "my_app::summarize" in str(err)


async def test_unknown_workflow_error_for_empty_step_ids_and_an_undeclared_name(
    client: PeerClient,
) -> None:
    with pytest.raises(UnknownWorkflowError) as excinfo:
        await client.invoke_sub_workflow("no-such-workflow", [], {"document": "x"})
    err = excinfo.value
    assert err.kind == "UnknownWorkflow"
    assert isinstance(err, UnknownStepError)
    assert err.workflow_name == "no-such-workflow"
    assert err.registered == ["analyze-pipeline"]
    assert "no-such-workflow" in str(err) and "analyze-pipeline" in str(err)


async def test_run_remote_workflow_raises_unknown_workflow_error_too(client: PeerClient) -> None:
    with pytest.raises(UnknownWorkflowError):
        await client.run_remote_workflow("no-such-workflow")
    with pytest.raises(UnknownWorkflowError):
        await client.run_remote_workflow_json("no-such-workflow")


# --- EncodeError ---


@pytest.mark.parametrize(
    "bad_input",
    [{"x": object()}, {"x": {1, 2}}, {"x": float("nan")}, [float("inf")]],
    ids=["object", "set", "nan", "infinity"],
)
async def test_non_json_input_raises_encode_error_before_sending(bad_input: object) -> None:
    # The peer is gone before the call: only an error raised before sending can be an
    # EncodeError here; anything that reached the network would be a TransportError.
    async with PeerServer("node-x") as server:
        address = await server.start("127.0.0.1:0")
        client = await PeerClient.connect(f"http://{address}", node_id="node-a")
    with pytest.raises(EncodeError, match="not JSON-serializable") as excinfo:
        await client.invoke_sub_workflow("wf", ["any::step"], bad_input)
    assert excinfo.value.kind == "Encode"
    with pytest.raises(EncodeError, match="not JSON-serializable"):
        await client.run_remote_workflow("wf", ["any::step"], bad_input)
    await client.close()


async def test_non_json_input_text_is_rejected_by_the_peer_with_encode_error(
    client: PeerClient,
) -> None:
    with pytest.raises(EncodeError, match="not valid UTF-8 JSON"):
        await client.run_remote_workflow_json("wf", ["test::echo"], "{not json")


async def test_non_json_public_state_fails_the_run_and_says_why(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow("wf", ["test::bad_state"])
    assert response.result is None
    assert response.state == {}
    assert response.error is not None
    assert "'bad'" in response.error
    assert "not JSON-serializable" in response.error
    with pytest.raises(WorkflowError) as excinfo:
        response.raise_for_error()
    assert excinfo.value.remote_type == "blazen_peer.errors.EncodeError"
    assert excinfo.value.step_id == "test::bad_state"


async def test_non_json_stop_event_result_fails_the_run_and_says_why(client: PeerClient) -> None:
    with pytest.raises(WorkflowError) as excinfo:
        await client.run_remote_workflow("wf", ["test::bad_result"])
    err = excinfo.value
    assert err.failure_kind == "ResultNotJson"
    assert "StopEvent.result holds an object, which is not JSON-serializable" in str(err)
    assert err.node_id == "node-b"


# --- WorkflowError ---


async def test_a_raising_step_comes_back_as_workflow_error_with_remote_details(
    client: PeerClient,
) -> None:
    with pytest.raises(WorkflowError) as excinfo:
        await client.run_remote_workflow("boom-wf", ["test::boom"], {"x": 1})
    err = excinfo.value
    assert type(err) is WorkflowError
    assert err.kind == "Workflow"
    assert err.failure_kind == "StepFailed"
    assert err.remote_type == "ValueError"
    assert err.step_id == "test::boom"
    assert err.node_id == "node-b"
    assert err.remote_traceback is not None
    assert "boom" in err.remote_traceback
    assert 'raise ValueError("boom")' in err.remote_traceback
    assert "steps_core.py" in err.remote_traceback
    assert "test::boom" in str(err) and "ValueError: boom" in str(err)


async def test_invoke_sub_workflow_returns_a_failed_run_with_error_set(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow("boom-wf", ["test::boom"])
    assert response.result is None
    assert response.state == {}
    assert response.error == (
        "step `test::boom` failed on node `node-b` handling `blazen::StartEvent`: "
        "ValueError: boom; steps present: [`test::boom` (accepts blazen::StartEvent)]"
    )
    with pytest.raises(WorkflowError) as excinfo:
        response.raise_for_error()
    assert excinfo.value.remote_type == "ValueError"
    assert excinfo.value.node_id == "node-b"


async def test_a_run_without_a_stop_event_names_the_step_the_event_type_and_the_steps(
    client: PeerClient,
) -> None:
    # `test::base_sink` accepts tests.Base, receives a tests.Child and returns nothing.
    with pytest.raises(WorkflowError) as excinfo:
        await client.run_remote_workflow(
            "quiet", ["test::emit_child", "test::base_sink"], {"value": "v"}
        )
    err = excinfo.value
    message = str(err)
    assert err.failure_kind == "NoStopEvent"
    assert err.node_id == "node-b"
    assert "without a StopEvent" in message
    assert "steps present: [" in message
    assert "`test::emit_child` (accepts blazen::StartEvent)" in message
    assert "`test::base_sink` (accepts tests.Base)" in message
    # The event the run ended on is a tests.Child; the README promises the message names it.
    assert "tests.Child" in message, message


async def test_an_event_nobody_accepts_fails_the_run_naming_step_event_and_steps(
    client: PeerClient,
) -> None:
    with pytest.raises(WorkflowError) as excinfo:
        await client.run_remote_workflow("lonely", ["test::orphan"])
    err = excinfo.value
    assert err.failure_kind == "NoAcceptingStep"
    assert err.step_id == "test::orphan"
    assert err.node_id == "node-b"
    assert str(err) == (
        "no step of workflow `lonely` accepts event `tests.Orphan` emitted by step "
        "`test::orphan`; steps present: [`test::orphan` (accepts blazen::StartEvent)]"
    )


async def test_a_raising_step_fails_the_run_naming_step_event_and_steps(
    client: PeerClient,
) -> None:
    # README: "a step raising fails the run with a message naming the step, the event
    # type and the steps present".
    with pytest.raises(WorkflowError) as excinfo:
        await client.run_remote_workflow("boom-wf", ["test::boom", "test::emit_ping"])
    message = str(excinfo.value)
    assert "`test::boom`" in message
    assert "`blazen::StartEvent`" in message
    assert "steps present" in message, message
    assert "test::emit_ping" in message, message


async def test_run_remote_workflow_json_raises_workflow_error(client: PeerClient) -> None:
    with pytest.raises(WorkflowError) as excinfo:
        await client.run_remote_workflow_json("wf", ["test::boom"], "null")
    assert excinfo.value.remote_type == "ValueError"


# --- PeerTimeoutError ---


async def test_timeout_raises_peer_timeout_error_and_the_peer_keeps_serving(
    client: PeerClient,
) -> None:
    started = time.monotonic()
    with pytest.raises(PeerTimeoutError) as excinfo:
        await client.run_remote_workflow("sleepy", ["test::sleep"], timeout_secs=1)
    elapsed = time.monotonic() - started
    err = excinfo.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, WorkflowError)
    assert err.kind == "Timeout"
    assert err.failure_kind == "Timeout"
    assert err.node_id == "node-b"
    assert "sleepy" in str(err) and "1s" in str(err)
    # Not before the deadline (a lower bound only grows on a loaded machine); that the
    # deadline ended it, not the step (which sleeps 30 s and then returns), is the
    # PeerTimeoutError itself.
    assert elapsed > 0.9, elapsed
    # Same client, same peer: still serving.
    assert (await client.run_remote_workflow("wf", ["test::echo"], "after"))["data"] == "after"


async def test_invoke_sub_workflow_raises_on_timeout_rather_than_returning(
    client: PeerClient,
) -> None:
    with pytest.raises(PeerTimeoutError):
        await client.invoke_sub_workflow("sleepy", ["test::sleep"], timeout_secs=1)


async def test_timeout_is_a_builtin_timeout_error_for_callers(client: PeerClient) -> None:
    with pytest.raises(TimeoutError):
        await client.run_remote_workflow_json("sleepy", ["test::sleep"], "null", timeout_secs=1)


# --- ValidationError ---


async def test_calls_after_close_raise_validation_error(peer_address: str) -> None:
    client = await PeerClient.connect(peer_address, node_id="node-a")
    await client.close()
    with pytest.raises(ValidationError, match="closed") as excinfo:
        await client.run_remote_workflow("wf", ["test::echo"])
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.kind == "Validation"


@pytest.mark.parametrize("address", ["not-an-address", "http://127.0.0.1:0", "127.0.0.1:99999"])
async def test_bad_listen_address_raises_validation_error(address: str) -> None:
    server = PeerServer("node-x")
    with pytest.raises(ValidationError, match="is not a listen address") as excinfo:
        await server.start(address)
    assert isinstance(excinfo.value, ValueError)
    assert address in str(excinfo.value)
    await server.stop()


async def test_serving_twice_on_one_server_raises_validation_error() -> None:
    async with PeerServer("node-x") as server:
        await server.start("127.0.0.1:0")
        with pytest.raises(ValidationError, match="already serving"):
            await server.start("127.0.0.1:0")


async def test_negative_timeout_raises_validation_error(client: PeerClient) -> None:
    with pytest.raises(ValidationError, match="timeout_secs") as excinfo:
        await client.run_remote_workflow("wf", ["test::echo"], timeout_secs=-1)
    assert isinstance(excinfo.value, ValueError)


async def test_a_rust_panic_becomes_a_transport_error_and_the_module_keeps_working(
    client: PeerClient,
) -> None:
    from blazen_peer import _native

    with pytest.raises(TransportError, match="internal error \\(probe went wrong\\)"):
        await _native._panic_probe("probe went wrong")
    await _native._panic_probe("")
    assert await client.run_remote_workflow("echo", ["test::echo"], {"x": 1})
