"""``blazen-peer serve``: import step modules and serve them until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from .. import server as _server
from .._grammar import count, with_article
from .._readiness import readiness_line
from ..errors import PeerError, ValidationError
from ..server import DEFAULT_GRACE_SECS, PeerServer
from ..steps import Step, registered_step_ids, registered_workflows
from ..tls import ServerTls
from ..uploads import DEFAULT_MAX_UPLOAD_BYTES
from ._common import PROG, tokens_from_env
from ._peers import load_peer_directory
from ._prometheus import MetricsEndpoint, serve_metrics

DESCRIPTION = """\
Imports each TARGET, which registers its @step functions, then serves every
registered step on --listen until SIGTERM or Ctrl-C, when it drains: health turns
NOT_SERVING, runs in progress get --grace seconds, and the command exits with 0.
A second Ctrl-C stops at once.

TARGET is one of:
  my_app               a module, imported like `python -m` does (the current
                       directory comes first on sys.path)
  path/to/steps.py     a file; its directory goes first on sys.path, so it can
                       import its neighbours
  my_app:register      then calls my_app.register() (awaited when async), for
                       steps registered by code rather than at import
  my_app:STEPS         checks that my_app.STEPS is a step or a list of steps
                       (they registered when the module was imported)

Targets are imported before serving starts, as `python FILE` would run them. A
file that starts a server of its own when imported (`asyncio.run(server.serve(...))`
at module level, as a script does) is refused: put that code under
`if __name__ == "__main__":`.

Once serving, it prints one line to stderr:
  blazen-peer: node NODE serving on HOST:PORT (N steps: a, b, ...)
