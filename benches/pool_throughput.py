"""Throughput of a PeerPool over 1, 2 and 3 peer processes, beside one PeerClient
to one peer (the baseline) in the same run.

Two workloads, each with 64 calls in flight:
  noop  the trivial async step: what routing and balancing cost per call
  work  a `def` step busy for 2 ms of CPU: a peer process runs one at a time
        (the GIL), so more peers help until the machine's cores are busy

Every answer is checked. Prints a markdown table and writes it to
benches/results/pool-<date>.md.

Run: python benches/pool_throughput.py [--seconds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import CorrectnessError, payload
from _procs import serving
from blazen_peer import PeerClient, PeerPool

PEER = str(Path(__file__).with_name("_noop_peer.py"))
IN_FLIGHT = 64
WORK_MS = 2
RESULTS = Path(__file__).with_name("results")

Caller = Callable[[str, list[str], Any], Awaitable[Any]]


def workloads() -> dict[str, tuple[list[str], Callable[[int], Any]]]:
    return {
        "noop": (["bench::noop"], payload),
        "work": (["bench::work"], lambda seq: {"ms": WORK_MS, **payload(seq)}),
    }


async def throughput(call: Caller, workload: str, seconds: float) -> float:
    """Calls per second with IN_FLIGHT callers, each checking its answers."""
    step_ids, make_input = workloads()[workload]
    done = 0
    stop_at = 0.0

    async def caller(first: int) -> None:
        nonlocal done
        seq = first
        while time.perf_counter() < stop_at:
            value = make_input(seq)
            got = await call(workload, step_ids, value)
            if got != value:
                raise CorrectnessError(f"call {seq} answered {got!r}, expected {value!r}")
            done += 1
            seq += IN_FLIGHT

    # Warm-up: connections open, code paths hot, before the clock starts.
    stop_at = time.perf_counter() + min(0.5, seconds / 4)
    await asyncio.gather(*(caller(i) for i in range(IN_FLIGHT)))
    done = 0
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(caller(i) for i in range(IN_FLIGHT)))
    return done / (time.perf_counter() - started)


@contextlib.contextmanager
def peers(count: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [f"http://{stack.enter_context(serving(PEER))}" for _ in range(count)]


async def measure(seconds: float) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    for workload in workloads():
        with peers(1) as (address,):
            client = await PeerClient.connect(address, node_id="bench-client")
            rate = await throughput(client.run_remote_workflow, workload, seconds)
            rows.append((workload, "PeerClient, 1 peer (baseline)", rate))
            await client.close()
        for count in (1, 2, 3):
            with peers(count) as addresses:
                pool = await PeerPool.connect(addresses, node_id="bench-client")
                await pool.wait_for_healthy(count)
                rate = await throughput(pool.run_remote_workflow, workload, seconds)
                spread = "/".join(str(peer.calls) for peer in pool.peers)
                noun = "peer" if count == 1 else "peers"
                rows.append((workload, f"PeerPool, {count} {noun} (calls {spread})", rate))
                await pool.close()
    return rows


def report(rows: list[tuple[str, str, float]], seconds: float) -> str:
    baseline = {workload: rate for workload, who, rate in rows if "baseline" in who}
    lines = [
        f"Pool throughput, {IN_FLIGHT} calls in flight, {seconds:g} s per row, "
        f"{os.cpu_count()} cores ({datetime.date.today()})",
        "",
        "| workload | caller | calls/s | vs baseline |",
        "|---|---|---:|---:|",
    ]
    for workload, who, rate in rows:
        lines.append(f"| {workload} | {who} | {rate:,.0f} | {rate / baseline[workload]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="0.3 s per row: a smoke run")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else args.seconds
    table = report(asyncio.run(measure(seconds)), seconds)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"pool-{datetime.date.today()}.md"
        out.write_text(table + "\n")
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
