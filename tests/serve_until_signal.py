"""A peer served by `PeerServer.serve_blocking` or `PeerServer.serve`, for a test to
stop with a signal.

    python tests/serve_until_signal.py blocking|async

Picks a free port (binds port 0 and closes it), prints `PORT <port>`, and serves
steps `serve::echo` and `serve::sleep` (prints `SLEEPING`, then sleeps 60 s) there
with ``grace=1.0``: `serve_blocking(...)` or `asyncio.run(server.serve(...))`. When
serving returns it prints `SERVE RETURNED` and exits 0 (and so fails the test by any
other status).
"""

from __future__ import annotations

import asyncio
import socket
import sys

from blazen_peer import Context, PeerServer, StartEvent, StopEvent, step


@step("serve::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)


@step("serve::sleep")
async def sleep(ctx: Context, ev: StartEvent) -> StopEvent:
    print("SLEEPING", flush=True)
    await asyncio.sleep(60)
    return StopEvent(result="woke up")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(mode: str) -> int:
    port = free_port()
    print(f"PORT {port}", flush=True)
    server = PeerServer("node-serve")
    address = f"127.0.0.1:{port}"
    if mode == "blocking":
        server.serve_blocking(address, grace=1.0)
    elif mode == "async":
        asyncio.run(server.serve(address, grace=1.0))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("SERVE RETURNED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
