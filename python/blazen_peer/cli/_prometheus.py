"""``serve --metrics-port``: the peer's metrics as Prometheus text on ``/metrics``.

OpenTelemetry's Prometheus reader feeds ``prometheus_client``, whose own HTTP
server (a daemon thread) answers scrapes; each scrape collects, so it reads
the native server's counters at that moment.
"""

from __future__ import annotations

import errno
from typing import Any

from .. import _metrics
from ..errors import ValidationError

INSTALL_HINT = (
    "pip install opentelemetry-sdk opentelemetry-exporter-prometheus (the metrics extra: "
    'python3 -m pip install ".[metrics]" in a clone of blazen-peer)'
)


class MetricsEndpoint:
    """The HTTP server answering scrapes, and the provider it reads."""

    def __init__(self, http_server: Any, provider: Any) -> None:
        self._http_server = http_server
        self._provider = provider

    @property
    def port(self) -> int:
        port: int = self._http_server.server_address[1]
        return port

    def close(self) -> None:
        self._http_server.shutdown()
        self._http_server.server_close()
        self._provider.shutdown()


def serve_metrics(host: str, port: int, node_id: str) -> MetricsEndpoint:
    """Sets a MeterProvider with a Prometheus reader as the global one and serves
    ``/metrics`` on ``host:port``; refuses, naming the flag, when it cannot."""
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import start_http_server
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise ValidationError(
            f"--metrics-port needs OpenTelemetry's Prometheus exporter, and {missing} is not "
            f"installed: {INSTALL_HINT}"
        ) from None
    if not _metrics.INSTALLED:
        raise ValidationError(
            "--metrics-port has nothing to serve while BLAZEN_PEER_METRICS=0: unset it"
        )
    try:
        http_server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ValidationError(
                f"--metrics-port {port}: port {port} on {host} is in use by another process; "
                "pick another port (or stop that process)"
            ) from None
        raise ValidationError(f"--metrics-port {port}: cannot listen on {host}: {exc}") from None
    # The reader registers with prometheus_client's default registry, which the
    # HTTP server serves (with the process's CPU, memory and GC figures).
    reader = PrometheusMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "blazen-peer", "service.instance.id": node_id}),
    )
    metrics.set_meter_provider(provider)
    return MetricsEndpoint(http_server, provider)
