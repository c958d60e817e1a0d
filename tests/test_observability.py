"""Logs and traces: the Rust core's records reach Python's `logging` (logger
`blazen_peer`, with node, run, workflow and step on each record), and a call's
W3C trace context makes the peer's run a child span of the caller's."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from blazen_peer import (
    AuthenticationError,
    Context,
    PeerClient,
    PeerServer,
    StartEvent,
    StopEvent,
    WorkflowError,
    register_step,
)
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, STARTUP_TIMEOUT_SECS, read_line

PROBE = Path(__file__).with_name("tracing_probe.py")


def records(caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "blazen_peer" and needle in r.getMessage()]


async def test_runs_are_logged_with_node_run_workflow_and_step(
    caplog: pytest.LogCaptureFixture, step_ids: Any
) -> None:
    ok_id, fail_id = step_ids("ok"), step_ids("fail")

    async def ok(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=1)

    async def fail(ctx: Context, ev: StartEvent) -> StopEvent:
        raise ValueError("no good")

    register_step(ok_id, ok, accepts=[StartEvent])
    register_step(fail_id, fail, accepts=[StartEvent])
    caplog.set_level(logging.DEBUG, logger="blazen_peer")
    server = PeerServer("logged-node")
    address = await server.start()
    try:
        async with await PeerClient.connect(f"http://{address}", node_id="a") as client:
            assert await client.run_remote_workflow("wf-ok", [ok_id]) == 1
            with pytest.raises(WorkflowError):
                await client.run_remote_workflow("wf-fail", [fail_id])
    finally:
        await server.stop()

    (serving,) = records(caplog, "serving on")
    assert serving.levelno == logging.INFO and serving.node_id == "logged-node"  # type: ignore[attr-defined]
    started = records(caplog, "of workflow `wf-ok` started")
    (succeeded,) = records(caplog, "of workflow `wf-ok` succeeded")
    assert succeeded.levelno == logging.DEBUG
    assert started[0].run_id == succeeded.run_id  # type: ignore[attr-defined]
    assert succeeded.workflow == "wf-ok"  # type: ignore[attr-defined]
    (failed,) = records(caplog, "of workflow `wf-fail` ended StepFailed")
    assert failed.levelno == logging.WARNING
    assert failed.step == fail_id and failed.node_id == "logged-node"  # type: ignore[attr-defined]
    assert "no good" in failed.getMessage()
    assert records(caplog, "draining") and records(caplog, "stopped")


async def test_refused_calls_are_logged_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="blazen_peer")
    server = PeerServer("guarded", token="s3cret-token")
    address = await server.start()
    try:
        async with await PeerClient.connect(
            f"http://{address}", node_id="a", token="wrong-token"
        ) as client:
            with pytest.raises(AuthenticationError):
                await client.run_remote_workflow("wf", ["my_app::analyze"], {})
    finally:
        await server.stop()
    (refused,) = records(caplog, "refused a call from 127.0.0.1")
    assert refused.levelno == logging.WARNING
    assert "wrong token" in refused.getMessage()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "s3cret-token" not in text and "wrong-token" not in text


async def test_debug_records_stay_off_when_the_logger_is_at_warning(
    caplog: pytest.LogCaptureFixture, step_ids: Any
) -> None:
    ok_id = step_ids("ok")

    async def ok(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=1)

    register_step(ok_id, ok, accepts=[StartEvent])
    caplog.set_level(logging.WARNING, logger="blazen_peer")
    server = PeerServer("quiet-node")
    address = await server.start()
    try:
        async with await PeerClient.connect(f"http://{address}", node_id="a") as client:
            assert await client.run_remote_workflow("wf", [ok_id]) == 1
    finally:
        await server.stop()
    assert not [
        r for r in caplog.records if r.name == "blazen_peer" and r.levelno < logging.WARNING
    ]


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_remote_run_is_a_child_span_of_the_callers_span_on_both_sides(
    tmp_path: Path,
) -> None:
    pytest.importorskip(
        "opentelemetry.sdk", reason="needs opentelemetry-sdk (pip install '.[test]')"
    )
    peer_spans, caller_spans = tmp_path / "peer.jsonl", tmp_path / "caller.jsonl"
    env = {**os.environ, "BLAZEN_PEER_TRACING": "1"}
    peer = subprocess.Popen(  # noqa: ASYNC220 (read with a deadline by read_line)
        [sys.executable, str(PROBE), "serve", str(peer_spans)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        line = read_line(peer, STARTUP_TIMEOUT_SECS)
        assert line.startswith("LISTENING "), line
        caller = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROBE),
            "call",
            f"http://{line.split()[1]}",
            str(caller_spans),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
        )
        out, _ = await asyncio.wait_for(caller.communicate(), timeout=30)
        assert caller.returncode == 0
    finally:
        assert peer.stdin is not None
        peer.stdin.close()
        peer.wait(timeout=EXIT_TIMEOUT_SECS)
        assert peer.stdout is not None
        peer.stdout.close()

    calls = [s for s in read_spans(caller_spans) if s["kind"] == "CLIENT"]
    parents = {s["span_id"]: s for s in read_spans(caller_spans) if s["name"] == "parent"}
    runs = [s for s in read_spans(peer_spans) if s["kind"] == "SERVER"]
    steps = [s for s in read_spans(peer_spans) if s["name"].startswith("blazen_peer.step")]
    assert [c["name"] for c in calls] == [
        "blazen_peer.call analyze",
        "blazen_peer.call boom",
        "blazen_peer.call seen",
    ]
    assert len(runs) == 3
    for call, run in zip(calls, runs, strict=True):
        # The caller's span -> the call -> the run on the other process.
        assert call["parent_id"] in parents
        assert run["trace_id"] == call["trace_id"]
        assert run["parent_id"] == call["span_id"]
        assert run["attributes"]["blazen_peer.node_id"] == "traced-peer"
        assert run["attributes"]["blazen_peer.caller_node_id"] == "traced-caller"
    analyze, boom, seen = runs
    assert analyze["status"] == "UNSET" and boom["status"] == "ERROR"
    assert boom["attributes"]["blazen_peer.outcome"] == "StepFailed"
    assert calls[1]["status"] == "ERROR"
    analyze_steps = [s["name"] for s in steps if s["parent_id"] == analyze["span_id"]]
    assert analyze_steps == ["blazen_peer.step analyze", "blazen_peer.step summarize"]
    # A step sees its run's span as the context it works under.
    traceparent, _state = json.loads(out)
    assert traceparent.split("-")[1:3] == [seen["trace_id"], seen["span_id"]]
