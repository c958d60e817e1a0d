"""What the subcommands share: options, connecting, JSON output, error reports."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from ..client import PeerClient
from ..errors import (
    AuthenticationError,
    EnvelopeVersionError,
    PeerError,
    TlsError,
    TransportError,
    UnknownStepError,
    ValidationError,
    WorkflowError,
)
from ..responses import SubWorkflowResponse
from ..tls import ClientTls

PROG = "blazen-peer"

#: Exit statuses: a run or call that failed, and a problem with the command or
#: the connection (argparse also exits 2 for bad usage).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: What a subcommand's ``run`` is: parsed arguments in, exit status out.
Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

# Problems with the setup rather than with the run: retrying the same command cannot help.
_SETUP_ERRORS = (
    TransportError,
    ValidationError,
    TlsError,
    AuthenticationError,
    EnvelopeVersionError,
)


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (after its name: ``blazen-peer call --json ...``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--json",
        action="store_true",
        help='print JSON (errors too, as {"error": {...}} on stdout)',
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="level of the blazen_peer logger (default: INFO for serve, else WARNING)",
    )
    return parser


def connection_options() -> argparse.ArgumentParser:
    """How a client reaches a peer: identity, token and TLS."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--node-id",
        default=f"cli@{socket.gethostname()}",
        help="this client's node id, as the peer logs it (default: cli@HOSTNAME)",
    )
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help="send the token held in environment variable VAR (default: $BLAZEN_PEER_TOKEN)",
    )
    tls = parser.add_argument_group("TLS (an ADDR without a scheme becomes https://)")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA certificate (PEM) to trust")
    tls.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM), mutual TLS")
    tls.add_argument("--tls-key", metavar="FILE", help="client private key (PEM), mutual TLS")
    tls.add_argument("--tls-domain", metavar="NAME", help="name the peer's certificate carries")
    return parser


def check_client_tls_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses TLS option combinations that cannot work (argparse exit status 2)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_ca is None and (args.tls_cert or args.tls_domain):
        parser.error("--tls-cert, --tls-key and --tls-domain need --tls-ca")
    scheme = args.address.partition("://")[0].lower() if "://" in args.address else None
    if scheme == "https" and args.tls_ca is None:
        parser.error(
            f"{args.address} asks for TLS: give --tls-ca FILE, the CA that signed the peer's "
            "certificate"
        )
    if scheme == "http" and args.tls_ca is not None:
        parser.error(
            f"{args.address} is plaintext but --tls-ca asks for TLS: use https:// or "
            "drop the scheme (HOST:PORT with --tls-ca means https://)"
        )


def configure_logging(level: str, command: str | None = None) -> None:
    """Shows records of the ``blazen_peer`` logger (the Rust core's too) at ``level``
    and above on stderr, without turning up every other library's logging. For a
    client command, hints in them name its flags (as its errors do)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("blazen_peer").setLevel(level)
    if command in _CLIENT_COMMANDS:
        # A serving peer's records speak of its callers: their hints stay as written.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_FlagHints(command))


class _FlagHints(logging.Filter):
    """Rewrites the Python arguments a record suggests into ``command``'s flags."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "blazen_peer" or record.name.startswith("blazen_peer."):
            record.msg, record.args = cli_message(record.getMessage(), self.command), None
        return True


def tokens_from_env(variable: str) -> list[str]:
    """The comma-separated tokens held in ``variable``; ValidationError when there are none."""
    value = os.environ.get(variable)
    if value is None:
        raise ValidationError(f"--token-env {variable}: the environment variable is not set")
    tokens = [token.strip() for token in value.split(",") if token.strip()]
    if not tokens:
        raise ValidationError(f"--token-env {variable}: the environment variable holds no token")
    return tokens


def client_token(variable: str | None) -> str | None:
    """The one token a client sends; None leaves the default ($BLAZEN_PEER_TOKEN)."""
    if variable is None:
        return None
    tokens = tokens_from_env(variable)
    if len(tokens) > 1:
        # Several tokens are for a server accepting old and new during a rotation;
        # a client must pick the one it sends.
        raise ValidationError(
            f"--token-env {variable}: the variable holds {len(tokens)} comma-separated tokens; "
            "a client sends one"
        )
    return tokens[0]


async def connect(args: argparse.Namespace) -> PeerClient:
    """Connects to ``args.address`` with the connection options."""
    tls = (
        ClientTls.from_pem(
            ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, domain=args.tls_domain
        )
        if args.tls_ca is not None
        else None
    )
    # PeerClient.connect's address rule (README, "Server and client"): HOST:PORT is
    # https:// with --tls-ca, else http://; the port is required.
    return await PeerClient.connect(
        args.address,
        node_id=args.node_id,
        token=client_token(args.token_env),
        tls=tls,
    )


