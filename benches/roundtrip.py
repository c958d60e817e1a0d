"""Round-trip latency of run_remote_workflow next to the machine's floor.

Both measured in this one run, each between two processes on loopback:
  floor: a raw TCP ping-pong of 64 bytes (blocking sockets, TCP_NODELAY)
  peer:  run_remote_workflow with one trivial async step

Run: python benches/roundtrip.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from pathlib import Path

from _procs import spawn

HERE = Path(__file__).resolve().parent


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tcp_floor(calls: int) -> list[float]:
    proc, port = spawn(str(HERE / "_echo_server.py"))
    try:
        sock = socket.create_connection(("127.0.0.1", int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = b"x" * 64
        samples = []
        for i in range(calls + calls // 10):
            start = time.perf_counter()
            sock.sendall(payload)
            received = 0
            while received < len(payload):
                received += len(sock.recv(4096))
            if i >= calls // 10:
                samples.append(time.perf_counter() - start)
        sock.close()
        return samples
    finally:
        proc.kill()
        proc.wait()


async def peer_round_trip(calls: int) -> list[float]:
    from blazen_peer import PeerClient

    proc, address = spawn(str(HERE / "_noop_peer.py"))
    try:
        client = await PeerClient.connect(f"http://{address}", node_id="bench")
        samples = []
        for i in range(calls + calls // 10):
            start = time.perf_counter()
            await client.run_remote_workflow("noop", ["bench::noop"], {"i": i}, timeout_secs=30)
            if i >= calls // 10:
                samples.append(time.perf_counter() - start)
        await client.close()
        return samples
    finally:
        proc.kill()
        proc.wait()


def report(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
    mean = statistics.fmean(samples)
    print(
        f"{name:<28} p50 {p50 * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us   mean {mean * 1e6:8.1f} us"
    )
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    calls = parser.parse_args().calls
    floor_p50, floor_p99 = report("raw TCP ping-pong", tcp_floor(calls))
    peer_p50, peer_p99 = report("run_remote_workflow", asyncio.run(peer_round_trip(calls)))
    print(f"ratio to floor: p50 {peer_p50 / floor_p50:.2f}x   p99 {peer_p99 / floor_p99:.2f}x")


if __name__ == "__main__":
    main()
