"""`PeerPool` across "machines": three peers, each in its own network namespace on a
bridge (tests/netns.py), reached by a pool in the test process (the root namespace).

Pulling a host's cable (its veth DOWN: packets vanish, nobody sends RST) is the failure
loopback cannot show: the connection to it does not break, it goes silent, and only
timeouts (health probes, HTTP/2 keepalive) reveal it. The figures each test measured
(how long until the pool noticed, the longest call) are printed (`pytest -s`).

Needs root (network namespaces, veth); skipped otherwise, saying why.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from blazen_peer import PeerPool, TransportError
from conftest import (
    EXIT_TIMEOUT_SECS,
    PEER_APP,
    REPO_ROOT,
    STARTUP_TIMEOUT_SECS,
    PeerProcess,
    read_line,
)
from netns import Network, network
from test_pool import HOLD, Holds, Load, status, summary, wait_until

PORT = 7443
PEER_HOSTS = (1, 2, 3)
CLIENT_HOST = 4
"""The namespace the name-resolution test's client runs in (its own /etc/hosts)."""
POOL_SETTINGS: dict[str, Any] = {
    "probe_interval_secs": 0.2,
    "probe_timeout_secs": 0.5,
    "keepalive_interval_secs": 0.5,
    "keepalive_timeout_secs": 1.0,
    "connect_timeout_secs": 1.0,
}
CALL_BOUND_SECS = 5.0
"""No call of the background load may take longer, cable pulled or not."""
HELD_BOUND_SECS = 20.0
LOAD_WORKERS = 8


@dataclass
class Cluster:
    net: Network
    peers: dict[int, PeerProcess]

    def address(self, i: int) -> str:
        return f"http://{self.net.addr(i)}:{PORT}"


