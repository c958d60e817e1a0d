"""Typed errors of blazen-peer.

Every failure raised by this package is a :class:`PeerError`; ``.kind`` names it
the way the other bindings of the protocol do ("Transport", "UnknownStep", ...).
The native module builds them in one place, through ``_from_native()``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "EncodeError",
    "EnvelopeVersionError",
    "MessageTooLargeError",
    "PeerBusyError",
    "PeerError",
    "PeerTimeoutError",
    "PeerUnsupportedError",
    "PlacementError",
    "QuotaExceededError",
    "RefNotFoundError",
    "RefOriginError",
    "TlsError",
    "TransportError",
    "UnknownStepError",
    "UnknownWorkflowError",
    "ValidationError",
    "WorkflowError",
]


class PeerError(Exception):
    """Base class of every blazen-peer error."""

    kind: str = "Peer"

    def __init__(self, message: str, *, grpc_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.grpc_status = grpc_status


class TransportError(PeerError):
    """The network failed: nothing listens, the connection broke, the port is taken.

    ``started`` is False when the peer certainly never started the call (the
    connection could not be made, or the peer refused it while shutting down):
    sending it to another peer cannot run it twice. True means it may have run.
    """

    kind = "Transport"

    def __init__(
        self, message: str, *, grpc_status: int | None = None, started: bool = True
    ) -> None:
        super().__init__(message, grpc_status=grpc_status)
        self.started = started


class PeerUnsupportedError(TransportError):
    """The peer speaks plain ``blazen.peer.v1`` (the published Rust crate, for one)
    and lacks ``method``, a method this project added (ListSteps, Health,
    StreamSubWorkflowEvents, FinishParentRun, RenewParentLease). Nothing ran;
    the message says what to use instead.

    A :class:`TransportError` (``started`` False), so code written before this
    class still handles it."""

    kind = "Unsupported"

    def __init__(self, message: str, *, method: str = "", grpc_status: int | None = None) -> None:
        super().__init__(message, grpc_status=grpc_status, started=False)
        self.method = method


class UnknownStepError(PeerError):
    """The peer has no step registered under a requested id."""

    kind = "UnknownStep"

    def __init__(
        self,
        message: str,
        *,
        step_id: str | None = None,
        registered: list[str] | None = None,
        grpc_status: int | None = None,
    ) -> None:
        super().__init__(message, grpc_status=grpc_status)
        self.step_id = step_id
        self.registered = registered or []


class UnknownWorkflowError(UnknownStepError):
    """The request named no steps and the peer declares no workflow of that name."""

    kind = "UnknownWorkflow"

    def __init__(
        self,
        message: str,
        *,
        workflow_name: str | None = None,
        registered: list[str] | None = None,
        grpc_status: int | None = None,
    ) -> None:
        super().__init__(message, registered=registered, grpc_status=grpc_status)
        self.workflow_name = workflow_name


class EnvelopeVersionError(PeerError):
    """A payload's envelope version is newer than the receiver supports."""

    kind = "EnvelopeVersion"

    def __init__(
        self, message: str, *, got: int = 0, supported: int = 0, grpc_status: int | None = None
    ) -> None:
        super().__init__(message, grpc_status=grpc_status)
        self.got = got
        self.supported = supported


class RefNotFoundError(PeerError, LookupError):
    """The peer holds no session ref under that key (released, expired, or never created)."""

    kind = "RefNotFound"


class MessageTooLargeError(PeerError):
    """A message exceeds ``max_message_bytes``; the text says the size, the limit and what to do."""

    kind = "MessageTooLarge"


class EncodeError(PeerError):
    """A value could not be encoded or a payload could not be decoded."""

    kind = "Encode"


class TlsError(PeerError):
    """TLS configuration or handshake failed."""

    kind = "Tls"


class AuthenticationError(PeerError):
    """The peer rejected this client's credentials."""

    kind = "Authentication"


class WorkflowError(PeerError):
    """The workflow ran and failed; details of the remote failure are attached."""

    kind = "Workflow"

    def __init__(
        self,
        message: str,
        *,
        failure_kind: str | None = None,
        remote_type: str | None = None,
        remote_traceback: str | None = None,
        step_id: str | None = None,
        node_id: str | None = None,
        grpc_status: int | None = None,
    ) -> None:
        super().__init__(message, grpc_status=grpc_status)
        self.failure_kind = failure_kind
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.step_id = step_id
        self.node_id = node_id


class PeerTimeoutError(WorkflowError, TimeoutError):
    """A run or call passed its deadline."""

    kind = "Timeout"


class PeerBusyError(PeerError):
    """The peer is running its maximum of concurrent runs (``max_concurrent_runs``);
    nothing ran. Retrying later, or on another peer, may succeed."""

    kind = "Busy"


class PlacementError(PeerError, LookupError):
    """No member of a pool has the labels a call requires (``require=...``);
    nothing ran. ``require`` is what the call asked for, ``offered`` what each
    member declares (by address), so the fix is one of the two."""

    kind = "Placement"

    def __init__(
        self,
        message: str,
        *,
        require: dict[str, str],
        offered: dict[str, dict[str, str]],
    ) -> None:
        super().__init__(message)
        self.require = require
        self.offered = offered


class QuotaExceededError(PeerError):
    """An upload (``put_session_ref``) would take the peer past the bytes it lets
    callers upload (``max_upload_bytes``); nothing was stored and no value byte
    was sent. Release refs held there, or raise the peer's bound."""

    kind = "Quota"


class RefOriginError(PeerError):
    """A step could not fetch a session ref from the peer that holds it
    (``ctx.session_refs.fetch``): the origin is not in this peer's directory
    (``PeerServer(peers=...)``), or it could not be reached or refused us.
    ``origin_node_id`` and ``origin_address`` name it; ``__cause__`` says why."""

    kind = "RefOrigin"

    def __init__(self, message: str, *, origin_node_id: str = "", origin_address: str = "") -> None:
        super().__init__(message)
        self.origin_node_id = origin_node_id
        self.origin_address = origin_address


class ValidationError(PeerError, ValueError):
    """An argument or lifecycle mistake on this side, caught before anything was sent."""

    kind = "Validation"


_BY_KIND: dict[str, type[PeerError]] = {
    cls.kind: cls
    for cls in (
        TransportError,
        UnknownStepError,
        UnknownWorkflowError,
        EnvelopeVersionError,
        RefNotFoundError,
        MessageTooLargeError,
        EncodeError,
        TlsError,
        AuthenticationError,
        WorkflowError,
        PeerTimeoutError,
        PeerBusyError,
        PeerUnsupportedError,
        QuotaExceededError,
        ValidationError,
    )
}


def _from_native(kind: str, message: str, details: dict[str, Any]) -> PeerError:
    """Builds the exception for a native error (called from Rust only)."""
    cls = _BY_KIND.get(kind, PeerError)
    return cls(message, **details)
