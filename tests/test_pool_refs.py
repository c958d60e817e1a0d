"""A pool and the values its members hold: uploads go to a member that runs the steps
they are for, and calls whose input names a ref go to the member holding it (any
other member's step would get RefNotFoundError). Peers are tests/peer_app.py
processes; `upload::describe` (tests/steps_upload.py) reads the ref in the step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from blazen_peer import PeerPool, RefLifetime, ValidationError
from conftest import PeerProcess
from test_pool import nodes, open_pool

CALLS = 12


async def test_calls_naming_an_uploaded_ref_go_to_the_member_holding_it(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peers = await nodes(spawn_peer, "p1", "p2", "p3")
    async with await open_pool(peers) as pool:
        ref = await pool.put_session_ref(b"held by one member", step_ids=["upload::describe"])
        for shape in (str(ref), ref):
            for _ in range(CALLS):
                seen = await pool.run_remote_workflow("u", ["upload::describe"], {"key": shape})
                assert seen["size"] == len(b"held by one member")
        assert await pool.release_session_ref(ref.key) is True


async def test_calls_naming_a_ref_a_run_made_go_to_the_member_that_made_it(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peers = await nodes(spawn_peer, "p1", "p2")
    async with await open_pool(peers) as pool:
        made = await pool.run_remote_workflow(
            "refs",
            ["refs::make"],
            {"items": [{"seed": 1, "size": 100, "lifetime": "UNTIL_EXPLICIT_DROP"}]},
        )
        key = made["refs"][0]["key"]
        for _ in range(CALLS):
            seen = await pool.run_remote_workflow("u", ["upload::describe"], {"key": key})
            assert seen == {**seen, "type": "bytearray", "size": 100}
        assert await pool.release_session_ref(key) is True


async def test_a_pool_upload_names_its_steps_and_lives_until_released(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peers = await nodes(spawn_peer, "p1")
    async with await open_pool(peers) as pool:
        with pytest.raises(ValidationError, match="step_ids"):
            await pool.put_session_ref(b"x")
        with pytest.raises(ValidationError, match="no parent run"):
            await pool.put_session_ref(
                b"x", step_ids=["upload::describe"], lifetime=RefLifetime.UNTIL_PARENT_FINISH
            )


def test_the_blocking_pool_uploads_too(spawn_peer: Callable[..., PeerProcess]) -> None:
    peer = spawn_peer("--node-id", "p1")
    with PeerPool.connect_blocking([peer.address], node_id="node-a") as pool:
        pool.wait_for_healthy_blocking(1)
        ref = pool.put_session_ref_blocking(bytearray(5), step_ids=["upload::describe"])
        seen = pool.run_remote_workflow_blocking("u", ["upload::describe"], {"key": str(ref)})
        assert seen["size"] == 5
        assert pool.release_session_ref_blocking(ref.key) is True
