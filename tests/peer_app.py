"""The peer ("node-b") that the test suite talks to across a process boundary.

Importable as a module of steps (importing it registers them in this process's
step registry) and runnable as a server::

    python tests/peer_app.py [HOST:PORT]     # default 127.0.0.1:0 (a free port)
        [--lease-secs SECS]                  # SessionRefRegistry(lease_secs=...) of the server
        [--max-message-bytes N]              # PeerServer(max_message_bytes=...)
        [--tls-cert F --tls-key F [--tls-client-ca F]]   # PeerServer(tls=ServerTls.from_pem(...))
        [--token T] [--insecure]             # PeerServer(token=..., insecure=...)
        [--http-json]                        # PeerServer(http_json=True): the HTTP/JSON routes too
        [--max-concurrent-runs N] [--max-json-depth N] [--keepalive-interval SECS]
        [--default-timeout SECS]             # PeerServer(default_timeout_secs=...)
        [--grace SECS|none]                  # server.stop(grace=...) when told to stop
        [--print-stats]                      # print `STOPPED <stats JSON>` after stopping
        [--node-id ID]                       # PeerServer(node_id=...), default node-b
        [--extra-step ID ...]                # also register `pool::whoami` under ID
        [--max-upload-bytes N]               # PeerServer(max_upload_bytes=...)
        [--peers JSON]                       # PeerServer(peers=...): {"node id": "address"}

The script prints ``LISTENING HOST:PORT`` once ``PeerServer.start`` has returned,
then serves until its stdin reaches end-of-file or it receives SIGTERM, and
exits with status 0 after ``PeerServer.stop`` (``stop(grace=...)`` with ``--grace``).

The steps live next to their tests, by feature; importing this module imports
them all: ``steps_core`` (``test::*``, the README steps and the
``analyze-pipeline`` workflow), ``steps_refs`` (``refs::*``), ``steps_security``
(``security::*``), ``steps_streaming`` (``stream::*`` events), ``steps_probes``
(``probe::*``, ``stream::produce*``) and ``steps_pool`` (``pool::*``).
``steps_upload`` (``upload::*``, ``p2p::*``). ``peer_state`` holds the serving
PeerServer the steps report on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading

import peer_state
import ref_support
import steps_core
import steps_pool
import steps_probes  # noqa: F401  (registers probe::* and stream::produce*)
import steps_refs  # noqa: F401  (registers refs::*)
import steps_security  # noqa: F401  (registers security::*)
import steps_streaming
import steps_upload  # noqa: F401  (registers upload::* and p2p::*)
from blazen_peer import PeerServer, ServerTls, SessionRefRegistry, register_ref_codec, register_step
from blazen_peer.uploads import DEFAULT_MAX_UPLOAD_BYTES

peer_b = steps_core.peer_b
"""examples/peer_b.py, the module of the README steps."""

NODE_ID = "node-b"


# --- serving ---


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Runs in a daemon thread: reads stdin to its end, then asks the loop to stop.

    Reads the file descriptor, not ``sys.stdin.buffer``: a daemon thread blocked inside
    the buffered reader holds its lock, and the interpreter aborts at exit ("could not
    acquire lock ... at interpreter shutdown") when the peer stops on SIGTERM."""
    with contextlib.suppress(OSError, ValueError):
        while os.read(sys.stdin.fileno(), 4096):
            pass
    with contextlib.suppress(RuntimeError):  # the loop may already be closed
        loop.call_soon_threadsafe(stop.set)


async def main(args: argparse.Namespace) -> None:
    steps_streaming.define_peer_only()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    register_ref_codec(
        ref_support.PEER_ONLY_TAG, ref_support.encode_peer_only, ref_support.decode_peer_only
    )
    session_refs = None if args.lease_secs is None else SessionRefRegistry(args.lease_secs)
    tls = (
        ServerTls.from_pem(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
        if args.tls_cert
        else None
    )
    for step_id in args.extra_step:
        register_step(step_id, steps_pool.whoami.fn)
    peer_state.SERVER = server = PeerServer(
        args.node_id,
        session_refs=session_refs,
        max_message_bytes=args.max_message_bytes,
        tls=tls,
        token=args.token,
        insecure=args.insecure,
        max_concurrent_runs=args.max_concurrent_runs,
        max_json_depth=args.max_json_depth,
        keepalive_interval_secs=args.keepalive_interval,
        default_timeout_secs=args.default_timeout,
        http_json=args.http_json,
        max_upload_bytes=args.max_upload_bytes,
        peers=json.loads(args.peers) if args.peers else None,
    )
    bound = await server.start(args.address)
    print(f"LISTENING {bound}", flush=True)
    threading.Thread(target=_stop_on_stdin_eof, args=(loop, stop), daemon=True).start()
    try:
        await stop.wait()
    finally:
        if args.grace is None:
            await server.stop()
        else:
            await server.stop(grace=None if args.grace == "none" else float(args.grace))
    if args.print_stats:
        print(f"STOPPED {json.dumps(dataclasses.asdict(server.stats()))}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The test suite's peer, node-b.")
    parser.add_argument("address", nargs="?", default="127.0.0.1:0")
    parser.add_argument("--lease-secs", type=float, default=None)
    parser.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    parser.add_argument("--token")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--http-json", action="store_true")
    parser.add_argument("--max-concurrent-runs", type=int, default=1024)
    parser.add_argument("--max-json-depth", type=int, default=100)
    parser.add_argument("--keepalive-interval", type=float, default=30.0)
    parser.add_argument("--default-timeout", type=float, default=300.0)
    parser.add_argument("--grace", default=None, help="seconds, or 'none' for no limit")
    parser.add_argument("--print-stats", action="store_true")
    parser.add_argument("--node-id", default=NODE_ID)
    parser.add_argument("--extra-step", action="append", default=[], metavar="STEP_ID")
    parser.add_argument("--max-upload-bytes", type=int, default=DEFAULT_MAX_UPLOAD_BYTES)
    parser.add_argument("--peers", default=None, metavar="JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
