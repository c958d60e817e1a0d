"""Placement by labels: a pool of three labelled peers, each in its own process
(tests/policy_peer.py); calls that require a label run only where it matches,
counted on each peer, also while the matching member drains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blazen_peer import PeerClient, PeerPool, PlacementError, TransportError
from conftest import POLICY_PEER, PeerProcess, start_peer_process

pytestmark = pytest.mark.timeout(120)

WAIT_SECS = 30.0
LABELS = {
    "node-eu": ["--label", "region=eu-west", "--label", "gpu=h100"],
    "node-us": ["--label", "region=us-east"],
    "node-ap": ["--label", "region=ap-south", "--label", "gpu=h100"],
}


@pytest.fixture
def labelled(tmp_path: Path) -> Iterator[dict[str, PeerProcess]]:
    peers = {
        node: start_peer_process(
            tmp_path / f"{node}.txt", "--node-id", node, *labels, script=POLICY_PEER
        )
        for node, labels in LABELS.items()
    }
    yield peers
    for peer in peers.values():
        peer.stop()


async def calls_on(peer: PeerProcess) -> int:
    client = await PeerClient.connect(peer.address, node_id="parent")
    try:
        report = await client.run_remote_workflow("report", ["policy::report"], {})
        return int(report["calls"])
    finally:
        await client.close()


async def test_calls_requiring_a_label_land_only_on_matching_members(
    labelled: dict[str, PeerProcess],
) -> None:
    addresses = [peer.address for peer in labelled.values()]
    async with await PeerPool.connect(addresses, node_id="parent") as pool:
        await pool.wait_for_healthy(3, timeout_secs=WAIT_SECS)
        assert {status.node_id: status.labels.get("region") for status in pool.peers} == {
            "node-eu": "eu-west",
            "node-us": "us-east",
            "node-ap": "ap-south",
        }
        ran_on = await asyncio.gather(
            *(
                pool.run_remote_workflow(
                    "count", ["placement::count"], {}, require={"region": "eu-west"}
                )
                for _ in range(6)
            )
        )
        assert set(ran_on) == {"node-eu"}
        # Two members have a gpu: the calls go to those two only.
        gpu = await asyncio.gather(
            *(
                pool.run_remote_workflow("count", ["placement::count"], {}, require={"gpu": "h100"})
                for _ in range(6)
            )
        )
        assert set(gpu) <= {"node-eu", "node-ap"}
        counts = {node: await calls_on(peer) for node, peer in labelled.items()}
        assert counts["node-us"] == 0
        assert counts["node-eu"] + counts["node-ap"] == 12
        assert counts["node-eu"] >= 6

        with pytest.raises(PlacementError) as caught:
            await pool.run_remote_workflow(
                "count", ["placement::count"], {}, require={"region": "mars"}
            )
        err = caught.value
        assert err.require == {"region": "mars"}
        assert {labels["region"] for labels in err.offered.values()} == {
            "eu-west",
            "us-east",
            "ap-south",
        }
        assert "region" in str(err) and "mars" in str(err) and "us-east" in str(err)


async def test_while_the_matching_member_drains_calls_fail_and_never_go_elsewhere(
    labelled: dict[str, PeerProcess],
) -> None:
    eu = labelled["node-eu"]
    addresses = [peer.address for peer in labelled.values()]
    direct = await PeerClient.connect(eu.address, node_id="parent")
    try:
        async with await PeerPool.connect(addresses, node_id="parent") as pool:
            await pool.wait_for_healthy(3, timeout_secs=WAIT_SECS)
            # A run in progress keeps node-eu draining once it is told to stop.
            held = pool.stream_sub_workflow(
                "hold", ["placement::hold"], {}, require={"region": "eu-west"}
            )
            async with held:
                entered = await anext(held)
                assert entered.event_type == "policy.Entered"  # type: ignore[attr-defined]
                assert eu.proc.stdin is not None
                eu.proc.stdin.close()  # the peer's signal to stop: it drains
                deadline = time.monotonic() + WAIT_SECS
                while await direct.health() != "NOT_SERVING":
                    assert time.monotonic() < deadline, "node-eu did not start draining"
                    await asyncio.sleep(0.01)
                for _ in range(3):
                    with pytest.raises(TransportError) as caught:
                        await pool.run_remote_workflow(
                            "count", ["placement::count"], {}, require={"region": "eu-west"}
                        )
                    assert caught.value.started is False
                    assert "eu-west" in str(caught.value)
            # Leaving the stream cancels the held run; node-eu finishes draining.
    finally:
        await direct.close()
    assert eu.stop() == 0, eu.stderr()
    assert await calls_on(labelled["node-us"]) == 0
    assert await calls_on(labelled["node-ap"]) == 0
