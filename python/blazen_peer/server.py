"""Serving registered steps to other machines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from . import _metrics, _native, _readiness, _signals, _tracing
from ._auth import resolve_token
from ._wakeup import LoopWakeup
from .directory import PeerDirectory, PeerLink
from .errors import ValidationError
from .refs import SessionRefRegistry
from .tls import ServerTls
from .uploads import DEFAULT_MAX_UPLOAD_BYTES

__all__ = ["PeerServer", "ServerStats", "UploadStats"]

#: How long ``stop()`` lets runs in progress finish before cancelling them.
DEFAULT_GRACE_SECS = 10.0

# Limits: the defaults live in the Rust core (transport.rs, server/config.rs, server/limits.rs).
_NativeServer = _native.PeerServer
DEFAULT_RUN_TIMEOUT_SECS: float = _native.DEFAULT_RUN_TIMEOUT_SECS
DEFAULT_MAX_MESSAGE_BYTES: int = _native.DEFAULT_MAX_MESSAGE_BYTES
DEFAULT_MAX_CONCURRENT_RUNS: int = _native.DEFAULT_MAX_CONCURRENT_RUNS
DEFAULT_MAX_JSON_DEPTH: int = _native.DEFAULT_MAX_JSON_DEPTH
DEFAULT_KEEPALIVE_INTERVAL_SECS: float = _native.DEFAULT_KEEPALIVE_INTERVAL_SECS
DEFAULT_KEEPALIVE_TIMEOUT_SECS: float = _native.DEFAULT_KEEPALIVE_TIMEOUT_SECS
DEFAULT_MAX_CONNECTIONS: int = _NativeServer.DEFAULT_MAX_CONNECTIONS
DEFAULT_MAX_CONCURRENT_STREAMS: int = _NativeServer.DEFAULT_MAX_CONCURRENT_STREAMS
DEFAULT_HANDSHAKE_TIMEOUT_SECS: float = _NativeServer.DEFAULT_HANDSHAKE_TIMEOUT_SECS
DEFAULT_IDLE_CONNECTION_TIMEOUT_SECS: float = _NativeServer.DEFAULT_IDLE_CONNECTION_TIMEOUT_SECS
DEFAULT_REQUEST_BODY_TIMEOUT_SECS: float = _NativeServer.DEFAULT_REQUEST_BODY_TIMEOUT_SECS
DEFAULT_MAX_BUFFERED_REQUEST_BYTES: int = _NativeServer.DEFAULT_MAX_BUFFERED_REQUEST_BYTES


@dataclass(frozen=True)
class _TransportLimits:
    """What the native server reads (by attribute) for its transport limits."""

    max_connections: int
    max_concurrent_streams: int
    handshake_timeout_secs: float
    idle_connection_timeout_secs: float | None
    request_body_timeout_secs: float
    max_buffered_request_bytes: int


@dataclass(frozen=True)
class ServerStats:
    """Runs since the server started, by how they ended."""

    #: Runs that began (requests refused before running are not counted).
    runs_started: int
    #: Runs that ended with a StopEvent.
    runs_succeeded: int
    #: Runs that failed (a step raised, no StopEvent, ...), not counting the two below.
    runs_failed: int
    #: Runs cancelled by their caller (cancelled task, closed stream, lost
    #: connection), by a step raising CancelledError, or by shutdown.
    runs_cancelled: int
    #: Runs stopped at their deadline.
    runs_timed_out: int
    #: Runs going on now.
    runs_in_flight: int


@dataclass(frozen=True)
class UploadStats:
    """Uploaded values a server holds (``put_session_ref``), against ``max_upload_bytes``."""

    #: Bytes of uploaded values held, and reserved by uploads still arriving.
    bytes_held: int
    #: Uploads whose bytes are still arriving.
    in_progress: int
    #: Bytes those uploads received so far.
    bytes_arriving: int


def _server_tokens(token: str | Sequence[str] | None) -> list[str]:
    """Accepted tokens: one, several (while rotating), or ``$BLAZEN_PEER_TOKEN``."""
    if token is None or isinstance(token, str):
        resolved = resolve_token(token)
        return [] if resolved is None else [resolved]
    return list(token)


class PeerServer:
    """A peer that runs registered steps for remote callers.

    ``await server.start("127.0.0.1:0")`` serves in the background on the
    calling event loop (``async def`` steps run on that loop) and returns the
    bound address; ``await server.serve(address)`` serves until cancelled.
    A server serves once.

    Security: with ``token`` (default ``$BLAZEN_PEER_TOKEN``) every call must carry
    it (a list accepts any of several, for rotation); with ``tls`` the peer serves
    TLS, and mutual TLS when ``tls`` has a client CA. A non-loopback address with
    neither is refused unless ``insecure=True``.
    Limits: ``max_message_bytes`` per message, ``max_concurrent_runs`` (beyond it
    callers get PeerBusyError), ``max_json_depth`` for inputs; HTTP/2 keepalive
    pings every ``keepalive_interval_secs`` (None: never).
    Transport limits (README, "Limits"): ``max_connections`` open at once (more
    are closed at once), ``max_concurrent_streams`` calls per connection,
    ``handshake_timeout_secs`` for a new connection's TLS handshake and HTTP/2
    preface, ``idle_connection_timeout_secs`` without a call before a connection
    is closed (None: never), ``request_body_timeout_secs`` of silence in a
    request body before its call fails, ``max_buffered_request_bytes`` of
    request messages held at once (past it calls get PeerBusyError).
    Tracing: each run is an OpenTelemetry span, child of the caller's, when
    ``tracing`` is True, or when it is None (the default) and OpenTelemetry is
    installed with a tracer provider set before the server is made.
    Logs go to the ``blazen_peer`` logger, with ``node_id``, ``run_id``,
    ``workflow`` and ``step`` on each record.
    Metrics: with OpenTelemetry installed, every started server reports runs by
    outcome, run durations, runs in progress, session refs (count and bytes),
    open connections and refusals by reason to the meter ``blazen_peer``
    (README, "Metrics"); the application chooses where they go by setting a
    MeterProvider (``opentelemetry.metrics.set_meter_provider``), before or
    after the server starts. Nothing is read until the provider collects.
    HTTP/JSON: with ``http_json=True`` the same port also answers the published
    Rust crate's ``HttpPeerClient`` (``POST /v1/peer/invoke_sub_workflow``,
    ``/v1/peer/deref_session_ref``, ``/v1/peer/release_session_ref``; HTTP/1.1
    or HTTP/2) behind the same token, TLS and limits (README, "HTTP/JSON").
    Off by default: it opens the peer to plain HTTP clients.
    Placement: ``labels`` (``{"region": "eu-west", "gpu": "h100"}``) are reported
    by ``ListSteps``; a :class:`PeerPool` call with ``require=`` goes only to
    peers whose labels match (README, "Placement by labels").
    Uploads (``PeerClient.put_session_ref``): callers may hold at most
    ``max_upload_bytes`` of uploaded values here at once (stored, or still
    arriving); past it an upload gets QuotaExceededError before its bytes are sent.
    Peer-to-peer refs: ``peers`` maps node ids (or addresses, with their scheme)
    to :class:`PeerLink` entries (address, TLS, token; or just an address): the
    only peers this server's steps may fetch a :class:`RemoteRef` from, with
    ``ctx.session_refs.fetch``, and the only credentials they use there.
    """

    def __init__(
        self,
        node_id: str,
        *,
        default_timeout_secs: float = DEFAULT_RUN_TIMEOUT_SECS,
        session_refs: SessionRefRegistry | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: ServerTls | None = None,
        token: str | Sequence[str] | None = None,
        insecure: bool = False,
        max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        keepalive_interval_secs: float | None = DEFAULT_KEEPALIVE_INTERVAL_SECS,
        keepalive_timeout_secs: float = DEFAULT_KEEPALIVE_TIMEOUT_SECS,
        tracing: bool | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        handshake_timeout_secs: float = DEFAULT_HANDSHAKE_TIMEOUT_SECS,
        idle_connection_timeout_secs: float | None = DEFAULT_IDLE_CONNECTION_TIMEOUT_SECS,
        request_body_timeout_secs: float = DEFAULT_REQUEST_BODY_TIMEOUT_SECS,
        max_buffered_request_bytes: int = DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
        http_json: bool = False,
        labels: Mapping[str, str] | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        peers: Mapping[str, PeerLink | str] | None = None,
    ) -> None:
        if tracing and not _tracing.INSTALLED:
            raise ValidationError(
                "tracing=True needs OpenTelemetry: pip install opentelemetry-api "
                "opentelemetry-sdk (and unset BLAZEN_PEER_TRACING=0)"
            )
        # Decided once: an untraced server never pays a GIL hand-off per run.
        traced = _tracing.active() if tracing is None else tracing
        if tls is not None and not isinstance(tls, ServerTls):
            raise ValidationError(
                "tls must be a ServerTls (ServerTls.from_pem(cert=..., key=...)), "
                f"not {type(tls).__name__}"
            )
        self._directory = PeerDirectory(node_id, peers) if peers else None
        self._ref = _native.PeerServer(
            node_id,
            default_timeout_secs,
            session_refs._ref if session_refs is not None else None,
            max_message_bytes,
            max_concurrent_runs=max_concurrent_runs,
            max_json_depth=max_json_depth,
            tls=tls._native if tls is not None else None,
            tokens=_server_tokens(token),
            insecure=insecure,
            keepalive_interval_secs=keepalive_interval_secs,
            keepalive_timeout_secs=keepalive_timeout_secs,
            run_started=_tracing.run_started if traced else None,
            transport=_TransportLimits(
                max_connections=max_connections,
                max_concurrent_streams=max_concurrent_streams,
                handshake_timeout_secs=handshake_timeout_secs,
                idle_connection_timeout_secs=idle_connection_timeout_secs,
                request_body_timeout_secs=request_body_timeout_secs,
                max_buffered_request_bytes=max_buffered_request_bytes,
            ),
            http_json=http_json,
            labels=dict(labels or {}),
            max_upload_bytes=max_upload_bytes,
            peer_directory=self._directory,
        )
        self._tls = tls
        self._session_refs = (
            session_refs
            if session_refs is not None
            else SessionRefRegistry._wrap(self._ref.session_refs)
        )
        self._address: str | None = None
        self._wakeup: LoopWakeup | None = None

    @property
    def session_refs(self) -> SessionRefRegistry:
        """The registry this server's runs keep session refs in."""
        return self._session_refs

    @property
    def node_id(self) -> str:
        """The id this peer reports in results and errors."""
        return self._ref.node_id

    @property
    def address(self) -> str | None:
        """The bound ``HOST:PORT`` while serving, else None."""
        return self._address if self._ref.serving else None

    async def start(self, address: str = "127.0.0.1:0") -> str:
        """Binds ``address`` (port 0 picks a free port) and returns the bound ``HOST:PORT``."""
        # Logger levels set up since the last server or client started apply now.
        _native.refresh_log_levels()
        loop = asyncio.get_running_loop()
        self._address = await self._ref.start(address, loop)
        self._wakeup = LoopWakeup.install(loop)
        if _metrics.INSTALLED:
            _metrics.track(self)
        return self._address

    async def serve(
        self,
        address: str,
        *,
        grace: float | None = DEFAULT_GRACE_SECS,
        handle_signals: bool = True,
        announce: bool = True,
    ) -> None:
        """Serves until SIGTERM or Ctrl-C, or until the calling task is cancelled,
        then stops gracefully (see :meth:`stop`) and returns (re-raising
        CancelledError when cancelled).

        Once serving (signal handlers in place), it writes one readiness line to
        stderr, the same line ``blazen-peer serve`` prints::

            blazen-peer: node NODE serving on HOST:PORT (N steps: a, b, ...)

        serve() is how a process runs a peer as its main job, so it says it is up
        and on which port; ``announce=False`` keeps it quiet. :meth:`start` never
        prints: an application embedding the peer logs what it wants with the
        address start() returns.

        Signals (with ``handle_signals``, in the main thread) are borrowed, never
        taken from the application:

        - serve() handles SIGTERM and SIGINT only when the process leaves both to
          their defaults (``SIG_DFL``, ``default_int_handler``, or asyncio.run()'s
          Ctrl-C handler when serve() is the coroutine asyncio.run() runs, as in
          ``asyncio.run(server.serve(...))``); an ignored signal stays ignored;
        - if the application handles either one itself (``signal.signal``,
          ``loop.add_signal_handler``, or serve() runs as a side task under
          asyncio.run()), serve() leaves both alone: the application's handlers
          run, and it stops the peer by cancelling this task or calling
          :meth:`stop` (embedded apps are better served by :meth:`start` and
          :meth:`stop` in their startup and shutdown hooks);
        - on the first signal the previous handlers are put back before the drain
          begins, so a second signal acts as it would without the peer;
        - when serve() returns, raises or is cancelled, exactly the handlers it
          replaced are restored (a handler installed meanwhile by someone else is
          left in place).
        """
        bound = await self.start(address)
        stop_requested = asyncio.Event()
        try:
            with _signals.stop_on_signals(handle_signals, stop_requested.set):
                if announce:
                    _readiness.announce(self.node_id, bound)
                await stop_requested.wait()
        finally:
            await asyncio.shield(self.stop(grace=grace))

    def serve_blocking(
        self, address: str, *, grace: float | None = DEFAULT_GRACE_SECS, announce: bool = True
    ) -> None:
        """Serves on a new event loop in this thread until SIGTERM or Ctrl-C, then
        stops gracefully and returns. Like :meth:`serve`, it writes the readiness
        line to stderr once serving (``announce=False``: not).

        It runs :meth:`serve` under asyncio.run(), so the same signal rule applies:
        with both signals at their defaults, serve() handles them and restores them
        afterwards; if the application installed its own handler for either, they
        are left to it (a KeyboardInterrupt from Ctrl-C still stops the peer
        gracefully and returns)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ValidationError(
                "serve_blocking() was called from a running event loop; "
                "use `await server.serve(address)` there instead"
            )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self.serve(address, grace=grace, announce=announce))

    async def stop(self, grace: float | None = DEFAULT_GRACE_SECS) -> None:
        """Shuts down gracefully, and returns once the server is down:

        1. health turns NOT_SERVING and new runs are refused (callers get
           TransportError, safe to retry on another peer) while the port stays
           open, so probes and load balancers see the drain;
        2. runs in progress get ``grace`` seconds to finish (None: as long as
           they take);
        3. the rest are cancelled: async steps receive CancelledError, ``def``
           steps see ``ctx.cancelled``, callers get WorkflowError (kind Cancelled).

        Idempotent."""
        if grace is not None and (isinstance(grace, bool) or not grace >= 0):
            raise ValidationError(f"grace must be a number of seconds >= 0 or None, got {grace!r}")
        await self._ref.stop(None if grace is None else float(grace))
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.remove()
        if self._directory is not None:
            self._directory.close()

    def stats(self) -> ServerStats:
        """How many runs started and how each ended."""
        counts = self._ref.stats()
        return ServerStats(
            runs_started=counts.runs_started,
            runs_succeeded=counts.runs_succeeded,
            runs_failed=counts.runs_failed,
            runs_cancelled=counts.runs_cancelled,
            runs_timed_out=counts.runs_timed_out,
            runs_in_flight=counts.runs_in_flight,
        )

    def uploads(self) -> UploadStats:
        """Uploaded values held here, and the uploads still arriving."""
        counts = self._ref.uploads()
        return UploadStats(
            bytes_held=counts.bytes_held,
            in_progress=counts.in_progress,
            bytes_arriving=counts.bytes_arriving,
        )

    def _native_metrics(self) -> _native.ServerMetrics:
        """What the metrics instruments read (``_metrics``)."""
        return self._ref.metrics()

    @property
    def draining(self) -> bool:
        """True from the start of :meth:`stop` on."""
        return self._ref.draining

    async def __aenter__(self) -> PeerServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"PeerServer({self.node_id!r}, address={self.address!r})"
