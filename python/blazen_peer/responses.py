"""What a remote run returns."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _native
from .errors import ValidationError
from .usage import RunUsage

if TYPE_CHECKING:
    from .remote_ref import RemoteRef

__all__ = ["RemoteRefDescriptor", "SubWorkflowResponse"]


@dataclass(frozen=True)
class RemoteRefDescriptor:
    """A session ref that stayed on the peer."""

    origin_node_id: str
    type_tag: str
    created_at_epoch_ms: int


@dataclass(frozen=True)
class SubWorkflowResponse:
    """What a remote run returned. ``error`` is set when the workflow failed."""

    #: The StopEvent's result, decoded from JSON; None when the run failed.
    result: Any
    #: The run's exported context state (keys not starting with ``_``); empty when it failed.
    state: dict[str, Any]
    #: What failed, or None on success (:meth:`raise_for_error` raises it).
    error: str | None
    #: The session refs the run left on the peer, by key.
    remote_refs: dict[uuid.UUID, RemoteRefDescriptor] = field(default_factory=dict)
    #: LLM usage and cost of the run, the sub-runs it delegated to included
    #: (zero from a peer that does not report usage).
    usage: RunUsage = field(default_factory=RunUsage)
    _raw: _native.SubWorkflowResponse | None = field(default=None, repr=False, compare=False)
    #: The address of the peer that answered, which holds ``remote_refs``.
    _peer_address: str | None = field(default=None, repr=False, compare=False)

    def raise_for_error(self) -> None:
        """Raises WorkflowError (with the remote details) when the run failed."""
        if self.error is not None and self._raw is not None:
            self._raw.raise_for_error()

    def remote_ref(self, name: str | uuid.UUID) -> RemoteRef:
        """A handle on one of :attr:`remote_refs`, to put in another call's input,
        so a step on another peer fetches the value from this one directly
        (``await ctx.session_refs.fetch(handle)``).

        ``name`` is the ref's key, or a key of the result (a dict), or of the
        state, whose value is the ref's key (``{"features": str(key)}``)."""
        from .remote_ref import RemoteRef

        key = self._ref_key(name)
        descriptor = self.remote_refs.get(key)
        if descriptor is None:
            raise ValidationError(
                f"this run left no session ref {key} on its peer; only refs that outlive "
                "their run (UNTIL_PARENT_FINISH, UNTIL_EXPLICIT_DROP) are in remote_refs: "
                f"{sorted(str(known) for known in self.remote_refs)}"
            )
        if self._peer_address is None:
            raise ValidationError(
                "this response does not say which peer answered it; use the one "
                "PeerClient.invoke_sub_workflow returned"
            )
        return RemoteRef(
            key=key,
            origin_node_id=descriptor.origin_node_id,
            origin_address=self._peer_address,
            type_tag=descriptor.type_tag,
            created_at_epoch_ms=descriptor.created_at_epoch_ms,
        )

    def _ref_key(self, name: str | uuid.UUID) -> uuid.UUID:
        if isinstance(name, uuid.UUID):
            return name
        named: Any = None
        if isinstance(self.result, dict) and name in self.result:
            named = self.result[name]
        elif name in self.state:
            named = self.state[name]
        try:
            return uuid.UUID(str(named if named is not None else name))
        except ValueError:
            raise ValidationError(
                f"{name!r} is neither a session ref key nor a key of the result or state "
                "holding one"
            ) from None

    @classmethod
    def _from_native(cls, native: _native.SubWorkflowResponse) -> SubWorkflowResponse:
        failed = native.error is not None
        result_json = native.result_json
        return cls(
            result=json.loads(result_json) if result_json is not None and not failed else None,
            state={} if failed else {k: json.loads(v) for k, v in native.state_json.items()},
            error=native.error,
            remote_refs={
                uuid.UUID(entry.key): RemoteRefDescriptor(
                    origin_node_id=entry.origin_node_id,
                    type_tag=entry.type_tag,
                    created_at_epoch_ms=entry.created_at_epoch_ms,
                )
                for entry in native.remote_refs
            },
            usage=RunUsage._from_native(native.usage),
            _raw=native,
            _peer_address=native.peer_address,
        )