with the bound port when --listen asks for port 0.
"""

_log = logging.getLogger("blazen_peer.cli")
_ATTRIBUTE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "serve",
        parents=[common],
        help="serve the steps of Python modules to other peers",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="MODULE[:ATTR] or FILE.py")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="port 0: any free")
    parser.add_argument("--node-id", required=True, help="the id this peer reports")
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help="require a token from environment variable VAR; several comma-separated tokens "
        "are all accepted, for rotation (default: $BLAZEN_PEER_TOKEN)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without TLS or token",
    )
    parser.add_argument(
        "--http-json",
        action="store_true",
        help="also answer the HTTP/JSON routes (POST /v1/peer/...) of the Rust crate's "
        "HttpPeerClient on the same port, behind the same token and TLS (default: off)",
    )
    parser.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a placement label ListSteps reports and PeerPool(require=...) routes on, "
        "e.g. --label region=eu-west --label gpu=h100 (repeatable)",
    )
    parser.add_argument(
        "--grace",
        type=_grace,
        default=DEFAULT_GRACE_SECS,
        metavar="SECS",
        help="how long runs in progress may finish when stopping; 'none': no limit "
        f"(default: {DEFAULT_GRACE_SECS:g})",
    )
    parser.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=_server.DEFAULT_MAX_CONCURRENT_RUNS,
        metavar="N",
        help=f"(default: {_server.DEFAULT_MAX_CONCURRENT_RUNS})",
    )
    parser.add_argument(
        "--default-timeout",
        type=float,
        default=_server.DEFAULT_RUN_TIMEOUT_SECS,
        metavar="SECS",
        help="deadline of runs whose caller sets none "
        f"(default: {_server.DEFAULT_RUN_TIMEOUT_SECS:g})",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve metrics as Prometheus text on http://HOST:PORT/metrics, HOST being "
        "--listen's (needs the metrics extra: opentelemetry-exporter-prometheus)",
    )
    _add_connection_limits(parser)
    refs = parser.add_argument_group("session refs")
    refs.add_argument(
        "--max-upload-bytes",
        type=_whole_number,
        default=DEFAULT_MAX_UPLOAD_BYTES,
        metavar="BYTES",
        help="bytes of uploaded values (put_session_ref) held at once; past it uploads are "
        f"refused (default: {DEFAULT_MAX_UPLOAD_BYTES}; 0: no uploads)",
    )
    refs.add_argument(
        "--peers",
        metavar="FILE",
        help="JSON file of the peers this peer's steps may fetch refs from: node id -> "
        'address, or -> {"address", "token_env", "tls_ca", "tls_cert", "tls_key"}',
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="private key (PEM)")
    tls.add_argument(
        "--tls-client-ca", metavar="FILE", help="CA of client certificates: mutual TLS"
    )
    parser.set_defaults(run=run, prepare=prepare, default_log_level="INFO", validate=_check_options)


def _add_connection_limits(parser: argparse.ArgumentParser) -> None:
    """What one client may hold of the peer (README, "Limits"); defaults from the core."""
    limits = parser.add_argument_group("connection limits")
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        default=_server.DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections open at once; more are closed at once "
        f"(default: {_server.DEFAULT_MAX_CONNECTIONS}; keep it below ulimit -n)",
    )
    limits.add_argument(
        "--max-concurrent-streams",
        type=_positive_int,
        default=_server.DEFAULT_MAX_CONCURRENT_STREAMS,
        metavar="N",
        help="calls one connection may have open "
        f"(default: {_server.DEFAULT_MAX_CONCURRENT_STREAMS})",
    )
    limits.add_argument(
        "--handshake-timeout",
        type=_positive_secs,
        default=_server.DEFAULT_HANDSHAKE_TIMEOUT_SECS,
        metavar="SECS",
        help="a new connection's TLS handshake and HTTP/2 preface must arrive within it "
        f"(default: {_server.DEFAULT_HANDSHAKE_TIMEOUT_SECS:g})",
    )
    limits.add_argument(
        "--idle-connection-timeout",
        type=_positive_secs_or_none,
        default=_server.DEFAULT_IDLE_CONNECTION_TIMEOUT_SECS,
        metavar="SECS",
        help="close a connection with no call in progress this long; 'none': never "
        f"(default: {_server.DEFAULT_IDLE_CONNECTION_TIMEOUT_SECS:g})",
    )
    limits.add_argument(
        "--request-body-timeout",
        type=_positive_secs,
        default=_server.DEFAULT_REQUEST_BODY_TIMEOUT_SECS,
        metavar="SECS",
        help="fail a call whose request stops arriving this long "
        f"(default: {_server.DEFAULT_REQUEST_BODY_TIMEOUT_SECS:g})",
    )
    limits.add_argument(
        "--max-buffered-request-bytes",
        type=_positive_int,
        default=_server.DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
        metavar="BYTES",
        help="request bytes held at once across connections; past it calls are refused as "
        f"busy (default: {_server.DEFAULT_MAX_BUFFERED_REQUEST_BYTES}; at least the message "
        "limit)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text}")
    return port


def _positive_secs(text: str) -> float:
    try:
        secs = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < secs < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return secs


def _positive_secs_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else _positive_secs(text)


def _label(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _grace(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        secs = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not secs >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return secs


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _check_tls_options(parser, args)
    # A whole message of the largest size, and its 5-byte gRPC header, must fit.
    smallest = _server.DEFAULT_MAX_MESSAGE_BYTES + 5
    if args.max_buffered_request_bytes < smallest:
        parser.error(
            f"--max-buffered-request-bytes must be at least {smallest} (one whole message "
            f"of the largest size), got {args.max_buffered_request_bytes}"
        )


def _check_tls_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")


def prepare(args: argparse.Namespace) -> None:
    """Imports every TARGET before the event loop starts, as ``python FILE`` runs a
    file: code that runs at import (``asyncio.run(setup())`` included) works as it
    does there. A target that starts a server of its own is refused."""
    args.loaded = [(target, _import_reporting_errors(target)) for target in args.targets]


async def run(args: argparse.Namespace) -> int:
    stop_requested = asyncio.Event()
    with _stop_on_signals(stop_requested):
        # ATTRs run on the serving loop: an async register function may make
        # loop-bound things for the steps.
        for target, (module, attribute) in args.loaded:
            if attribute is not None:
                await _apply_reporting_errors(module, attribute, target)
        step_ids = registered_step_ids()
        if not step_ids:
            raise ValidationError(
                f"no steps are registered after importing {', '.join(args.targets)}; "
                "decorate functions with @step (or name a register function as MODULE:ATTR)"
            )
        if not stop_requested.is_set():
            await _serve(args, stop_requested)
    return 0


def _import_reporting_errors(target: str) -> tuple[ModuleType, str | None]:
    location, attribute = split_target(target)
    with _user_code(target):
        try:
            module = _import_file(location) if _is_path(location) else _import_module(location)
        except _ServerStarted as started:
            raise ValidationError(_started_at_import(target, started)) from None
    return module, attribute


async def _apply_reporting_errors(module: ModuleType, attribute: str, target: str) -> None:
    with _user_code(target):
        try:
            await _apply_attribute(module, attribute, target)
        except _ServerStarted:
            raise ValidationError(
                f"{target}: {attribute}() starts a server of its own (PeerServer.start); "
                f"`{PROG} serve` serves the registered steps itself, with its flags: name a "
                "function that only registers steps"
            ) from None


@contextlib.contextmanager
def _user_code(target: str) -> Iterator[None]:
    """Runs a target's own code: its failures become one ValidationError after its
    traceback (what the user needs to fix it), and PeerServer.start raises
    _ServerStarted instead of serving."""
    original = PeerServer.start

    async def refuse_start(self: PeerServer, address: str = "127.0.0.1:0") -> str:
        raise _ServerStarted(address)

    PeerServer.start = refuse_start  # type: ignore[method-assign]
    try:
        yield
    except (PeerError, _ServerStarted):
        raise
    except Exception as exc:
        traceback.print_exc()
        raise ValidationError(
            f"loading {target} raised {type(exc).__name__} (traceback above)"
        ) from None
    finally:
        PeerServer.start = original  # type: ignore[method-assign]


class _ServerStarted(BaseException):
    """A target started a PeerServer while being loaded. A BaseException, so that
    the target's own ``except Exception`` does not swallow it on the way out."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


