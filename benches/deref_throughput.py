"""Throughput and memory of deref_session_ref on a large value, next to the machine's floor.

Measured in this one run, each between two processes on loopback:
  floor: raw TCP bulk transfer (1 MiB sendall slices, recv_into a preallocated buffer);
         for reference also a whole-value buffer into a reused one, and into fresh
         memory, whose first-touch page faults a deref into new bytes pays too
  deref: client.deref_session_ref of a --size-mib value held by a peer, in a fresh client
         process, with the peak RSS of both processes during each deref; then
         client.deref_session_ref_into one reused buffer of the value's size

Targets (issue 19): deref_into a reused buffer at least 0.8x the floor; deref into new bytes at
least as fast as raw TCP into fresh memory (1.0x); receiver peak RSS under 1.3x the value.

Run: python benches/deref_throughput.py [--size-mib N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import mmap
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _procs import spawn, stop

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
CLIENT_TIMEOUT_SECS = 300


def tcp_floor(size: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per transfer of ``size`` bytes from a sender process to this one:
    "floor": a cache-hot 1 MiB buffer sent again and again into one reused 1 MiB buffer;
    "whole": a ``size``-byte buffer into a reused ``size``-byte buffer (the memory traffic
    a deref_into pays, without any protocol);
    "fresh": the whole buffer into fresh memory that the kernel must first map and zero
    (what any receiver of a new ``size``-byte object such as ``bytes`` pays too)."""
    proc, port = spawn(str(HERE / "_tcp_sender.py"), str(size))
    try:
        small, large = memoryview(bytearray(MIB)), memoryview(bytearray(size))
        samples: dict[str, list[float]] = {"floor": [], "whole": [], "fresh": []}
        for _ in range(repeat):
            samples["floor"].append(receive(int(port), b"h", size, small))
            samples["whole"].append(receive(int(port), b"w", size, large))
            with mmap.mmap(-1, size) as memory, memoryview(memory) as view:
                samples["fresh"].append(receive(int(port), b"w", size, view))
        return samples
    finally:
        stop(proc)


def receive(port: int, mode: bytes, size: int, buffer: memoryview) -> float:
    """Receives into ``buffer`` from the start each time, or in order when it holds ``size``."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(mode)
        received = 0
        while received < size:
            got = sock.recv_into(buffer[received:] if len(buffer) >= size else buffer)
            if not got:
                raise SystemExit(f"the sender stopped after {received} of {size} bytes")
            received += got
    return time.perf_counter() - start


def deref_runs(size: int, repeat: int) -> dict[str, Any]:
    """What _deref_client.py measured, fetching from a _ref_peer.py process."""
    peer, address = spawn(str(HERE / "_ref_peer.py"))
    client = None
    try:
        client = subprocess.Popen(
            [sys.executable, str(HERE / "_deref_client.py"), address, str(size), str(repeat)],
            stdout=subprocess.PIPE,
            text=True,
        )
        out, _ = client.communicate(timeout=CLIENT_TIMEOUT_SECS)
        if client.returncode != 0:
            raise SystemExit(f"the deref client failed (exit {client.returncode})")
        measured: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return measured
    finally:
        if client is not None:
            stop(client)
        stop(peer)


def rate(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size, repeat = args.size_mib * MIB, args.repeat
    if size <= 0 or repeat <= 0:
        parser.error("--size-mib and --repeat must be positive")

    tcp = tcp_floor(size, repeat)
    floor = tcp["floor"]
    measured = deref_runs(size, repeat)
    runs = measured["runs"]
    deref = [run["seconds"] for run in runs]

    print(f"value {args.size_mib} MiB, {repeat} repetitions (MB/s = 10^6 bytes/s)")
    print(f"{'':<22}{'best MB/s':>12}{'median MB/s':>13}{'best s':>9}")
    for name, samples in (
        ("raw TCP loopback", floor),
        ("  whole value, reused", tcp["whole"]),
        ("  into fresh memory", tcp["fresh"]),
        ("deref_session_ref", deref),
        ("  _into reused buffer", measured["into"]),
    ):
        best, median = min(samples), statistics.median(samples)
        print(f"{name:<22}{rate(size, best):>12.0f}{rate(size, median):>13.0f}{best:>9.3f}")

    client_peak = max(run["client_hwm"] for run in runs)
    peer_peak = max(run["peer_hwm"] for run in runs)
    client_base = measured["client_baseline"]
    peer_base = min(run["peer_rss_before"] for run in runs)
    print(
        f"\n{'in one deref':<22}{'RSS before':>12}{'peak RSS':>10}{'x value':>9}"
        f"{'CPU s':>8}{'CPU/wall':>10}"
    )
    for name, base, peak, cpu_key in (
        ("client (receiver)", client_base, client_peak, "client_cpu"),
        ("peer (sender)", peer_base, peer_peak, "peer_cpu"),
    ):
        cpu = statistics.median(run[cpu_key] for run in runs)
        print(
            f"{name:<22}{base / MIB:>8.0f} MiB{peak / MIB:>6.0f} MiB{peak / size:>9.2f}"
            f"{cpu:>8.2f}{cpu / statistics.median(deref):>10.0%}"
        )
    print("(peak RSS: the most over the repetitions; CPU: the median, all threads)")
    if not all(run["client_hwm_reset"] and run["peer_hwm_reset"] for run in runs):
        print("(VmHWM could not be reset here: the peaks cover each process's whole life)")

    def judged(name: str, ratio: float, op: str, target: float) -> None:
        met = ratio >= target if op == ">=" else ratio < target
        print(f"{name:<58}{ratio:>6.2f}   target {op} {target:.2f}  {'met' if met else 'MISSED'}")

    into_ratio = min(floor) / min(measured["into"])
    fresh_ratio = min(tcp["fresh"]) / min(deref)
    print()
    judged("deref_into reused / raw TCP recv_into reused (best)", into_ratio, ">=", 0.8)
    judged("deref into new bytes / raw TCP into fresh memory (best)", fresh_ratio, ">=", 1.0)
    judged("receiver peak RSS / value size", client_peak / size, "<", 1.3)
    print(
        "(for reference: deref into new bytes / raw TCP recv_into reused "
        f"{min(floor) / min(deref):.2f}; deref_into / whole value into a reused buffer "
        f"{min(tcp['whole']) / min(measured['into']):.2f})"
    )


if __name__ == "__main__":
    main()
