"""Metrics: `blazen-peer serve --metrics-port` scraped over HTTP, and the
OpenTelemetry instruments read in-process by an application's own reader.

The served peer runs in its own process (tests/metrics_peer.py); the test waits
for its readiness line, makes calls that succeed, fail, time out and are
refused, then scrapes /metrics with urllib and parses it with
prometheus_client's parser.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from blazen_peer import (
    AuthenticationError,
    Context,
    PeerClient,
    PeerServer,
    PeerTimeoutError,
    StartEvent,
    StopEvent,
    UnknownStepError,
    WorkflowError,
    step,
)
from conftest import REPO_ROOT
from test_cli import CLI, CLI_TIMEOUT_SECS, clean_env, free_port, start_serve

parser = pytest.importorskip(
    "prometheus_client.parser", reason="needs prometheus_client (the metrics or test extra)"
)
sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics", reason="needs opentelemetry-sdk")
sdk_export = pytest.importorskip("opentelemetry.sdk.metrics.export")
otel_metrics = pytest.importorskip("opentelemetry.metrics")

METRICS_PEER = "tests/metrics_peer.py"
REF_BYTES = 1000  # tests/metrics_peer.py keeps a ref of this size
TOKEN = "metrics-token"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# Bounds the wait for the server to notice a closed connection (it takes milliseconds).
SETTLE_SECS = 10.0


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:PORT/metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_when(port: int, settled: Callable[[Samples], bool]) -> Samples:
    """A scrape in which ``settled`` holds, or the last one after SETTLE_SECS.

    The server sees a client's socket close only when its kernel reports it, a
    moment after ``close()`` returns, so gauges of connections lag the client."""
    deadline = time.monotonic() + SETTLE_SECS
    while True:
        samples = scrape(port)
        if settled(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample of ``name`` whose labels include ``labels`` (exactly one)."""
    wanted = set(labels.items())
    found = [v for (n, have), v in samples.items() if n == name and wanted <= have]
    assert len(found) == 1, f"{name} {labels}: {len(found)} samples in {sorted(samples)}"
    return found[0]


@pytest.fixture
def metrics_peer() -> Iterator[tuple[str, int]]:
    """`blazen-peer serve tests/metrics_peer.py --metrics-port PORT` with a token."""
    port = free_port()
    served = start_serve(
        METRICS_PEER,
        *("--listen", "127.0.0.1:0", "--node-id", "metrics-node"),
        *("--token-env", "METRICS_TOKEN", "--metrics-port", str(port)),
        env=clean_env(METRICS_TOKEN=TOKEN),
    )
    try:
        yield served.host_port, port
    finally:
        assert served.stop() == 0, served.stderr()


async def test_serve_metrics_port_serves_runs_refs_connections_and_refusals(
    metrics_peer: tuple[str, int],
) -> None:
    host_port, port = metrics_peer
    node = {"blazen_peer_node_id": "metrics-node"}
    before = scrape(port)
    assert value(before, "blazen_peer_runs_total", **node, blazen_peer_outcome="succeeded") == 0
    assert value(before, "blazen_peer_connection_count", **node) == 0

    client = await PeerClient.connect(f"http://{host_port}", node_id="caller", token=TOKEN)
    try:
        for _ in range(3):
            assert await client.run_remote_workflow("ok", ["metrics::ok"], None) == "ok"
        with pytest.raises(WorkflowError):
            await client.run_remote_workflow("boom", ["metrics::boom"], None)
        with pytest.raises(PeerTimeoutError):
            await client.run_remote_workflow("slow", ["metrics::slow"], None, timeout_secs=1)
        key = await client.run_remote_workflow("keep", ["metrics::keep"], None)
        with pytest.raises(UnknownStepError):
            await client.run_remote_workflow("nope", ["metrics::missing"], None)
        intruder = await PeerClient.connect(
            f"http://{host_port}", node_id="intruder", token="wrong"
        )
        try:
            with pytest.raises(AuthenticationError):
                await intruder.run_remote_workflow("ok", ["metrics::ok"], None)
        finally:
            await intruder.close()

        # The intruder's connection is closed; wait until the server has seen it go.
        during = scrape_when(
            port, lambda samples: value(samples, "blazen_peer_connection_count", **node) == 1
        )
        runs = "blazen_peer_runs_total"
        assert value(during, runs, **node, blazen_peer_outcome="succeeded") == 4
        assert value(during, runs, **node, blazen_peer_outcome="failed") == 1
        assert value(during, runs, **node, blazen_peer_outcome="timed_out") == 1
        assert value(during, runs, **node, blazen_peer_outcome="cancelled") == 0
        duration = "blazen_peer_run_duration_seconds"
        for outcome, count in [("succeeded", 4), ("failed", 1), ("timed_out", 1)]:
            labels = {**node, "blazen_peer_outcome": outcome}
            assert value(during, f"{duration}_count", **labels) == count
            assert value(during, f"{duration}_bucket", **labels, le="+Inf") == count
        # The run cut at its deadline counts in no bucket below its deadline.
        timed_out = {**node, "blazen_peer_outcome": "timed_out"}
        assert value(during, f"{duration}_bucket", **timed_out, le="0.5") == 0
        assert value(during, f"{duration}_sum", **timed_out) >= 1.0
        assert value(during, "blazen_peer_run_active", **node) == 0
        assert value(during, "blazen_peer_session_ref_count", **node) == 1
        assert value(during, "blazen_peer_session_ref_size_bytes", **node) == REF_BYTES
        assert value(during, "blazen_peer_connection_count", **node) == 1
        refusals = "blazen_peer_refusals_total"
        assert value(during, refusals, **node, blazen_peer_reason="invalid_request") == 1
        assert value(during, refusals, **node, blazen_peer_reason="unauthenticated") >= 1
        assert value(during, refusals, **node, blazen_peer_reason="busy") == 0

        assert await client.release_session_ref(key)
    finally:
        await client.close()
    after = scrape(port)
    assert value(after, "blazen_peer_session_ref_count", **node) == 0
    assert value(after, "blazen_peer_session_ref_size_bytes", **node) == 0
    # Counters only grow: a second scrape replays no run twice.
    assert value(after, "blazen_peer_run_duration_seconds_count", **timed_out) == 1
    assert value(after, "blazen_peer_connection_accepted_total", **node) >= 2


