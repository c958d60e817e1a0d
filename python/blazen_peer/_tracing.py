"""OpenTelemetry spans for remote runs, when OpenTelemetry is installed.

The caller opens a CLIENT span per call and sends its W3C ``traceparent`` in
the call's metadata; the peer opens a SERVER span per run as that span's
child, and each step of the run a span under it. So one trace shows the
caller, the run on the peer and its steps, on both machines.

Nothing here runs unless the ``opentelemetry`` API is importable and a
tracer provider has been set (``trace.set_tracer_provider``): without one
every span would be a no-op, and the calls should not pay for them.
``BLAZEN_PEER_TRACING=0`` turns tracing off regardless.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # tracing is optional
    trace = None  # type: ignore[assignment]

INSTALLED = trace is not None and os.environ.get("BLAZEN_PEER_TRACING", "1") != "0"
"""False when nothing here can do anything: callers skip it on their hot paths."""
# Always W3C, whatever global propagator the application configured: it is
# what the peer protocol carries.
_W3C = TraceContextTextMapPropagator() if INSTALLED else None

TraceHeaders = tuple[str | None, str | None]
_NO_HEADERS: TraceHeaders = (None, None)


def active() -> bool:
    """True when spans would be recorded: the API is installed and a real
    tracer provider (not the default proxy) is set."""
    return INSTALLED and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _tracer() -> Any:
    return trace.get_tracer("blazen_peer")


@contextlib.contextmanager
def client_span(
    workflow_name: str, step_ids: Sequence[str], address: str
) -> Iterator[TraceHeaders]:
    """A CLIENT span around one call; yields the headers that carry it."""
    with _tracer().start_as_current_span(
        f"blazen_peer.call {workflow_name}",
        kind=SpanKind.CLIENT,
        attributes={
            "blazen_peer.workflow": workflow_name,
            "blazen_peer.steps": list(step_ids),
            "server.address": address,
        },
    ):
        yield current_headers()


def mark_failed(message: str | None) -> None:
    """Marks the current span failed when a run came back with an error."""
    if message is not None:
        trace.get_current_span().set_status(Status(StatusCode.ERROR, message))


def current_headers() -> TraceHeaders:
    """The W3C headers of the current span, if tracing is active."""
    if not active():
        return _NO_HEADERS
    carrier: dict[str, str] = {}
    assert _W3C is not None
    _W3C.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


class RunSpan:
    """A run's SERVER span on the peer; the native server ends it."""

    __slots__ = ("_span", "context")

    def __init__(self, span: Any) -> None:
        self._span = span
        carrier: dict[str, str] = {}
        assert _W3C is not None
        _W3C.inject(carrier, context=trace.set_span_in_context(span))
        parent = carrier.get("traceparent")
        # Read by the native server: the context the run's steps work under.
        self.context: tuple[str, str | None] | None = (
            (parent, carrier.get("tracestate")) if parent is not None else None
        )

    def end(self, failure_kind: str | None, message: str | None) -> None:
        if failure_kind is not None:
            self._span.set_attribute("blazen_peer.outcome", failure_kind)
            self._span.set_status(Status(StatusCode.ERROR, message))
        self._span.end()


def run_started(
    workflow_name: str,
    run_id: str,
    node_id: str,
    traceparent: str | None,
    tracestate: str | None,
    caller_node_id: str | None,
) -> RunSpan | None:
    """Opens the span of a run starting on this peer (called by the native server)."""
    if not active():
        return None
    parent = _extract(traceparent, tracestate)
    attributes = {
        "blazen_peer.workflow": workflow_name,
        "blazen_peer.run_id": run_id,
        "blazen_peer.node_id": node_id,
    }
    if caller_node_id is not None:
        attributes["blazen_peer.caller_node_id"] = caller_node_id
    span = _tracer().start_span(
        f"blazen_peer.run {workflow_name}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
    return RunSpan(span)


@contextlib.contextmanager
def step_span(step_name: str, headers: TraceHeaders | None) -> Iterator[None]:
    """Makes a step's span current while it runs, under its run's span."""
    if headers is None or not active():
        yield
        return
    parent = _extract(*headers)
    with _tracer().start_as_current_span(f"blazen_peer.step {step_name}", context=parent):
        yield


@contextlib.contextmanager
def starting_step(step_name: str, headers: TraceHeaders | None) -> Iterator[Any]:
    """While an async step's task is created: its span is current, so the task
    (which copies the context when created) runs under it. Yields the function
    that ends the span, for the task's done callback; None when not tracing."""
    if headers is None or not active():
        yield None
        return
    span = _tracer().start_span(f"blazen_peer.step {step_name}", context=_extract(*headers))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span.end
    except BaseException:
        span.end()
        raise
    finally:
        otel_context.detach(token)


def _extract(traceparent: str | None, tracestate: str | None) -> Any:
    if traceparent is None:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    assert _W3C is not None
    return _W3C.extract(carrier)
