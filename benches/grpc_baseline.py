"""The grpcio baseline: the trivial step as a grpc.aio unary call, and its client.

The server (_grpc_server.py, its own process) json-decodes the request bytes and returns
json-encoded {"result": data}; the client sends the same payload as our calls and checks
the echo. One channel, like PeerClient's one HTTP/2 channel.

Run alone for its latency: python benches/grpc_baseline.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc
from _measure import check_echo, latency, payload
from _procs import serving

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = str(HERE / "_grpc_server.py")
METHOD_PATH = "/bench.Bench/Noop"  # _grpc_server.SERVICE and METHOD


class GrpcCalls:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        # No (de)serializers: bytes go out and come back as they are.
        self._noop: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            METHOD_PATH
        )

    @classmethod
    async def connect(cls, address: str) -> GrpcCalls:
        channel = grpc.aio.insecure_channel(address)
        await channel.channel_ready()
        return cls(channel)

    async def call(self, seq: int) -> None:
        request = json.dumps(payload(seq), separators=(",", ":")).encode()
        response = await self._noop(request, timeout=30)
        check_echo(seq, json.loads(response)["result"])

    async def close(self) -> None:
        await self._channel.close()


async def run(calls: int) -> None:
    with serving(SERVER_SCRIPT) as address:
        client = await GrpcCalls.connect(address)
        try:
            measured = (await latency({"grpcio": (client.call, calls)}, rounds=1))["grpcio"]
        finally:
            await client.close()
    print(
        f"grpcio asyncio unary   p50 {measured.p50 * 1e6:8.1f} us   "
        f"p90 {measured.p90 * 1e6:8.1f} us   p99 {measured.p99 * 1e6:8.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    asyncio.run(run(parser.parse_args().calls))


if __name__ == "__main__":
    main()
