"""`PeerPool`: one client over several peers, each a `tests/peer_app.py` process on
loopback (``--node-id`` names it, so `pool::whoami` and `pool::hold` report where a
call ran).

`pool::hold` keeps a call running until the test releases it: the step creates a
marker file (``<node id>.<run id>``, holding the call's tag) when it starts, then waits
for the call's own release file or the test's "release everything" file. So a test
sees which node runs each call while it runs, and decides when each one ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from blazen_peer import (
    PeerClient,
    PeerPool,
    PeerStatus,
    RefNotFoundError,
    StopEvent,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
)
from conftest import PeerProcess

T = TypeVar("T")

WHOAMI = "pool::whoami"
HOLD = "pool::hold"
CALL_BOUND_SECS = 10.0
"""No call of these tests may take longer (each is wrapped in `asyncio.timeout`)."""
WAIT_SECS = 10.0
"""How long a test waits for a condition (a run started, a member healthy) to hold."""
FAST_PROBES: dict[str, Any] = {
    "probe_interval_secs": 0.2,
    "probe_timeout_secs": 1.0,
    "connect_timeout_secs": 2.0,
}


# --- helpers ---


async def bounded(call: Coroutine[Any, Any, T], secs: float = CALL_BOUND_SECS) -> T:
    """Awaits ``call``; a call still running after ``secs`` is a hang (TimeoutError)."""
    async with asyncio.timeout(secs):
        return await call


async def wait_until(
    condition: Callable[[], bool], what: str, describe: Callable[[], object] = lambda: None
) -> None:
    """Polls ``condition`` until it holds; fails after WAIT_SECS, showing ``describe()``."""
    deadline = time.monotonic() + WAIT_SECS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_SECS}s: {what}; state: {describe()}")
        await asyncio.sleep(0.02)


async def start_peers(
    spawn_peer: Callable[..., PeerProcess], *arg_lists: Sequence[str]
) -> list[PeerProcess]:
    """Starts one peer per argument list, all at once; waits until each listens."""
    started = await asyncio.gather(*(asyncio.to_thread(spawn_peer, *args) for args in arg_lists))
    return list(started)


async def nodes(spawn_peer: Callable[..., PeerProcess], *node_ids: str) -> list[PeerProcess]:
    """One loopback peer per node id."""
    return await start_peers(spawn_peer, *(["--node-id", node_id] for node_id in node_ids))


async def open_pool(peers: Sequence[PeerProcess], **options: Any) -> PeerPool:
    """A pool over ``peers`` (FAST_PROBES unless overridden), once all are healthy."""
    pool = await PeerPool.connect(
        [peer.address for peer in peers], node_id="node-a", **{**FAST_PROBES, **options}
    )
    try:
        await pool.wait_for_healthy(len(peers), timeout_secs=WAIT_SECS)
    except BaseException:
        await pool.close()
        raise
    return pool


def status(pool: PeerPool, peer: PeerProcess) -> PeerStatus:
    """The pool's PeerStatus of ``peer`` (matched by address)."""
    found = [member for member in pool.peers if member.address.endswith(f"//{peer.host_port}")]
    assert len(found) == 1, (peer.host_port, pool.peers)
    return found[0]


def summary(pool: PeerPool) -> list[tuple[str, str | None, bool, int, int, str | None]]:
    """The pool's members in short, for failure messages."""
    return [
        (m.address, m.node_id, m.healthy, m.in_flight, m.calls, m.last_error) for m in pool.peers
    ]


