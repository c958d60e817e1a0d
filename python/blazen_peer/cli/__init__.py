"""The ``blazen-peer`` command (also ``python -m blazen_peer``).

Subcommands: ``serve`` step modules, ``call`` a peer's steps, list its ``steps``,
check its ``health``, and run the README ``demo``. Errors print as
``blazen-peer: error (KIND): MESSAGE`` (with ``--json``, as ``{"error": {...}}``
on stdout); the exit status is 1 for a failed run or call, 2 for a bad command,
input or connection, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from ..errors import PeerError
from . import call, demo, health, serve, steps
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    PROG,
    Command,
    common_options,
    configure_logging,
    connection_options,
    report_error,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run Python sub-workflows on another machine over gRPC.",
        epilog=f"`{PROG} COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, connection = common_options(), connection_options()
    serve.add_parser(subparsers, common)
    call.add_parser(subparsers, common, connection)
    steps.add_parser(subparsers, common, connection)
    health.add_parser(subparsers, common, connection)
    demo.add_parser(subparsers, common)
    # Each subcommand validates its option combinations with its own usage message.
    for name, subparser in subparsers.choices.items():
        subparser.set_defaults(subparser=subparser, command=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command in ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    validate = getattr(args, "validate", None)
    if validate is not None:
        validate(args.subparser, args)
    configure_logging(args.log_level or args.default_log_level, args.command)
    command: Command = args.run
    try:
        # Work that must happen before the event loop starts (serve imports its
        # targets there, as `python FILE` would run them).
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        return asyncio.run(command(args))
    except PeerError as error:
        return report_error(error, as_json=args.json, command=args.command)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`); Python would complain again at exit
        # while flushing stdout, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _version() -> str:
    try:
        return metadata.version("blazen-peer")
    except metadata.PackageNotFoundError:
        return "(not installed)"