def test_metrics_port_in_use_is_refused_naming_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *CLI,
                "serve",
                METRICS_PEER,
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                "n",
                "--metrics-port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=clean_env(),
            timeout=CLI_TIMEOUT_SECS,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"--metrics-port {port}: port {port} on 127.0.0.1 is in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stderr


@pytest.mark.parametrize(
    "hidden", ["opentelemetry.exporter.prometheus", "prometheus_client", "opentelemetry.sdk"]
)
def test_metrics_port_without_the_packages_says_what_to_install(hidden: str) -> None:
    # None in sys.modules makes the import fail as if the package were absent.
    program = (
        "import sys\n"
        f"sys.modules[{hidden!r}] = None\n"
        "from blazen_peer.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            "serve",
            METRICS_PEER,
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "n",
            "--metrics-port",
            str(free_port()),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean_env(),
        timeout=CLI_TIMEOUT_SECS,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"--metrics-port needs OpenTelemetry's Prometheus exporter, and {hidden}" in (
        result.stderr
    )
    assert "pip install opentelemetry-sdk opentelemetry-exporter-prometheus" in result.stderr
    assert "Traceback" not in result.stderr


# --- in-process: the application's own MeterProvider ---


@pytest.fixture(scope="module")
def memory_reader() -> Any:
    """An in-memory reader on the process's MeterProvider, set here once (the
    API allows one per process; no other test sets one)."""
    current = otel_metrics.get_meter_provider()
    if isinstance(current, sdk_metrics.MeterProvider):
        pytest.fail(f"another test set a MeterProvider ({current!r}); this one needs its own")
    reader = sdk_export.InMemoryMetricReader()
    otel_metrics.set_meter_provider(sdk_metrics.MeterProvider(metric_readers=[reader]))
    return reader


def points(reader: Any, node_id: str) -> dict[str, list[Any]]:
    """Data points of each blazen_peer instrument for ``node_id``, from one collection."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != "blazen_peer":
                continue
            for metric in scope_metrics.metrics:
                found[metric.name] = [
                    point
                    for point in metric.data.data_points
                    if point.attributes.get("blazen_peer.node_id") == node_id
                ]
    return found


def by_outcome(found: dict[str, list[Any]], name: str) -> dict[str, Any]:
    return {point.attributes["blazen_peer.outcome"]: point for point in found[name]}


async def test_an_embedding_apps_reader_gets_the_instruments(
    memory_reader: Any, step_ids: Callable[[str], str]
) -> None:
    ok_id, boom_id = step_ids("ok"), step_ids("boom")

    @step(ok_id)
    async def ok(ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.session_refs.insert(b"x" * 10)  # dropped with its run
        return StopEvent(result=1)

    @step(boom_id)
    def boom(ctx: Context, ev: StartEvent) -> StopEvent:
        raise ValueError("boom")

    node_id = f"in-process-{uuid.uuid4().hex[:8]}"
    async with PeerServer(node_id) as server:
        address = await server.start("127.0.0.1:0")
        async with await PeerClient.connect(f"http://{address}", node_id="app") as client:
            for _ in range(2):
                assert await client.run_remote_workflow("ok", [ok_id], None) == 1
            with pytest.raises(WorkflowError):
                await client.run_remote_workflow("boom", [boom_id], None)

            first = points(memory_reader, node_id)
            runs = by_outcome(first, "blazen_peer.runs")
            assert (runs["succeeded"].value, runs["failed"].value) == (2, 1)
            assert runs["timed_out"].value == runs["cancelled"].value == 0
            durations = by_outcome(first, "blazen_peer.run.duration")
            assert durations["succeeded"].count == 2
            assert durations["failed"].count == 1
            assert sum(durations["succeeded"].bucket_counts) == 2
            # The native server's buckets, not the SDK's default (milliseconds) ones.
            assert durations["succeeded"].explicit_bounds[0] == 0.001
            assert durations["succeeded"].explicit_bounds[-1] == 300.0
            assert first["blazen_peer.run.active"][0].value == 0
            assert first["blazen_peer.connection.count"][0].value == 1
            assert first["blazen_peer.session_ref.count"][0].value == 0
            refusals = {
                point.attributes["blazen_peer.reason"]: point.value
                for point in first["blazen_peer.refusals"]
            }
            assert refusals == {
                "busy": 0,
                "draining": 0,
                "unauthenticated": 0,
                "invalid_request": 0,
                "connection_limit": 0,
            }

            assert await client.run_remote_workflow("ok", [ok_id], None) == 1
            second = points(memory_reader, node_id)
            # Cumulative: each run counted once, however many collections.
            assert by_outcome(second, "blazen_peer.run.duration")["succeeded"].count == 3
            assert by_outcome(second, "blazen_peer.run.duration")["failed"].count == 1
            assert by_outcome(second, "blazen_peer.runs")["succeeded"].value == 3