def dumps(value: Any, *, pretty: bool = False) -> str:
    """JSON text of ``value``; non-ASCII stays readable."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def print_json(value: Any, *, stream: TextIO | None = None) -> None:
    """Prints ``value`` as JSON: indented for a terminal, one line for a pipe."""
    out = stream or sys.stdout
    out.write(dumps(value, pretty=out.isatty()) + "\n")
    out.flush()


def response_json(response: SubWorkflowResponse) -> dict[str, Any]:
    """A run's response as the ``--json`` output of ``call``."""
    return {
        "result": response.result,
        "state": response.state,
        "remote_refs": {
            str(key): {
                "origin_node_id": ref.origin_node_id,
                "type_tag": ref.type_tag,
                "created_at_epoch_ms": ref.created_at_epoch_ms,
            }
            for key, ref in response.remote_refs.items()
        },
    }


def exit_status(error: PeerError) -> int:
    """2 for problems with the command or the connection, 1 for a failed run or call."""
    return EXIT_USAGE if isinstance(error, _SETUP_ERRORS) else EXIT_FAILED


def _error_details(error: PeerError) -> dict[str, Any]:
    """The typed fields of an error that scripts may branch on."""
    details: dict[str, Any] = {}
    if isinstance(error, WorkflowError):
        details = {
            "failure_kind": error.failure_kind,
            "step_id": error.step_id,
            "node_id": error.node_id,
            "remote_type": error.remote_type,
            "remote_traceback": error.remote_traceback,
        }
    elif isinstance(error, UnknownStepError):
        details = {"step_id": error.step_id, "registered": error.registered}
    elif isinstance(error, TransportError):
        details = {"started": error.started}
    return {key: value for key, value in details.items() if value is not None}


# Hints written for Python callers (the library's messages) and the flags a CLI
# user sets instead, by command. Applied in order; each pattern is a regex.
_CLIENT_TLS_FLAGS = {
    "ca": "--tls-ca FILE",
    "cert": "--tls-cert FILE",
    "key": "--tls-key FILE",
    "domain": "--tls-domain NAME",
}
_CLIENT_FLAGS: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
    # "(ClientTls.from_pem / --tls-ca)": the flag is already there.
    (r"\bClientTls\.from_pem(\([^)]*\))?\s*/\s*(?=--tls-ca)", ""),
    # "(drop tls= / --tls-ca)": likewise.
    (r"\btls=\s*/\s*(?=--tls-ca)", ""),
    # tls=ClientTls.from_pem(ca=..., cert=...), ClientTls(domain=...), (ClientTls ca=)
    (r"\b(tls=)?ClientTls(\.from_pem)?\(([^)]*)\)", lambda m: _tls_flags(m[3])),
    (r"\bClientTls ((?:\w+=\s*)+)", lambda m: _tls_flags(m[1])),
    (r"\bPeerClient\.connect(_blocking)?\(token=\.\.\.\)", "--token-env VAR"),
    (r"\btoken=(\.\.\.)?", "--token-env VAR"),
    (r"\btimeout_secs\b", "--timeout"),
)
_SERVE_FLAGS: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
    (r"\b(tls=)?ServerTls(\.from_pem)?\([^)]*\)", "--tls-cert FILE --tls-key FILE"),
    (r"\btoken=(\.\.\.)?", "--token-env VAR"),
    (r"\binsecure=True\b", "--insecure"),
    (r"\bbind 127\.0\.0\.1\b", "listen on 127.0.0.1"),
    (r"\bmax_concurrent_runs\b", "--max-concurrent-runs"),
    (r"\bdefault_timeout_secs\b", "--default-timeout"),
    (r"\bgrace must\b", "--grace must"),
)
_CLIENT_COMMANDS = ("call", "steps", "health")
_FLAGS_BY_COMMAND = {
    "serve": _SERVE_FLAGS,
    "call": _CLIENT_FLAGS,
    "steps": _CLIENT_FLAGS,
    "health": _CLIENT_FLAGS,
}


def _tls_flags(arguments: str) -> str:
    """``ca=..., cert=...`` as ``--tls-ca FILE --tls-cert FILE`` (no names: ``--tls-ca``)."""
    names = re.findall(r"(\w+)\s*=", arguments)
    flags = [_CLIENT_TLS_FLAGS[name] for name in names if name in _CLIENT_TLS_FLAGS]
    return " ".join(flags) or _CLIENT_TLS_FLAGS["ca"]


def cli_message(message: str, command: str | None) -> str:
    """``message`` with the Python arguments it suggests (``insecure=True``,
    ``ClientTls.from_pem(...)``) replaced by the flags of ``command``."""
    for pattern, flag in _FLAGS_BY_COMMAND.get(command or "", ()):
        message = re.sub(pattern, flag, message)
    return message


def report_error(error: PeerError, *, as_json: bool, command: str | None = None) -> int:
    """Prints ``error`` (stderr, or a JSON object on stdout) and returns the exit status;
    hints name ``command``'s flags, not Python arguments."""
    message = cli_message(error.message, command)
    if as_json:
        body = {"kind": error.kind, "message": message, **_error_details(error)}
        print_json({"error": body})
    else:
        print(f"{PROG}: error ({error.kind}): {message}", file=sys.stderr, flush=True)
    return exit_status(error)
