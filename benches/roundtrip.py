"""Round-trip latency of run_remote_workflow next to the machine's floor.

Both measured in this one run, each between two processes on loopback:
  floor: a raw TCP ping-pong of 64 bytes (blocking sockets, TCP_NODELAY)
  peer:  run_remote_workflow with one trivial async step against a peer process

For all the figures (grpcio baseline, throughput, load) see run_all.py.

Run: python benches/roundtrip.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from _measure import Latency, latency
from _peer_calls import PeerCalls
from _procs import serving
from _tcp_floor import TcpFloor

HERE = Path(__file__).resolve().parent


async def measure(calls: int) -> dict[str, Latency]:
    with (
        serving(str(HERE / "_echo_server.py")) as port,
        serving(str(HERE / "_noop_peer.py")) as address,
    ):
        floor = TcpFloor(int(port))
        peer = await PeerCalls.connect(address)
        try:
            return await latency(
                {
                    "raw TCP ping-pong": (floor.call, calls),
                    "run_remote_workflow": (peer.call, calls),
                },
                rounds=1,
            )
        finally:
            floor.close()
            await peer.close()


def report(name: str, measured: Latency) -> None:
    print(
        f"{name:<28} p50 {measured.p50 * 1e6:8.1f} us   p99 {measured.p99 * 1e6:8.1f} us   "
        f"mean {measured.mean * 1e6:8.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    results = asyncio.run(measure(parser.parse_args().calls))
    for name, measured in results.items():
        report(name, measured)
    floor, peer = results["raw TCP ping-pong"], results["run_remote_workflow"]
    print(f"ratio to floor: p50 {peer.p50 / floor.p50:.2f}x   p99 {peer.p99 / floor.p99:.2f}x")


if __name__ == "__main__":
    main()
