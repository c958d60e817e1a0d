"""What one call costs each process in CPU time and thread hand-offs, by thread.

Wall-clock latency on a shared machine moves with whatever else runs; the CPU time and the
context switches a call costs do not, so this is the figure to read when a change claims to
take a hand-off out (see the note "Where a call crosses threads" in
crates/blazen-peer-py/src/lib.rs). Each thread counts its switches in
/proc/<pid>/task/<tid>/status (voluntary + involuntary); a thread that sleeps once per call
and is woken once counts 1.

Measured, sequentially, after a warm-up:
  ours -> ours         this process calls a _noop_peer.py process (one trivial async step):
                       both processes, by thread (the Python thread, the runtime's workers)
  Rust crate -> ours   the published crate's client (interop/, `blazen-interop bench`) calls
                       the same peer: the peer's side only
  Rust crate -> Rust   its client calls its own server (a Rust echo step): the server's side
The Rust rows need the interop harness (built by tests/run_all.sh; see benches/README.md) and
are left out, saying so, when it is missing.

Run: python benches/handoffs.py [--calls N]     |     python benches/handoffs.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _peer_calls import PeerCalls
from _procs import spawn_command, stop
from _report import markdown
from _rust_crate import OUR_ECHO, REPO_ROOT, RUST_ECHO

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ThreadUse:
    cpu_secs: float
    switches: int


def by_thread(pid: int) -> dict[str, ThreadUse]:
    """CPU seconds and context switches of a process's threads, added up by thread name."""
    totals: dict[str, ThreadUse] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                raw = stat.read()
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                switches = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except FileNotFoundError:  # the thread ended between listdir and open
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        seen = totals.get(name, ThreadUse(0.0, 0))
        totals[name] = ThreadUse(seen.cpu_secs + cpu, seen.switches + switches)
    return totals


def per_call(before: dict[str, ThreadUse], after: dict[str, ThreadUse], calls: int) -> str:
    parts = []
    for name, used in sorted(after.items()):
        was = before.get(name, ThreadUse(0.0, 0))
        cpu = (used.cpu_secs - was.cpu_secs) / calls * 1e6
        switches = (used.switches - was.switches) / calls
        if cpu > 0 or switches > 0.05:
            parts.append(f"{name}: {cpu:.0f} µs, {switches:.1f} switches")
    return "; ".join(parts) or "nothing measurable"


def total_switches(before: dict[str, ThreadUse], after: dict[str, ThreadUse], calls: int) -> str:
    moved = sum(t.switches for t in after.values()) - sum(t.switches for t in before.values())
    return f"{moved / calls:.1f}"


async def ours_to_ours(address: str, peer_pid: int, calls: int) -> list[tuple[str, ...]]:
    client = await PeerCalls.connect(address)
    try:
        for seq in range(min(500, calls)):
            await client.call(seq)
        mine, peer = by_thread(os.getpid()), by_thread(peer_pid)
        started = time.perf_counter()
        for seq in range(calls):
            await client.call(seq)
        wall = (time.perf_counter() - started) / calls * 1e6
        mine_after, peer_after = by_thread(os.getpid()), by_thread(peer_pid)
    finally:
        await client.close()
    return [
        ("ours -> ours", "caller", f"{wall:.0f}", total_switches(mine, mine_after, calls),
         per_call(mine, mine_after, calls)),
        ("ours -> ours", "peer", f"{wall:.0f}", total_switches(peer, peer_after, calls),
         per_call(peer, peer_after, calls)),
    ]  # fmt: skip


def rust_calls(program: Path, address: str, step_id: str, calls: int) -> float:
    """p50 seconds of the crate's client making ``calls`` sequential calls."""
    done = subprocess.run(
        [str(program), "bench", f"http://{address}", step_id, str(calls), "1", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    samples = sorted(json.loads(done.stdout.strip().splitlines()[-1])["samples_s"])
    return float(samples[len(samples) // 2])


def rust_row(
    name: str, program: Path, address: str, step_id: str, pid: int, calls: int
) -> tuple[str, ...]:
    rust_calls(program, address, step_id, min(500, calls))  # warm-up, as above
    before = by_thread(pid)
    p50 = rust_calls(program, address, step_id, calls)
    after = by_thread(pid)
    # The harness warms up with a tenth as many calls (at least 10) of its own first.
    served = calls + max(10, calls // 10)
    return (name, "server", f"p50 {p50 * 1e6:.0f}", total_switches(before, after, served),
            per_call(before, after, served))  # fmt: skip


@contextlib.contextmanager
def running(argv: list[str], ready: str) -> Iterator[tuple[int, str]]:
    """A server process for the ``with`` block: its pid and where it listens."""
    proc, where = spawn_command(argv, ready)
    try:
        yield proc.pid, where
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="50 calls: checks it runs")
    args = parser.parse_args()
    calls = 50 if args.quick else args.calls
    if calls <= 0:
        parser.error("--calls must be positive")
    program = REPO_ROOT / "interop" / "target" / "release" / "blazen-interop"
    rows: list[tuple[str, ...]] = []
    with running([sys.executable, str(HERE / "_noop_peer.py")], "READY ") as (peer_pid, address):
        rows += asyncio.run(ours_to_ours(address, peer_pid, calls))
        if program.is_file():
            rows.append(rust_row("Rust crate -> ours", program, address, OUR_ECHO, peer_pid, calls))
    if program.is_file():
        with running([str(program), "serve"], "LISTENING ") as (pid, at):
            rows.append(rust_row("Rust crate -> Rust crate", program, at, RUST_ECHO[0], pid, calls))
    else:
        print(f"(no Rust rows: {program} is not built; tests/run_all.sh builds it)")
    print(f"{calls:,} sequential calls; per call, each process:\n")
    print(markdown(("call", "process", "wall µs", "switches", "by thread: CPU, switches"), rows))


if __name__ == "__main__":
    main()
