"""One run request, and the one place that decides whether a run's outcome is
returned or raised.

``PeerClient``'s run methods and ``PeerPool``'s build a :class:`RunRequest` once
(the input checked and encoded before anything is sent, so a pool failing over
encodes nothing twice), send it, and hand the native response to :func:`settle`
with the :class:`Reply` the caller asked for.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _native, _wire_json
from ._seconds import positive_secs
from .errors import EncodeError
from .responses import SubWorkflowResponse

__all__ = ["Reply", "RunRequest", "settle"]


class Reply(enum.Enum):
    """What a run method gives back, and so which failures it raises."""

    #: The whole SubWorkflowResponse; a failed workflow comes back with ``.error``
    #: set, but a run past its deadline raises PeerTimeoutError (there is no
    #: response worth reading).
    RESPONSE = enum.auto()
    #: The whole response of a stream's terminal message; any failure raises
    #: (after the events written before it).
    CHECKED_RESPONSE = enum.auto()
    #: The StopEvent's result decoded from JSON; any failure raises.
    RESULT = enum.auto()
    #: The StopEvent's result as JSON text; any failure raises.
    JSON = enum.auto()


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run request as the native client reads it (by attribute)."""

    workflow_name: str
    step_ids: list[str]
    input_json: bytes
    #: Whole seconds, as the wire carries them.
    timeout_secs: int | None
    #: The parent run whose refs this run's refs join (set by the client that sends it).
    parent_run: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    #: The run of the step making the call (set by the client that sends it): the
    #: sub-run's usage adds to its totals.
    within_run: _native.RunContext | None = None

    @staticmethod
    def of_value(
        workflow_name: str, step_ids: Sequence[str], value: Any, timeout_secs: float | None
    ) -> RunRequest:
        """A request whose input is ``value`` encoded as JSON."""
        return RunRequest(
            workflow_name, list(step_ids), encode_input(value), wire_timeout(timeout_secs)
        )

    @staticmethod
    def of_json(
        workflow_name: str, step_ids: Sequence[str], input_json: str, timeout_secs: float | None
    ) -> RunRequest:
        """A request whose input is already JSON text (sent as is)."""
        return RunRequest(
            workflow_name, list(step_ids), input_json.encode(), wire_timeout(timeout_secs)
        )


def encode_input(value: Any) -> bytes:
    try:
        encoded = _wire_json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise EncodeError(
            f"the workflow input is not JSON-serializable: {exc}; pass dicts, lists, strings, "
            "finite numbers, booleans and None"
        ) from exc
    return encoded.encode()


def wire_timeout(timeout_secs: float | None) -> int | None:
    if timeout_secs is None:
        return None
    # The wire carries whole seconds; rounding up never cuts a run short.
    return math.ceil(positive_secs("timeout_secs", timeout_secs))


def settle(
    native: _native.SubWorkflowResponse,
    reply: Reply,
    remember: Callable[[SubWorkflowResponse], SubWorkflowResponse],
) -> Any:
    """What the caller gets for ``native``: the value ``reply`` names, or the run's
    typed error raised. ``remember`` records the refs the run left on the peer."""
    if reply is Reply.RESPONSE or reply is Reply.CHECKED_RESPONSE:
        if native.timed_out:
            native.raise_for_error()
        response = remember(SubWorkflowResponse._from_native(native))
        if reply is Reply.CHECKED_RESPONSE:
            response.raise_for_error()
        return response
    native.raise_for_error()
    # The hot path of run_remote_workflow builds no SubWorkflowResponse unless
    # refs outlive the run and need remembering.
    if native.has_remote_refs:
        remember(SubWorkflowResponse._from_native(native))
    raw = native.result_json
    if reply is Reply.JSON:
        return "null" if raw is None else raw.decode()
    return None if raw is None else json.loads(raw)
