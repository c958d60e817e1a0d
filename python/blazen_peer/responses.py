"""What a remote run returns."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import _native
from .usage import RunUsage

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

    def raise_for_error(self) -> None:
        """Raises WorkflowError (with the remote details) when the run failed."""
        if self.error is not None and self._raw is not None:
            self._raw.raise_for_error()

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
        )
