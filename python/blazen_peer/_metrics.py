"""OpenTelemetry metrics of the peers this process serves, when OpenTelemetry is installed.

Every figure comes from counters the native server keeps anyway (atomics,
updated as calls come and go); the instruments read them only when the
application's MeterProvider collects, so serving calls pays nothing for
metrics, with or without a provider. The application picks the exporter: it
sets a MeterProvider (``blazen-peer serve --metrics-port`` sets one with a
Prometheus reader). ``BLAZEN_PEER_METRICS=0`` turns metrics off.

Instruments (meter ``blazen_peer``), each with ``blazen_peer.node_id``:

- ``blazen_peer.runs`` (counter, ``{run}``): runs that ended, by ``blazen_peer.outcome``
  (succeeded, failed, cancelled, timed_out);
- ``blazen_peer.run.duration`` (histogram, ``s``): how long runs took, by outcome;
- ``blazen_peer.run.active`` (up-down counter, ``{run}``): runs in progress;
- ``blazen_peer.session_ref.count`` (``{ref}``) and ``blazen_peer.session_ref.size``
  (``By``): session refs held and their bytes;
- ``blazen_peer.connection.count`` (up-down counter, ``{connection}``): open connections;
  ``blazen_peer.connection.accepted`` (counter): connections accepted;
- ``blazen_peer.refusals`` (counter, ``{refusal}``): calls and connections turned away
  before anything ran, by ``blazen_peer.reason`` (busy, draining, unauthenticated,
  invalid_request, connection_limit).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Protocol

from . import _native

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError:  # metrics are optional
    metrics = None  # type: ignore[assignment]

INSTALLED = metrics is not None and os.environ.get("BLAZEN_PEER_METRICS", "1") != "0"
"""False when nothing here can do anything: servers skip it altogether."""

METER_NAME = "blazen_peer"
OUTCOMES = ("succeeded", "failed", "cancelled", "timed_out")


class _Served(Protocol):
    """What a tracked server offers (a ``PeerServer``)."""

    @property
    def node_id(self) -> str: ...

    def _native_metrics(self) -> _native.ServerMetrics: ...


class _Replay:
    """What of a server's duration histogram was already recorded, by outcome."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.seconds: dict[str, list[float]] = {}


_lock = threading.Lock()
# Held while a collection replays durations: two at once would record runs twice.
_replay_lock = threading.Lock()
# Servers started in this process, until they are garbage: a stopped server's
# figures stay (counters must not go back), a dropped one's series end.
_servers: weakref.WeakKeyDictionary[_Served, _Replay] = weakref.WeakKeyDictionary()
_duration: Any = None


def track(server: _Served) -> None:
    """Reports ``server`` in the instruments from now on (called when it starts)."""
    global _duration
    with _lock:
        if _duration is None:
            _duration = _create_instruments(server._native_metrics().run_duration_bounds)
        _servers.setdefault(server, _Replay())


def _create_instruments(duration_bounds: list[float]) -> Any:
    """Creates the instruments once per process. Through the global meter
    provider's proxy, so a provider set later still gets them."""
    meter = metrics.get_meter(METER_NAME, _version())
    meter.create_observable_counter(
        "blazen_peer.runs",
        [_observe_runs],
        unit="{run}",
        description="Runs that ended, by outcome.",
    )
    meter.create_observable_up_down_counter(
        "blazen_peer.run.active",
        [_gauge(lambda figures: figures.runs_in_flight)],
        unit="{run}",
        description="Runs in progress.",
    )
    meter.create_observable_up_down_counter(
        "blazen_peer.session_ref.count",
        [_gauge(lambda figures: figures.session_refs)],
        unit="{ref}",
        description="Session refs held.",
    )
    meter.create_observable_up_down_counter(
        "blazen_peer.session_ref.size",
        [_gauge(lambda figures: figures.session_ref_bytes)],
        unit="By",
        description="Bytes held by session refs.",
    )
    meter.create_observable_up_down_counter(
        "blazen_peer.connection.count",
        [_gauge(lambda figures: figures.connections_open)],
        unit="{connection}",
        description="Open connections.",
    )
    meter.create_observable_counter(
        "blazen_peer.connection.accepted",
        [_gauge(lambda figures: figures.connections_accepted)],
        unit="{connection}",
        description="Connections accepted (those refused at max_connections excluded).",
    )
    meter.create_observable_counter(
        "blazen_peer.refusals",
        [_observe_refusals],
        unit="{refusal}",
        description="Calls and connections turned away before anything ran, by reason.",
    )
    name, unit, description = "blazen_peer.run.duration", "s", "How long runs took, by outcome."
    try:
        # The native server's buckets: with the SDK's defaults (meant for
        # milliseconds) most runs would share the first bucket.
        return meter.create_histogram(
            name, unit, description, explicit_bucket_boundaries_advisory=duration_bounds
        )
    except TypeError:  # opentelemetry-api before 1.23 takes no advice
        return meter.create_histogram(name, unit, description)