def _started_at_import(target: str, started: _ServerStarted) -> str:
    """The message for a file that starts its server at import, naming the line."""
    frames = [
        frame
        for frame in traceback.extract_tb(started.__traceback__)
        if frame.name == "<module>" and not frame.filename.startswith("<")
    ]
    location, _ = split_target(target)
    where = ""
    if frames:
        line = frames[-1]
        code = f": {line.line.strip()}" if line.line else ""
        in_target = _is_path(location) and Path(line.filename) == Path(location).resolve()
        where = (
            f" (line {line.lineno}{code})"
            if in_target
            else f" ({line.filename}, line {line.lineno}{code})"
        )
    script = f"python {location}" if _is_path(location) else f"python -m {location}"
    return (
        f"{target} starts a server when imported{where}; `{PROG} serve` imports it for its "
        "steps and serves them itself, with its own flags. Put the code that starts the "
        'server under `if __name__ == "__main__":` (then `' + script + "` still runs it)"
    )


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    # Before the peer binds: a metrics port in use stops it before it serves.
    endpoint = None if args.metrics_port is None else _serve_metrics(args)
    try:
        await _serve_peer(args, stop)
    finally:
        if endpoint is not None:
            endpoint.close()


def _serve_metrics(args: argparse.Namespace) -> MetricsEndpoint:
    host = args.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    endpoint = serve_metrics(host, args.metrics_port, args.node_id)
    shown = f"[{host}]" if ":" in host else host
    _log.info("metrics on http://%s:%d/metrics", shown, endpoint.port)
    return endpoint