class Holds:
    """Calls of `pool::hold`: their inputs, where they run, and releasing them."""

    def __init__(self, root: Path) -> None:
        self.started_dir = root / "started"
        self.started_dir.mkdir()
        self.release_dir = root / "release"
        self.release_dir.mkdir()
        self.release_all = root / "release-everything"
        self.calls: list[asyncio.Task[Any]] = []

    def input(self, tag: str, ref_value: str | None = None) -> dict[str, Any]:
        return {
            "tag": tag,
            "started_dir": str(self.started_dir),
            "release": [str(self.release_dir / tag), str(self.release_all)],
            "ref_value": ref_value,
        }

    def runs(self) -> list[tuple[str, str]]:
        """(tag, node id) of every run of `pool::hold` that started (a retried call has
        several)."""
        found = []
        for marker in self.started_dir.iterdir():
            tag = marker.read_text()
            if tag:  # empty: the step is writing it right now
                found.append((tag, marker.name.split(".", 1)[0]))
        return found

    def nodes_of(self, tag: str) -> set[str]:
        return {node for run_tag, node in self.runs() if run_tag == tag}

    def where(self) -> dict[str, str]:
        """Tag -> node of every call that started once (fails if one started twice)."""
        runs = self.runs()
        placed = dict(runs)
        assert len(placed) == len(runs), f"a call started more than once: {sorted(runs)}"
        return placed

    async def wait_started(self, tags: Sequence[str]) -> dict[str, str]:
        """Waits until every call of ``tags`` runs somewhere; returns tag -> node."""
        await wait_until(
            lambda: set(tags) <= {tag for tag, _ in self.runs()},
            f"{len(tags)} held calls started",
            lambda: sorted(self.runs()),
        )
        return {tag: node for tag, node in self.where().items() if tag in tags}

    def release(self, tag: str) -> None:
        (self.release_dir / tag).touch()

    def release_everything(self) -> None:
        self.release_all.touch()


@dataclass
class Outcome:
    """One call of a `Load`: when it began and ended, and where it ran or how it failed."""

    began: float
    ended: float
    node: str | None
    error: BaseException | None

    @property
    def secs(self) -> float:
        return self.ended - self.began


class Load:
    """``workers`` tasks calling `pool::whoami` back to back, each call bounded by
    ``bound_secs`` (a call past it is recorded as a TimeoutError: a hang)."""

    def __init__(
        self, pool: PeerPool, *, idempotent: bool, bound_secs: float, workers: int = 8
    ) -> None:
        self.pool = pool
        self.idempotent = idempotent
        self.bound_secs = bound_secs
        self.workers = workers
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._worker(n)) for n in range(workers)]

    async def _worker(self, worker: int) -> None:
        index = 0
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                async with asyncio.timeout(self.bound_secs):
                    result = await self.pool.run_remote_workflow(
                        "load", [WHOAMI], [worker, index], idempotent=self.idempotent
                    )
            except (TransportError, TimeoutError) as err:
                self.outcomes.append(Outcome(began, time.monotonic(), None, err))
            else:
                assert result["data"] == [worker, index]
                self.outcomes.append(Outcome(began, time.monotonic(), result["node_id"], None))
            index += 1

    def successes(self, node: str | None = None, after: float = 0.0) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if o.error is None and o.began >= after and (node is None or o.node == node)
        ]

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    async def wait_for(self, count: int, what: str, after: float = 0.0, nodes: int = 0) -> None:
        """Waits until ``count`` calls that began after ``after`` succeeded, on at least
        ``nodes`` different nodes."""
        await wait_until(
            lambda: (
                len(self.successes(after=after)) >= count
                and len({o.node for o in self.successes(after=after)}) >= nodes
            ),
            what,
            lambda: (len(self.outcomes), Counter(o.node for o in self.successes(after=after))),
        )

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.fixture
async def holds(tmp_path: Path) -> AsyncIterator[Holds]:
    """Held calls; all released after the test (so no peer waits on them when stopped),
    and the calls a failed test left behind are cancelled."""
    made = Holds(tmp_path)
    yield made
    made.release_everything()
    for call in made.calls:
        call.cancel()
    await asyncio.gather(*made.calls, return_exceptions=True)


@pytest.fixture
async def direct() -> AsyncIterator[Callable[[PeerProcess], Coroutine[Any, Any, PeerClient]]]:
    """Plain PeerClients of single peers (to look at one peer behind the pool's back)."""
    opened: list[PeerClient] = []

    async def connect(peer: PeerProcess) -> PeerClient:
        client = await PeerClient.connect(peer.address, node_id="node-direct")
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()


def hold_call(pool: PeerPool, holds: Holds, tag: str, **kwargs: Any) -> asyncio.Task[Any]:
    """Starts a call of `pool::hold` through the pool (as a task, bounded)."""
    ref_value = kwargs.pop("ref_value", None)
    call = asyncio.ensure_future(
        bounded(pool.run_remote_workflow("hold", [HOLD], holds.input(tag, ref_value), **kwargs))
    )
    holds.calls.append(call)
    return call


# --- routing ---