def _snapshot() -> list[tuple[_Served, _Replay, _native.ServerMetrics]]:
    with _lock:
        served = list(_servers.items())
    return [(server, replay, server._native_metrics()) for server, replay in served]


_Figure = Callable[[_native.ServerMetrics], int]
_Callback = Callable[["CallbackOptions"], Iterable["Observation"]]


def _gauge(read: _Figure) -> _Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(read(figures), {"blazen_peer.node_id": server.node_id})
            for server, _, figures in _snapshot()
        ]

    return observe


def _observe_runs(options: CallbackOptions) -> Iterable[Observation]:
    observations = []
    with _replay_lock:
        # Read under the lock: figures read earlier than the last replay's
        # would make it record those runs again.
        served = _snapshot()
        for server, replay, figures in served:
            _replay_durations(server.node_id, replay, figures)
    for server, _, figures in served:
        node = {"blazen_peer.node_id": server.node_id}
        ended = {
            "succeeded": figures.runs_succeeded,
            "failed": figures.runs_failed,
            "cancelled": figures.runs_cancelled,
            "timed_out": figures.runs_timed_out,
        }
        for outcome, value in ended.items():
            observations.append(Observation(value, {**node, "blazen_peer.outcome": outcome}))
    return observations


def _observe_refusals(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(value, {"blazen_peer.node_id": server.node_id, "blazen_peer.reason": reason})
        for server, _, figures in _snapshot()
        for reason, value in figures.refusals.items()
    ]


def _replay_durations(node_id: str, replay: _Replay, figures: _native.ServerMetrics) -> None:
    """Records the runs that ended since the last collection into the histogram.

    The API has no asynchronous histogram, and recording each run as it ends
    would cost every run a hand-off to Python. So the native server counts runs
    and sums their seconds per bucket, and here each bucket's new runs are
    recorded at their mean duration: that lands them in their bucket (the mean
    of values within a bucket is within it) and keeps the sum exact. This runs
    in an observable callback, which the SDK calls before it reads synchronous
    instruments, so a collection includes every run that ended before it.
    """
    bounds = figures.run_duration_bounds
    for outcome, counts in figures.run_duration_counts.items():
        seconds = figures.run_duration_seconds[outcome]
        seen = replay.counts.get(outcome, [0] * len(counts))
        seen_seconds = replay.seconds.get(outcome, [0.0] * len(counts))
        attributes = {"blazen_peer.node_id": node_id, "blazen_peer.outcome": outcome}
        for index, (count, total) in enumerate(zip(counts, seconds, strict=True)):
            new = count - seen[index]
            if new <= 0:
                continue
            # Count and sum are two atomics: a run read half-way could push the
            # mean past the bucket's edge, so it is kept inside.
            low = math.nextafter(bounds[index - 1], math.inf) if index > 0 else 0.0
            high = bounds[index] if index < len(bounds) else math.inf
            mean = min(max((total - seen_seconds[index]) / new, low), high)
            for _ in range(new):
                _duration.record(mean, attributes)
        replay.counts[outcome] = list(counts)
        replay.seconds[outcome] = list(seconds)


def _version() -> str:
    try:
        return metadata.version("blazen-peer")
    except metadata.PackageNotFoundError:
        return "0"
