"""A peer that goes away and comes back, and a process that forks.

(A peer killed during a call failing it with TransportError is in test_client.py.)
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import pytest
from blazen_peer import PeerClient, TransportError
from conftest import TESTS_DIR, PeerProcess, new_tag, wait_started
from stream_events import Blob

FORK_CHILD = TESTS_DIR / "fork_child.py"
FAIL_FAST_SECS = 3.0


async def test_calls_fail_fast_while_the_peer_is_down_and_the_same_client_recovers(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = await asyncio.to_thread(spawn_peer)
    async with await PeerClient.connect(peer.address, node_id="node-a") as client:
        first = await client.run_remote_workflow("wf", ["test::echo"], 1)
        await asyncio.to_thread(peer.kill)
        for attempt in range(3):
            started = time.monotonic()
            with pytest.raises(TransportError):
                await asyncio.wait_for(
                    client.run_remote_workflow("wf", ["test::echo"], 2, timeout_secs=30), 10
                )
            elapsed = time.monotonic() - started
            assert elapsed < FAIL_FAST_SECS, f"call {attempt} while down took {elapsed:.2f}s"
        # The peer restarts on the same address; the next call of the same client works.
        restarted = await asyncio.to_thread(spawn_peer, peer.host_port)
        assert restarted.host_port == peer.host_port
        second = await asyncio.wait_for(client.run_remote_workflow("wf", ["test::echo"], 3), 10)
        assert second["data"] == 3
        assert second["run_id"] != first["run_id"]
        # And keeps working, streams included.
        stream = client.stream_sub_workflow("wf", ["stream::progress"], {"n": 2})
        events = [event async for event in stream]
        assert len(events) == 3
        assert stream.response is not None
        assert stream.response.result == {"written": 2}


async def test_a_peer_killed_during_a_stream_fails_the_iteration_with_transport_error(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peer = await asyncio.to_thread(spawn_peer)
    async with await PeerClient.connect(peer.address, node_id="node-a") as client:
        tag = new_tag()
        stream = client.stream_sub_workflow(
            # 64 KiB events: what the peer sent before it died is read quickly.
            "wf",
            ["stream::produce"],
            {"tag": tag, "count": 10**9, "size": 64 * 1024},
        )
        events = aiter(stream)
        first = await asyncio.wait_for(anext(events), 10)
        assert isinstance(first, Blob)
        await wait_started(client, tag)
        await asyncio.to_thread(peer.kill)
        killed_at = time.monotonic()
        with pytest.raises(TransportError):
            async with asyncio.timeout(15):
                async for _ in events:
                    pass
        elapsed = time.monotonic() - killed_at
        assert elapsed < 5, f"the stream noticed the dead peer after {elapsed:.2f}s"
        await stream.aclose()


async def test_after_fork_the_parents_client_and_server_refuse_and_new_ones_work(
    peer_address: str,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FORK_CHILD),
        peer_address,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 50)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    report = f"{text}\nstderr:\n{err.decode()}"
    assert proc.returncode == 0, report
    child_exit = "<missing>"
    outcomes: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CHILD-EXIT "):
            child_exit = line.removeprefix("CHILD-EXIT ")
        else:
            who, check, outcome = line.split(" ", 2)
            outcomes[f"{who} {check}"] = outcome
    assert child_exit == "0", report
    for check in ("old-blocking-call", "old-async-call", "old-server-start"):
        outcome = outcomes.get(f"CHILD {check}", "<missing>")
        assert outcome.startswith("ValidationError ") and "fork" in outcome, (check, report)
    assert outcomes.get("CHILD new-client") == "ok 'child'", report
    assert outcomes.get("CHILD new-server") == "ok ('served', True)", report
    assert outcomes.get("PARENT call") == "ok 2", report