def start_in_namespace(net: Network, i: int, stderr_path: Path) -> PeerProcess:
    """`peer_app.py` listening on host i's address (``--insecure``: plaintext on a
    non-loopback address, with no token to leak), named ``h<i>``."""
    argv = [sys.executable, str(PEER_APP), f"{net.addr(i)}:{PORT}", "--insecure"]
    with stderr_path.open("wb") as stderr:
        proc = net.spawn(
            i,
            [*argv, "--node-id", f"h{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
    line = read_line(proc, STARTUP_TIMEOUT_SECS)
    if not line.startswith("LISTENING "):
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_SECS)
        pytest.fail(
            f"peer_app.py in host {i} did not report its address (stdout: {line!r}); "
            f"its stderr:\n{stderr_path.read_text(errors='replace')}"
        )
    return PeerProcess(proc, line.split()[1], stderr_path)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Hosts 1-3 each serving peer_app on port 7443; host 4 runs nothing yet."""
    with network(len(PEER_HOSTS) + 1) as net:
        peers: dict[int, PeerProcess] = {}
        try:
            for i in PEER_HOSTS:
                peers[i] = start_in_namespace(net, i, tmp_path / f"h{i}-stderr.txt")
            yield Cluster(net, peers)
        finally:
            for i in PEER_HOSTS:
                net.restore(i)  # a failed test may have left a cable pulled
            statuses = {i: peer.stop() for i, peer in peers.items()}
        failed = {i: code for i, code in statuses.items() if code != 0}
        if failed:
            stderr = "\n".join(f"--- h{i}:\n{peers[i].stderr()}" for i in failed)
            pytest.fail(f"peers exited with {failed}; their stderr:\n{stderr}")


async def wait_for_time_of(condition: Callable[[], bool], what: str, pool: PeerPool) -> float:
    """Polls ``condition`` every 5 ms; returns when it first held (time.monotonic())."""
    deadline = time.monotonic() + 10.0
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within 10 s: {what}; pool: {summary(pool)}")
        await asyncio.sleep(0.005)
    return time.monotonic()


# --- a pulled cable ---


@pytest.mark.parametrize("idempotent", [False, True], ids=["once", "idempotent"])
async def test_a_pulled_cable_stalls_no_call_and_the_host_rejoins_when_plugged_back(
    cluster: Cluster, tmp_path: Path, idempotent: bool
) -> None:
    h2 = cluster.peers[2]
    holds = Holds(tmp_path)
    pool = await PeerPool.connect(
        [cluster.address(i) for i in PEER_HOSTS], node_id="root", **POOL_SETTINGS
    )
    load: Load | None = None
    held: dict[str, asyncio.Task[Any]] = {}
    try:
        await pool.wait_for_healthy(3, timeout_secs=10)

        # Calls that will still be running on each host when the cable is pulled.
        for n in range(6):
            held[f"held{n}"] = asyncio.ensure_future(
                asyncio.wait_for(
                    pool.run_remote_workflow(
                        "held", [HOLD], holds.input(f"held{n}"), idempotent=idempotent
                    ),
                    HELD_BOUND_SECS,
                )
            )
        placed = await holds.wait_started(list(held))
        on_h2 = sorted(tag for tag, node in placed.items() if node == "h2")
        assert on_h2, placed

        load = Load(pool, idempotent=idempotent, bound_secs=CALL_BOUND_SECS, workers=LOAD_WORKERS)
        await wait_until(
            lambda: (
                {o.node for o in load.successes()} == {"h1", "h2", "h3"}
                and len(load.successes()) >= 100
            ),
            "the load reached every host",
            lambda: len(load.outcomes),
        )

        cut_at = time.monotonic()
        await asyncio.to_thread(cluster.net.cut, 2)
        cut_done = time.monotonic()
        noticed_at = await wait_for_time_of(
            lambda: not status(pool, h2).healthy, "the pool noticed h2 is gone", pool
        )

        # Calls held on h2 when its cable went: they fail (started=True: they may have
        # run), or with idempotent=True run again on h1/h3.
        if idempotent:
            held_fate_at = await wait_for_time_of(
                lambda: all(len(holds.nodes_of(tag) - {"h2"}) == 1 for tag in on_h2),
                "the idempotent calls of h2 started again elsewhere",
                pool,
            )
        else:
            for tag in on_h2:
                with pytest.raises(TransportError) as excinfo:
                    await held.pop(tag)
                assert excinfo.value.started is True, excinfo.value
            held_fate_at = time.monotonic()

        # The load goes on, on h1 and h3, while h2 stays unreachable.
        await wait_until(
            lambda: len(load.successes(after=noticed_at)) >= 50, "calls after the pool noticed"
        )
        assert cluster.net.is_cut(2)

        restore_at = time.monotonic()
        await asyncio.to_thread(cluster.net.restore, 2)
        rejoined_at = await wait_for_time_of(
            lambda: status(pool, h2).healthy, "h2 healthy again", pool
        )
        served_at = await wait_for_time_of(
            lambda: bool(load.successes("h2", after=restore_at)), "h2 serving calls again", pool
        )
        await load.stop()

        holds.release_everything()
        finished = dict(zip(held, await asyncio.gather(*held.values()), strict=True))
    finally:
        holds.release_everything()
        if load is not None:
            await load.stop()
        for task in held.values():
            task.cancel()
        await pool.close()

    outcomes = load.outcomes
    failures = [o for o in outcomes if o.error is not None]
    longest = max(o.secs for o in outcomes)
    after_cut = load.successes(after=cut_done)
    during_blackout = [o for o in after_cut if o.ended < noticed_at]
    failed_in_flight = [o for o in failures if o.began < noticed_at]
    print(
        f"\n[{'idempotent' if idempotent else 'once'}] calls: {len(outcomes)}, "
        f"failed: {len(failures)} (TransportError, in flight on h2), "
        f"longest call: {longest:.3f} s; pool noticed the cut after "
        f"{noticed_at - cut_at:.3f} s; h2's held calls "
        f"{'restarted elsewhere' if idempotent else 'failed'} after {held_fate_at - cut_at:.3f} s; "
        f"successes between cut and notice: {len(during_blackout)}; "
        f"rejoined {rejoined_at - restore_at:.3f} s after the cable came back, "
        f"served a call after {served_at - restore_at:.3f} s"
    )

    # No call hung: each ended, inside the bound, with a result or a TransportError.
    assert longest < CALL_BOUND_SECS, longest
    assert not [o for o in failures if not isinstance(o.error, TransportError)], failures
    if idempotent:
        assert failures == [], [str(o.error) for o in failures]
    else:
        # Only calls that were on their way to h2 when it went silent failed.
        assert len(failures) <= LOAD_WORKERS, [str(o.error) for o in failures]
        assert failures == failed_in_flight, [(o.began - cut_at, o.error) for o in failures]
        assert all(getattr(o.error, "started", None) is True for o in failures), failures
    # Nothing sent after the cable was pulled reached h2 until it came back.
    assert not [o for o in after_cut if o.node == "h2" and o.began < restore_at]
    assert {o.node for o in after_cut if o.began < restore_at} == {"h1", "h3"}
    assert len(load.successes(after=cut_done)) >= 50
    assert noticed_at - cut_at < 3.0, noticed_at - cut_at

    # The held calls on h1 and h3 were not disturbed; h2's ran again elsewhere or failed.
    for tag, result in finished.items():
        if tag in on_h2:
            assert result["node_id"] in {"h1", "h3"}, (tag, result)
        else:
            assert result["node_id"] == placed[tag], (tag, result)
    assert set(finished) == set(held) - (set() if idempotent else set(on_h2))


# --- one name, several hosts ---

RESOLVING_CLIENT = r"""
import asyncio, json, sys, time
from blazen_peer import PeerPool

async def report(pool, wanted):
    deadline = time.monotonic() + 10
    while True:
        members = sorted(p.address for p in pool.peers)
        healthy = sorted(p.address for p in pool.peers if p.healthy)
        if len(members) == wanted and len(healthy) == wanted:
            break
        if time.monotonic() > deadline:
            print("TIMEOUT " + json.dumps([members, healthy]), flush=True)
            return
        await asyncio.sleep(0.02)
    nodes = set()
    while len(nodes) < wanted and time.monotonic() < deadline:
        results = await asyncio.gather(
            *(pool.run_remote_workflow("dns", ["pool::whoami"], n) for n in range(3 * wanted))
        )
        nodes |= {r["node_id"] for r in results}
    print("MEMBERS " + json.dumps({"members": members, "nodes": sorted(nodes)}), flush=True)

async def main(address):
    async with await PeerPool.connect(
        address, node_id="h4", probe_interval_secs=0.1, probe_timeout_secs=0.5,
        connect_timeout_secs=1.0, resolve_interval_secs=0.2,
    ) as pool:
        for line in sys.stdin:
            await report(pool, int(line))

asyncio.run(main(sys.argv[1]))
"""
"""Runs in host 4: a pool over one name; for each number N read from stdin it waits
until the pool has N healthy members, then prints them and the nodes calls reached."""


def ask(client: subprocess.Popen[bytes], wanted: int) -> dict[str, Any]:
    assert client.stdin is not None
    client.stdin.write(f"{wanted}\n".encode())
    client.stdin.flush()
    line = read_line(client, 15)
    assert line.startswith("MEMBERS "), line
    answer: dict[str, Any] = json.loads(line.removeprefix("MEMBERS "))
    return answer


def test_a_name_with_several_addresses_gives_one_member_each_and_is_resolved_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    net = cluster.net
    name = "peers.blazen.test"
    net.write_hosts(CLIENT_HOST, {name: [net.addr(1), net.addr(2)]})
    stderr_path = tmp_path / "client-stderr.txt"
    with stderr_path.open("wb") as stderr:
        client = net.spawn(
            CLIENT_HOST,
            [sys.executable, "-c", RESOLVING_CLIENT, f"http://{name}:{PORT}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
    try:
        first = ask(client, 2)
        assert first == {
            "members": [cluster.address(1), cluster.address(2)],
            "nodes": ["h1", "h2"],
        }, first
        # The name now also lists host 3 (a peer scaled up): it joins.
        net.write_hosts(CLIENT_HOST, {name: [net.addr(1), net.addr(2), net.addr(3)]})
        grown = ask(client, 3)
        assert grown["nodes"] == ["h1", "h2", "h3"], grown
        # Host 1 leaves the name (scaled down): it is dropped.
        net.write_hosts(CLIENT_HOST, {name: [net.addr(2), net.addr(3)]})
        shrunk = ask(client, 2)
        assert shrunk == {
            "members": [cluster.address(2), cluster.address(3)],
            "nodes": ["h2", "h3"],
        }, shrunk
    except Exception:
        client.kill()
        print(f"the client in host 4 failed; its stderr:\n{stderr_path.read_text()}")
        raise
    finally:
        assert client.stdin is not None
        client.stdin.close()
        status_code = client.wait(timeout=EXIT_TIMEOUT_SECS)
        assert client.stdout is not None
        client.stdout.close()
    assert status_code == 0, stderr_path.read_text()


# --- probes of a host that does not answer ---


async def test_a_probe_of_a_silent_host_ends_after_probe_timeout_secs(cluster: Cluster) -> None:
    """A pulled cable makes every (re)connect attempt hang until connect_timeout_secs;
    a health probe must still give up after probe_timeout_secs, or one silent member
    slows the probe round (and so failure detection and rejoining) of the whole pool."""
    probe_timeout, connect_timeout = 0.5, 3.0
    pool = await PeerPool.connect(
        [cluster.address(i) for i in PEER_HOSTS],
        node_id="root",
        probe_interval_secs=60.0,  # only the probes this test asks for
        probe_timeout_secs=probe_timeout,
        connect_timeout_secs=connect_timeout,
        keepalive_interval_secs=0.5,
        keepalive_timeout_secs=1.0,
    )
    try:
        await pool.wait_for_healthy(3, timeout_secs=10)
        await asyncio.to_thread(cluster.net.cut, 2)
        # Rounds on the old connection until HTTP/2 keepalive gives it up (1.5 s),
        # then rounds that must connect anew, each of which would wait out
        # connect_timeout_secs if the probe did not bound it.
        cut_at = time.monotonic()
        rounds: list[float] = []
        while time.monotonic() - cut_at < 1.5 + 2 * connect_timeout:
            began = time.monotonic()
            await pool.probe_now()
            rounds.append(round(time.monotonic() - began, 3))
            assert not status(pool, cluster.peers[2]).healthy, summary(pool)
            assert status(pool, cluster.peers[1]).healthy, summary(pool)
        print(
            f"\nprobe rounds with h2's cable pulled: {rounds} s (probe_timeout {probe_timeout} s)"
        )
        assert max(rounds) < probe_timeout + 0.4, (rounds, summary(pool))
    finally:
        await pool.close()
