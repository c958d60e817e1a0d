"""``blazen-peer health``: a peer's standard gRPC health, for probes and scripts."""

from __future__ import annotations

import argparse

from ._common import EXIT_FAILED, check_client_tls_options, connect, print_json

DESCRIPTION = """\
Asks the peer at ADDR for its standard gRPC health (grpc.health.v1.Health, which
needs no token) and prints SERVING, NOT_SERVING (the peer is draining), UNKNOWN,
or SERVICE_UNKNOWN (the peer reports no status for --service).

Exit status, like grpc_health_probe's: 0 only when SERVING, 1 otherwise, 2 when
the peer cannot be reached.
"""


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    connection: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "health",
        parents=[common, connection],
        help="check a peer's gRPC health (exit 0 when SERVING)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", metavar="ADDR", help="HOST:PORT or URL of the peer")
    parser.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="e.g. blazen.peer.v1.BlazenPeer (default: '', the whole server)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECS", help="(default: 5)")
    parser.set_defaults(run=run, default_log_level="WARNING", validate=check_client_tls_options)


async def run(args: argparse.Namespace) -> int:
    async with await connect(args) as client:
        status = await client.health(args.service, timeout_secs=args.timeout)
    if args.json:
        print_json({"service": args.service, "status": status})
    else:
        print(status, flush=True)
    return 0 if status == "SERVING" else EXIT_FAILED
