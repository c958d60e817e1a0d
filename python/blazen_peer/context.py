"""The per-run :class:`Context` that every step receives."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, final

from . import _native, _wire_json
from ._grammar import with_article
from .errors import EncodeError
from .events import Event, stream_payload
from .refs import SessionRefs
from .usage import RunUsage, UsageEvent

__all__ = ["Context", "PeerIdentity"]

_MISSING: Any = object()


@dataclass(frozen=True)
class PeerIdentity:
    """The caller's TLS client certificate, verified against the server's client CA."""

    #: The certificate's subject, e.g. ``"CN=node-a,O=example"``.
    subject: str
    #: The subject's common name, when it has one.
    common_name: str | None
    #: DNS names among the subject alternative names.
    dns_names: tuple[str, ...]
    #: URIs among the subject alternative names (SPIFFE ids live here).
    uris: tuple[str, ...]
    #: The certificate (DER), for anything the fields above leave out.
    certificate_der: bytes


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@final
class _Stored:
    """What :meth:`Context.set` returns: the value is already stored, so awaiting
    it (``await ctx.set(...)`` in an ``async def`` step) does nothing, and not
    awaiting it (``ctx.set(...)`` in a ``def`` step) loses nothing and warns of
    nothing, unlike a coroutine that is never awaited."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # makes this a generator: `await` finishes at once

    def __repr__(self) -> str:
        return "<stored>"


_STORED = _Stored()


class Context:
    """Identity and shared state of one run.

    Keys not starting with ``_`` must hold JSON-serializable values; they are
    exported in the response's ``state``. Keys starting with ``_`` hold any
    object and never leave the process.
    """

    __slots__ = ("_ref",)

    def __init__(self, ref: _native.RunContext) -> None:
        self._ref = ref

    @property
    def run_id(self) -> str:
        """Unique id of this run."""
        return self._ref.run_id

    @property
    def node_id(self) -> str:
        """Node executing the run (``"local"`` for in-process runs)."""
        return self._ref.node_id

    @property
    def workflow_name(self) -> str:
        """Name the run was requested under."""
        return self._ref.workflow_name

    @property
    def caller_node_id(self) -> str | None:
        """The node id the caller announced (not verified; use :attr:`peer_identity` for
        that); None for local runs."""
        return self._ref.caller_node_id

    @property
    def trace_context(self) -> tuple[str, str | None] | None:
        """W3C ``(traceparent, tracestate)`` this step runs under: the run's
        span when the peer traces (OpenTelemetry), else what the caller sent;
        None for local runs and untraced calls."""
        return self._ref.trace_context

    @property
    def peer_identity(self) -> PeerIdentity | None:
        """Who called, as their verified TLS client certificate says (mutual TLS only),
        for auditing and authorization in steps; None otherwise."""
        native = self._ref.peer_identity
        if native is None:
            return None
        return PeerIdentity(
            subject=native.subject,
            common_name=native.common_name,
            dns_names=tuple(native.dns_names),
            uris=tuple(native.uris),
            certificate_der=native.certificate_der,
        )

    @property
    def session_refs(self) -> SessionRefs:
        """Values this run keeps on this node, by key (see :class:`RefLifetime`)."""
        return SessionRefs(self._ref)

    @property
    def cancelled(self) -> bool:
        """True once the run ended or was cancelled; long ``def`` steps should check it."""
        return self._ref.cancelled

    def write_event_to_stream(self, event: Event) -> None:
        """Sends ``event`` to the caller of a streaming run (``stream_sub_workflow``),
        in order; does nothing when nobody streams this run.

        Back-pressure: when the caller reads slower than steps write, a ``def``
        step blocks here, and an ``async def`` step is paused at its next
        ``await`` until the caller catches up; no event is dropped."""
        if not self._ref.streaming:
            return
        name, data = stream_payload(event)
        self._ref.write_stream_event(name, data)
        if self._ref.stream_full() and not _on_event_loop():
            # A worker thread (a `def` step): waiting here blocks only this step.
            # An `async def` step is paused by the step bridge instead.
            self._ref.wait_for_stream_room()

    def emit_usage(self, event: UsageEvent) -> _Stored:
        """Reports one provider call's usage, as the engine's ``Context::emit_usage``:
        counted in the run's totals (``resp.usage`` for the caller, added up across
        peers) and written to the run's stream like any event.

        Counted when called, so ``await ctx.emit_usage(...)`` (``async def``) and
        plain ``ctx.emit_usage(...)`` (``def``) both work."""
        if not isinstance(event, UsageEvent):
            raise TypeError(f"emit_usage takes a UsageEvent, got {type(event).__name__}")
        if not event.run_id:
            event = dataclasses.replace(event, run_id=self.run_id)
        _name, data = stream_payload(event)
        self._ref.record_usage(data)
        self.write_event_to_stream(event)
        return _STORED

    @property
    def usage(self) -> RunUsage:
        """The run's usage so far, the sub-runs it delegated to included."""
        return RunUsage._from_native(self._ref.usage)

    def set(self, key: str, value: Any) -> _Stored:
        """Stores ``value`` under ``key`` for later steps (and the caller, for public keys).

        The value is stored when ``set`` is called, so both ``await ctx.set(k, v)``
        (``async def`` steps) and plain ``ctx.set(k, v)`` (``def`` steps) work; a
        value that cannot be stored raises here, awaited or not."""
        self.set_sync(key, value)
        return _STORED

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        return self.get_sync(key, default)

    def set_sync(self, key: str, value: Any) -> None:
        """:meth:`set` for plain ``def`` steps."""
        if key.startswith("_"):
            self._ref.set_object(key, value)
            return
        try:
            encoded = _wire_json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise EncodeError(
                f"state key {key!r} holds {with_article(type(value).__name__)}, which is not "
                f"JSON-serializable ({exc}); exported state must be JSON, or use a key "
                "starting with '_' for values that stay in this process"
            ) from exc
        self._ref.set_json(key, encoded.encode())

    def get_sync(self, key: str, default: Any = None) -> Any:
        """:meth:`get` for plain ``def`` steps."""
        stored = self._ref.get(key)
        if stored is None:
            return default
        if key.startswith("_"):
            return stored
        return json.loads(stored)

    def exported_state(self) -> dict[str, Any]:
        """Every public key with its value."""
        return {key: json.loads(raw) for key, raw in self._ref.exported_state()}

    def __repr__(self) -> str:
        return f"Context(run_id={self.run_id!r}, node_id={self.node_id!r})"
