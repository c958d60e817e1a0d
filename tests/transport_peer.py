"""A peer for tests/test_faults_transport.py, in its own process::

    python tests/transport_peer.py '{"max_connections": 50, ...}' [--nofile N] [--tls CERT KEY]

The JSON object holds keyword arguments of ``PeerServer`` (the transport limits
under test). ``--nofile`` lowers the process's open-file limit first (to make
``accept`` fail with EMFILE). Prints ``LISTENING HOST:PORT`` once serving, logs
the ``blazen_peer`` logger's WARNINGs to stderr, and stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import threading

from blazen_peer import Context, PeerServer, ServerTls, StartEvent, StopEvent, step


@step("transport::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)


@step("transport::sleep")
async def sleep(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.sleep(float(ev.secs))
    return StopEvent(result="slept")


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    with contextlib.suppress(OSError, ValueError):
        while os.read(sys.stdin.fileno(), 4096):
            pass
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(stop.set)


async def main(args: argparse.Namespace) -> None:
    kwargs = json.loads(args.kwargs)
    tls = ServerTls.from_pem(cert=args.tls[0], key=args.tls[1]) if args.tls else None
    server = PeerServer("transport-peer", tls=tls, **kwargs)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    bound = await server.start("127.0.0.1:0")
    print(f"LISTENING {bound}", flush=True)
    threading.Thread(target=_stop_on_stdin_eof, args=(loop, stop), daemon=True).start()
    try:
        await stop.wait()
    finally:
        await server.stop(grace=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kwargs", nargs="?", default="{}")
    parser.add_argument("--nofile", type=int)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    arguments = parser.parse_args()
    if arguments.nofile is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (arguments.nofile, hard))
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s"
    )
    asyncio.run(main(arguments))
