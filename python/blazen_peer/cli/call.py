"""``blazen-peer call``: run steps on a peer and print the result (and streamed events)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from ..client import PeerClient
from ..errors import ValidationError, WorkflowError
from ..events import Event, GenericEvent, event_type_name
from ._common import PROG, check_client_tls_options, connect, dumps, print_json, response_json

DESCRIPTION = """\
Runs --step IDs (or, without --step, the steps the peer declares for --workflow)
on the peer at ADDR (HOST:PORT, or a full http:// or https:// URL) and prints the
result as JSON on stdout: indented on a terminal, one line otherwise. With --json,
prints {"result": ..., "state": ..., "remote_refs": {...}}.

With --stream, prints each event the steps write to the stream as it arrives
(`event TYPE {fields}`, or {"event": TYPE, "data": {...}} lines with --json),
then the result.

When a step fails, the error line names it; -v also prints the step's traceback
as the peer formatted it (the peer's own frames cut).

Exit status: 0 on success, 1 when the run failed (the error on stderr), 2 for a
bad command, input or connection, 130 on Ctrl-C (which cancels the run).
"""

#: The workflow name sent when only --step is given (the peer only logs it).
DEFAULT_WORKFLOW = "blazen-peer-cli"


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    connection: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "call",
        parents=[common, connection],
        help="run steps on a peer and print the result",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", metavar="ADDR", help="HOST:PORT or URL of the peer")
    parser.add_argument("--workflow", metavar="NAME", help="workflow name (declared on the peer)")
    parser.add_argument(
        "--step",
        dest="steps",
        action="append",
        default=[],
        metavar="ID",
        help="a step to run (repeat for several)",
    )
    parser.add_argument(
        "--input",
        metavar="JSON|@FILE|@-",
        help="the run's input: JSON text, @FILE to read a file, @- for stdin (default: null)",
    )
    parser.add_argument("--timeout", type=float, metavar="SECS", help="deadline of the run")
    parser.add_argument("--stream", action="store_true", help="print events as they happen")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="when a step fails, print the peer's traceback of it (stderr)",
    )
    parser.set_defaults(run=run, default_log_level="WARNING", validate=_validate)


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workflow is None and not args.steps:
        parser.error("give --workflow NAME, --step ID, or both")
    check_client_tls_options(parser, args)


async def run(args: argparse.Namespace) -> int:
    # Read before connecting, so a bad input fails fast and runs nothing.
    payload = None if args.input is None else read_input(args.input)
    workflow = args.workflow or DEFAULT_WORKFLOW
    try:
        async with await connect(args) as client:
            if args.stream:
                await _stream(client, workflow, args, payload)
            else:
                await _invoke(client, workflow, args, payload)
    except WorkflowError as error:
        if args.input is None and "input is null" in error.message:
            # A step wanted fields of an input this command never sent.
            error.message += "; this call gave no --input (pass --input JSON, @FILE or @-)"
            error.args = (error.message,)
        if error.remote_traceback is not None and not args.json:
            if args.verbose:
                _print_remote_traceback(error)
            else:
                error.message += " (-v shows the peer's traceback)"
                error.args = (error.message,)
        raise
    return 0


def _print_remote_traceback(error: WorkflowError) -> None:
    """The step's traceback as the peer formatted it, before the error line."""
    where = f"step `{error.step_id}`" if error.step_id else "the step"
    if error.node_id:
        where += f" on node `{error.node_id}`"
    traceback = (error.remote_traceback or "").rstrip("\n")
    print(f"{PROG}: the peer's traceback of {where}:\n{traceback}", file=sys.stderr, flush=True)


async def _invoke(
    client: PeerClient, workflow: str, args: argparse.Namespace, payload: Any
) -> None:
    response = await client.invoke_sub_workflow(workflow, args.steps, payload, args.timeout)
    response.raise_for_error()
    print_json(response_json(response) if args.json else response.result)


async def _stream(
    client: PeerClient, workflow: str, args: argparse.Namespace, payload: Any
) -> None:
    async with client.stream_sub_workflow(workflow, args.steps, payload, args.timeout) as stream:
        async for event in stream:
            if stream.response is not None:
                break  # the terminal StopEvent; its response is printed below
            _print_event(event, as_json=args.json)
    response = stream.response
    if response is None:
        raise ValidationError("the stream ended without a result")
    if args.json:
        # JSON lines: every line one object, terminal or not.
        print(dumps(response_json(response)), flush=True)
    else:
        print_json(response.result)


def _print_event(event: Event, *, as_json: bool) -> None:
    name, data = event_wire(event)
    line = dumps({"event": name, "data": data}) if as_json else f"event {name} {dumps(data)}"
    # Flushed per event: a pipe's reader sees each one as it happens.
    print(line, flush=True)


def event_wire(event: Event) -> tuple[str, dict[str, Any]]:
    """An event's wire name and fields, whether this process defines its class or not."""
    if isinstance(event, GenericEvent):
        return event.event_type, dict(event.data)
    return event_type_name(type(event)), event.to_dict()


def read_input(spec: str) -> Any:
    """The value of ``--input``: JSON text, ``@FILE`` or ``@-`` (stdin)."""
    if spec == "@-":
        source, text = "stdin", sys.stdin.read()
    elif spec.startswith("@"):
        source, text = spec[1:], _read_file(spec[1:])
    else:
        source, text = "the argument", spec
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        detail = (
            f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else str(exc)
        )
        raise ValidationError(f"--input is not valid JSON ({source}): {detail}") from None


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"--input @{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValidationError(f"--input @{path}: not UTF-8 text ({exc.reason})") from None


def _refuse_constant(name: str) -> NoReturn:
    # Python's json accepts NaN and Infinity; JSON and the peer do not.
    raise ValueError(f"{name} is not a JSON value")