async def test_calls_go_only_to_members_that_have_every_requested_step(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    only_p3 = "pool::only_on_p3"
    p1, p2, p3 = await start_peers(
        spawn_peer,
        ["--node-id", "p1"],
        ["--node-id", "p2"],
        ["--node-id", "p3", "--extra-step", only_p3],
    )
    async with await open_pool([p1, p2, p3]) as pool:
        assert only_p3 in status(pool, p3).step_ids
        assert only_p3 not in status(pool, p1).step_ids | status(pool, p2).step_ids
        assert {status(pool, p).node_id for p in (p1, p2, p3)} == {"p1", "p2", "p3"}

        results = await asyncio.gather(
            *(bounded(pool.run_remote_workflow("only", [only_p3], i)) for i in range(20))
        )
        assert [r["node_id"] for r in results] == ["p3"] * 20
        assert [r["data"] for r in results] == list(range(20))
        # Asking for two steps: only p3 has both.
        both = await asyncio.gather(
            *(bounded(pool.run_remote_workflow("both", [WHOAMI, only_p3], i)) for i in range(5))
        )
        assert {r["node_id"] for r in both} == {"p3"}
        assert (status(pool, p1).calls, status(pool, p2).calls) == (0, 0), summary(pool)
        assert status(pool, p3).calls == 25, summary(pool)

        # A workflow named without steps runs where it is declared (every peer_app).
        pipeline = await bounded(
            pool.run_remote_workflow("analyze-pipeline", [], {"document": "a b c"})
        )
        assert pipeline == {"words": 3, "summary": "a b c"}

        # The only member with the step is down: the others, which lack it, are not tried.
        await asyncio.to_thread(p3.kill)
        # Before the pool noticed: the call meets the dead connection (refused, or a
        # broken pipe that cannot tell whether the request got out: then started).
        with pytest.raises(TransportError) as excinfo:
            await bounded(pool.run_remote_workflow("only", [only_p3], 0))
        assert p3.host_port in str(excinfo.value), excinfo.value
        await pool.probe_now()
        assert status(pool, p3).healthy is False
        # After: refused by the pool itself, naming the member and why.
        with pytest.raises(TransportError) as excinfo:
            await bounded(pool.run_remote_workflow("only", [only_p3], 0))
        assert excinfo.value.started is False
        assert p3.host_port in str(excinfo.value), excinfo.value
        assert (status(pool, p1).calls, status(pool, p2).calls) == (0, 0), summary(pool)


async def test_unknown_step_error_when_no_member_registers_the_steps(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peers = await nodes(spawn_peer, "p1", "p2")
    async with await open_pool(peers) as pool:
        for step_ids in (["pool::nowhere"], [WHOAMI, "pool::nowhere"]):
            with pytest.raises(UnknownStepError) as excinfo:
                await bounded(pool.run_remote_workflow("w", step_ids, 1))
            assert "pool::nowhere" in str(excinfo.value)
        # No steps named, and no member declares a workflow of that name.
        with pytest.raises(UnknownStepError):
            await bounded(pool.run_remote_workflow("no-such-workflow", [], 1))
        # The pool still works.
        assert (await bounded(pool.run_remote_workflow("w", [WHOAMI], 1)))["data"] == 1


async def test_a_misspelled_step_is_unknown_step_error_while_a_member_is_unreachable(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    # Issue 14: with one member never reached, a typo was a TransportError ("no healthy
    # peer ..."), which reads as an outage and invites retrying.
    (peer,) = await nodes(spawn_peer, "p1")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{unused.getsockname()[1]}"
    pool = await PeerPool.connect([peer.address, nobody], node_id="node-a", **FAST_PROBES)
    async with pool:
        await pool.wait_for_healthy(1, timeout_secs=WAIT_SECS)
        with pytest.raises(UnknownStepError) as excinfo:
            await bounded(pool.run_remote_workflow("w", ["pool::whoamI"], 1))
        err = excinfo.value
        assert err.step_id == "pool::whoamI"
        assert WHOAMI in err.registered
        message = str(err)
        assert "did you mean 'pool::whoami'?" in message, message
        assert f"{peer.address} has " in message and WHOAMI in message, message
        assert f"{nobody} has not been reached" in message, message
        # A workflow nobody declares: UnknownWorkflowError, naming the declared ones.
        with pytest.raises(UnknownWorkflowError) as workflow_excinfo:
            await bounded(pool.run_remote_workflow("analyze-pipelin", [], 1))
        assert workflow_excinfo.value.workflow_name == "analyze-pipelin"
        assert "did you mean 'analyze-pipeline'?" in str(workflow_excinfo.value)
        # A step only an unreachable member could have is still unknown here, but a
        # step of a member that went down is a TransportError (it may come back).
        assert (await bounded(pool.run_remote_workflow("w", [WHOAMI], 1)))["data"] == 1
        await asyncio.to_thread(peer.kill)
        await pool.probe_now()
        with pytest.raises(TransportError):
            await bounded(pool.run_remote_workflow("w", [WHOAMI], 1))


async def test_transport_error_names_every_member_when_all_are_down(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    peers = await nodes(spawn_peer, "p1", "p2")
    async with await open_pool(peers) as pool:
        for peer in peers:
            await asyncio.to_thread(peer.kill)
        for attempt in range(2):  # before and after the pool noticed
            # A TransportError, not bounded()'s TimeoutError: the pool gave up by itself.
            with pytest.raises(TransportError) as excinfo:
                await bounded(pool.run_remote_workflow("w", [WHOAMI], 1), secs=5)
            err = excinfo.value
            assert err.started is False, err
            for peer in peers:
                assert peer.host_port in str(err), err
            if attempt == 0:
                await pool.probe_now()
                assert not any(m.healthy for m in pool.peers), summary(pool)
                assert all(m.last_error for m in pool.peers), summary(pool)


# --- balancing ---


async def test_concurrent_calls_are_balanced_by_calls_in_flight(
    spawn_peer: Callable[..., PeerProcess], holds: Holds
) -> None:
    p1, p2, p3 = peers = await nodes(spawn_peer, "p1", "p2", "p3")
    async with await open_pool(peers) as pool:
        first = [f"a{i}" for i in range(30)]
        calls = {tag: hold_call(pool, holds, tag) for tag in first}
        placed = await holds.wait_started(first)
        per_node = Counter(placed.values())
        assert set(per_node) == {"p1", "p2", "p3"}, per_node
        assert min(per_node.values()) >= 5, per_node  # least-in-flight: 10 each
        assert {p.node_id: p.in_flight for p in pool.peers} == per_node, summary(pool)

        # The calls on p1 end; p1 now has the fewest in flight by far, so every new
        # call goes there until it is level with the others.
        on_p1 = [tag for tag in first if placed[tag] == "p1"]
        for tag in on_p1:
            holds.release(tag)
        done = await asyncio.gather(*(calls.pop(tag) for tag in on_p1))
        assert {r["node_id"] for r in done} == {"p1"}
        assert status(pool, p1).in_flight == 0, summary(pool)

        second = [f"b{i}" for i in range(len(on_p1))]
        calls.update({tag: hold_call(pool, holds, tag) for tag in second})
        placed_second = await holds.wait_started(second)
        assert set(placed_second.values()) == {"p1"}, placed_second

        holds.release_everything()
        results = await asyncio.gather(*calls.values())
        assert all(r["node_id"] in {"p1", "p2", "p3"} for r in results)
        await wait_until(
            lambda: all(m.in_flight == 0 for m in pool.peers),
            "in_flight back to 0",
            lambda: summary(pool),
        )
        assert sum(m.calls for m in pool.peers) == 30 + len(second), summary(pool)
        assert status(pool, p1).calls == 2 * len(on_p1), summary(pool)
        assert status(pool, p2).calls == per_node["p2"], summary(pool)
        assert status(pool, p3).calls == per_node["p3"], summary(pool)


# --- failures ---


async def test_a_killed_peer_fails_its_calls_in_flight_and_rejoins_when_restarted(
    spawn_peer: Callable[..., PeerProcess], holds: Holds
) -> None:
    peers = await nodes(spawn_peer, "p1", "p2", "p3")
    p2 = peers[1]
    async with await open_pool(peers) as pool:
        tags = [f"a{i}" for i in range(12)]
        calls = {tag: hold_call(pool, holds, tag) for tag in tags}
        placed = await holds.wait_started(tags)
        on_p2 = sorted(tag for tag, node in placed.items() if node == "p2")
        assert on_p2, placed

        # And a load of quick calls, running when p2 dies.
        load = Load(pool, idempotent=False, bound_secs=CALL_BOUND_SECS)
        try:
            await load.wait_for(60, "the load reached every member", nodes=3)
            killed_at = time.monotonic()
            await asyncio.to_thread(p2.kill)
            dead_at = time.monotonic()  # p2 is reaped: no call begun from now on can run there
            # Calls that were running on p2 may have run: they fail, with started=True.
            for tag in on_p2:
                with pytest.raises(TransportError) as excinfo:
                    await calls.pop(tag)
                assert excinfo.value.started is True, excinfo.value
            failed_within = time.monotonic() - killed_at
            await wait_until(lambda: not status(pool, p2).healthy, "p2 out of rotation")
            noticed_at = time.monotonic()
            await load.wait_for(100, "calls after p2 died", after=dead_at)
        finally:
            await load.stop()
        assert failed_within < 5, failed_within
        # Quick calls that failed were sent to p2 before the pool noticed it was gone.
        # Every call begun after that went elsewhere and succeeded. (Between the death
        # and the notice, a call written onto the dead connection can fail with a broken
        # pipe, which cannot tell whether the request got out first: it counts as started.)
        late = [(o.began - dead_at, str(o.error)) for o in load.failures() if o.began >= noticed_at]
        assert late == [], late
        assert all(isinstance(o.error, TransportError) for o in load.failures())
        assert all(o.secs < CALL_BOUND_SECS for o in load.outcomes)
        assert not load.successes("p2", after=dead_at)

        # New calls go to p1 and p3 (p2 refuses connections: not started, so retried).
        fresh = await asyncio.gather(
            *(bounded(pool.run_remote_workflow("w", [WHOAMI], i)) for i in range(10))
        )
        assert {r["node_id"] for r in fresh} <= {"p1", "p3"}, fresh
        await wait_until(
            lambda: not status(pool, p2).healthy, "p2 unhealthy", lambda: summary(pool)
        )
        assert status(pool, p2).last_error, summary(pool)

        # The calls on p1 and p3 were not disturbed.
        holds.release_everything()
        results = await asyncio.gather(*calls.values())
        assert [r["node_id"] for r in results] == [placed[tag] for tag in calls]
        assert holds.nodes_of(on_p2[0]) == {"p2"}  # never re-run elsewhere

        # p2 comes back on the same port; the pool takes it back and uses it again.
        calls_before = status(pool, p2).calls
        restarted = await asyncio.to_thread(spawn_peer, p2.host_port, "--node-id", "p2")
        assert restarted.host_port == p2.host_port
        await pool.wait_for_healthy(3, timeout_secs=WAIT_SECS)
        assert status(pool, p2).healthy, summary(pool)

        again = [f"b{i}" for i in range(6)]
        more = {tag: hold_call(pool, holds, tag) for tag in again}
        placed_again = await holds.wait_started(again)
        assert "p2" in placed_again.values(), placed_again
        results = await asyncio.gather(*more.values())
        assert "p2" in {r["node_id"] for r in results}
        assert status(pool, p2).calls > calls_before, summary(pool)


async def test_idempotent_calls_in_flight_on_a_killed_peer_run_again_elsewhere(
    spawn_peer: Callable[..., PeerProcess], holds: Holds
) -> None:
    peers = await nodes(spawn_peer, "p1", "p2", "p3")
    p2 = peers[1]
    async with await open_pool(peers) as pool:
        tags = [f"a{i}" for i in range(12)]
        calls = {tag: hold_call(pool, holds, tag, idempotent=True) for tag in tags}
        placed = await holds.wait_started(tags)
        on_p2 = sorted(tag for tag, node in placed.items() if node == "p2")
        assert on_p2, placed

        await asyncio.to_thread(p2.kill)
        # Each call p2 was running starts again on p1 or p3.
        await wait_until(
            lambda: all(len(holds.nodes_of(tag) - {"p2"}) == 1 for tag in on_p2),
            "the calls of the killed peer restarted elsewhere",
            lambda: sorted(holds.runs()),
        )
        holds.release_everything()
        results = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
        for tag in tags:
            node = results[tag]["node_id"]
            if tag in on_p2:
                assert node in {"p1", "p3"}, (tag, node)
            else:
                assert node == placed[tag], (tag, node)
        assert not status(pool, p2).healthy, summary(pool)


async def test_calls_to_a_dead_peer_the_pool_thinks_healthy_go_elsewhere(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    """Nothing tells the pool p2 died (no probes during the test): calls routed to it
    cannot connect (never started), so they run on the others, without idempotent."""
    p1, p2, p3 = peers = await nodes(spawn_peer, "p1", "p2", "p3")
    async with await open_pool(peers, probe_interval_secs=60.0) as pool:
        await asyncio.to_thread(p2.kill)
        results = await asyncio.gather(
            *(bounded(pool.run_remote_workflow("w", [WHOAMI], i)) for i in range(30))
        )
        assert {r["node_id"] for r in results} <= {"p1", "p3"}, results
        assert [r["data"] for r in results] == list(range(30))
        assert status(pool, p2).healthy is False, summary(pool)
        assert status(pool, p2).last_error, summary(pool)
        assert status(pool, p1).healthy and status(pool, p3).healthy, summary(pool)


async def test_a_draining_peer_gets_no_new_calls_and_no_call_fails(
    spawn_peer: Callable[..., PeerProcess],
    holds: Holds,
    direct: Callable[[PeerProcess], Coroutine[Any, Any, PeerClient]],
) -> None:
    peers = await start_peers(
        spawn_peer,
        ["--node-id", "p1"],
        ["--node-id", "p2", "--grace", "20"],
        ["--node-id", "p3"],
    )
    p2 = peers[1]
    p2_health = await direct(p2)
    assert await p2_health.health() == "SERVING"
    async with await open_pool(peers) as pool:
        # One call held on each member keeps p2 draining (not gone) while the test runs.
        held = {tag: hold_call(pool, holds, tag) for tag in ("a0", "a1", "a2")}
        placed = await holds.wait_started(list(held))
        assert sorted(placed.values()) == ["p1", "p2", "p3"], placed

        p2.proc.send_signal(signal.SIGTERM)  # peer_app: server.stop(grace=20)
        deadline = time.monotonic() + WAIT_SECS
        while await p2_health.health() != "NOT_SERVING":
            assert time.monotonic() < deadline, "p2 did not start draining"
            await asyncio.sleep(0.01)

        # Calls from now on, before and after the pool noticed, all succeed elsewhere.
        results: list[Any] = []
        noticed_batches = 0
        deadline = time.monotonic() + WAIT_SECS
        while noticed_batches < 3:
            if not status(pool, p2).healthy:
                noticed_batches += 1
            assert time.monotonic() < deadline, summary(pool)
            results += await asyncio.gather(
                *(bounded(pool.run_remote_workflow("w", [WHOAMI], i)) for i in range(10))
            )
        assert len(results) >= 30
        assert {r["node_id"] for r in results} == {"p1", "p3"}, Counter(
            r["node_id"] for r in results
        )
        assert status(pool, p2).healthy is False, summary(pool)

        # p2's running call finishes inside its grace; then p2 exits normally.
        holds.release_everything()
        finished = await asyncio.gather(*held.values())
        assert [r["node_id"] for r in finished] == [placed[tag] for tag in held]
    assert await asyncio.to_thread(p2.proc.wait, 10) == 0, p2.stderr()


# --- addresses ---


async def test_a_pool_over_two_loopback_addresses_and_a_host_name(
    spawn_peer: Callable[..., PeerProcess], holds: Holds
) -> None:
    p1, p2 = await start_peers(
        spawn_peer, ["127.0.0.1:0", "--node-id", "p1"], ["127.0.0.2:0", "--node-id", "p2"]
    )
    assert p2.host_port.startswith("127.0.0.2:")
    async with await open_pool([p1, p2]) as pool:
        assert len(pool.peers) == 2
        tags = [f"a{i}" for i in range(4)]
        calls = [hold_call(pool, holds, tag) for tag in tags]
        placed = await holds.wait_started(tags)
        assert sorted(placed.values()) == ["p1", "p1", "p2", "p2"], placed
        holds.release_everything()
        assert sorted(r["node_id"] for r in await asyncio.gather(*calls)) == sorted(placed.values())

    # A single address with a host name: one member per address the name resolves to
    # (IPv4 ones when there are any: a dual-stack name lists each peer twice). Here the
    # name is `localhost`; the netns suite resolves a name to several hosts.
    resolved = {
        str(info[4][0])
        for info in socket.getaddrinfo("localhost", p1.port, type=socket.SOCK_STREAM)
    }
    expected = {ip for ip in resolved if ":" not in ip} or resolved
    async with await PeerPool.connect(
        f"http://localhost:{p1.port}", node_id="node-a", **FAST_PROBES
    ) as pool:
        assert len(pool.peers) == len(expected), (resolved, summary(pool))
        await pool.wait_for_healthy(1, timeout_secs=WAIT_SECS)
        result = await bounded(pool.run_remote_workflow("w", [WHOAMI], 1))
        assert result["node_id"] == "p1"


# --- session refs ---


async def test_refs_are_read_and_released_on_the_member_that_made_them(
    spawn_peer: Callable[..., PeerProcess],
    holds: Holds,
    direct: Callable[[PeerProcess], Coroutine[Any, Any, PeerClient]],
) -> None:
    peers = await nodes(spawn_peer, "p1", "p2", "p3")
    clients = {f"p{i}": await direct(peer) for i, peer in enumerate(peers, start=1)}
    async with await open_pool(peers) as pool:
        # Held at once, the calls spread over the three members; each inserts one ref.
        tags = [f"r{i}" for i in range(9)]
        calls = [hold_call(pool, holds, tag, ref_value=f"value of {tag}") for tag in tags]
        placed = await holds.wait_started(tags)
        assert set(placed.values()) == {"p1", "p2", "p3"}, placed
        holds.release_everything()
        made = {r["tag"]: (r["node_id"], r["key"]) for r in await asyncio.gather(*calls)}

        for tag, (owner, key) in made.items():
            # Only the owner holds it: asking anyone else would fail.
            for node, client in clients.items():
                if node != owner:
                    with pytest.raises(RefNotFoundError):
                        await client.deref_session_ref(key)
            assert await bounded(pool.deref_session_ref(key)) == f"value of {tag}".encode()
            assert await bounded(pool.fetch_session_ref(key)) == f"value of {tag}".encode()

        for tag, (owner, key) in made.items():
            assert await bounded(pool.release_session_ref(key)) is True, tag
            with pytest.raises(RefNotFoundError):
                await clients[owner].deref_session_ref(key)


async def test_every_kind_of_call_is_routed_and_the_refs_it_made_are_reachable(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    only_p2 = "pool::only_on_p2"
    peers = await start_peers(
        spawn_peer, ["--node-id", "p1"], ["--node-id", "p2", "--extra-step", only_p2]
    )
    async with await open_pool(peers) as pool:
        response = await bounded(pool.invoke_sub_workflow("w", [only_p2], 1))
        assert response.error is None
        assert response.result == {"node_id": "p2", "data": 1}
        text = await bounded(pool.run_remote_workflow_json("w", [only_p2], "[2]"))
        assert json.loads(text) == {"node_id": "p2", "data": [2]}
        stream = pool.stream_sub_workflow("w", [only_p2], 3)
        async with asyncio.timeout(CALL_BOUND_SECS):
            events = [event async for event in stream]
        assert isinstance(events[-1], StopEvent)
        assert events[-1].result == {"node_id": "p2", "data": 3}

        # Refs made by runs of each kind are fetched from the member that made them.
        for n in range(4):
            value = {"made_by": "invoke", "n": n}
            made = await bounded(
                pool.invoke_sub_workflow(
                    "w", ["refs::make_value"], {"kind": "json", "value": value}
                )
            )
            key = made.result
            assert uuid.UUID(key) in made.remote_refs, made
            assert await bounded(pool.fetch_session_ref(key)) == value

            value = {"made_by": "stream", "n": n}
            stream = pool.stream_sub_workflow(
                "w", ["refs::make_value"], {"kind": "json", "value": value}
            )
            async with asyncio.timeout(CALL_BOUND_SECS):
                events = [event async for event in stream]
            assert isinstance(events[-1], StopEvent)
            key = events[-1].result
            assert stream.response is not None
            assert uuid.UUID(key) in stream.response.remote_refs
            assert await bounded(pool.fetch_session_ref(key)) == value
            assert await bounded(pool.release_session_ref(key)) is True