async def _serve_peer(args: argparse.Namespace, stop: asyncio.Event) -> None:
    server = PeerServer(
        args.node_id,
        default_timeout_secs=args.default_timeout,
        tls=_server_tls(args),
        token=tokens_from_env(args.token_env) if args.token_env else None,
        insecure=args.insecure,
        max_concurrent_runs=args.max_concurrent_runs,
        max_connections=args.max_connections,
        max_concurrent_streams=args.max_concurrent_streams,
        handshake_timeout_secs=args.handshake_timeout,
        idle_connection_timeout_secs=args.idle_connection_timeout,
        request_body_timeout_secs=args.request_body_timeout,
        max_buffered_request_bytes=args.max_buffered_request_bytes,
        http_json=args.http_json,
        labels=dict(args.label),
        max_upload_bytes=args.max_upload_bytes,
        peers=load_peer_directory(args.peers) if args.peers else None,
    )
    bound = await server.start(args.listen)
    try:
        _announce(server.node_id, bound)
        await stop.wait()
        _log.info("stopping: runs in progress get %s", _grace_text(args.grace))
    finally:
        # Shielded: a second Ctrl-C cancels this task, not the drain under way.
        await asyncio.shield(server.stop(grace=args.grace))
    stats = server.stats()
    _log.info(
        "stopped after %s (%d succeeded, %d failed, %d cancelled, %d timed out)",
        count(stats.runs_started, "run"),
        stats.runs_succeeded,
        stats.runs_failed,
        stats.runs_cancelled,
        stats.runs_timed_out,
    )


def _server_tls(args: argparse.Namespace) -> ServerTls | None:
    if args.tls_cert is None:
        return None
    return ServerTls.from_pem(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)


def _announce(node_id: str, bound: str) -> None:
    """The readiness line (the one PeerServer.serve() prints): scripts and tests
    wait for it instead of sleeping."""
    print(readiness_line(node_id, bound), file=sys.stderr, flush=True)
    for name in registered_workflows():
        _log.info("workflow %s declared", name)


def _grace_text(grace: float | None) -> str:
    return "as long as they take" if grace is None else f"{grace:g} s"


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM or SIGINT sets ``stop`` once; the handlers then go back to the
    defaults, so a second signal ends the process at once."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def request_stop() -> None:
        stop.set()
        restore()

    def restore() -> None:
        for signum in signals:
            loop.remove_signal_handler(signum)

    for signum in signals:
        loop.add_signal_handler(signum, request_stop)
    try:
        yield
    finally:
        restore()


def split_target(target: str) -> tuple[str, str | None]:
    """``(module or path, attribute or None)``; a colon only separates an attribute
    when what follows is a dotted name (so ``C:\\app\\steps.py`` stays a path)."""
    location, colon, attribute = target.rpartition(":")
    if colon and location and _ATTRIBUTE.fullmatch(attribute):
        return location, attribute
    return target, None


def _is_path(location: str) -> bool:
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return location.endswith(".py") or any(sep in location for sep in separators)


def _import_module(name: str) -> ModuleType:
    # A console script starts with its own directory on sys.path, not the current
    # one; put the current one first so `serve my_app` works like `python -m`.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ValidationError(
                f"no module named {missing!r} (searched the current directory and sys.path); "
                "pass a path ending in .py to import a file"
            ) from None
        raise


def _import_file(path: str) -> ModuleType:
    file = Path(path).resolve()
    if not file.is_file():
        raise ValidationError(f"no such file: {path}")
    name = file.parent.name if file.name == "__init__.py" else file.stem
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file is not None and Path(existing_file).resolve() == file:
            return existing
        raise ValidationError(
            f"cannot import {path} as module {name!r}: another module of that name is "
            "already imported; rename the file"
        )
    # Like `python FILE`: its directory comes first, so it imports its neighbours.
    sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValidationError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


async def _apply_attribute(module: ModuleType, attribute: str, target: str) -> None:
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ValidationError(
                f"{target}: module {module.__name__!r} has no attribute {attribute!r}"
            ) from None
    if isinstance(value, Step):
        return
    if isinstance(value, list | tuple | set | frozenset):
        not_steps = [item for item in value if not isinstance(item, Step)]
        if not_steps:
            raise ValidationError(
                f"{target}: {attribute} holds {not_steps[0]!r}, which is not a step "
                "(decorate it with @step)"
            )
        return
    if callable(value):
        outcome = value()
        if inspect.isawaitable(outcome):
            await outcome
        return
    raise ValidationError(
        f"{target}: {attribute} is {with_article(type(value).__name__)}; name a function to "
        "call, or a step or list of steps"
    )
