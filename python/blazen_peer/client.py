"""Calling steps on another machine."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from . import _native, _tracing
from ._address import peer_url
from ._auth import resolve_token, warn_if_token_in_clear
from ._ref_book import RefBook
from ._run_request import Reply, RunRequest, settle
from ._v1_peer import note_v1_only, release_parent_refs, release_parent_refs_blocking
from .errors import (
    PeerError,
    PeerUnsupportedError,
    RefNotFoundError,
    ValidationError,
)
from .listing import HealthStatus, PeerSteps
from .refs import RefLifetime, decode_ref_value
from .remote_ref import RemoteRef
from .responses import RemoteRefDescriptor, SubWorkflowResponse
from .streaming import OpenedStream, SubWorkflowBlockingStream, SubWorkflowStream
from .tls import ClientTls
from .uploads import put_call, uploaded
from .usage import within_run

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["ParentRun", "PeerClient", "RemoteRefDescriptor", "SubWorkflowResponse"]

# The defaults live in the Rust core (transport.rs, client/connect.rs).
DEFAULT_CONNECT_TIMEOUT_SECS: float = _native.DEFAULT_CONNECT_TIMEOUT_SECS
DEFAULT_MAX_MESSAGE_BYTES: int = _native.DEFAULT_MAX_MESSAGE_BYTES
DEFAULT_KEEPALIVE_INTERVAL_SECS: float = _native.DEFAULT_KEEPALIVE_INTERVAL_SECS
DEFAULT_KEEPALIVE_TIMEOUT_SECS: float = _native.DEFAULT_KEEPALIVE_TIMEOUT_SECS


@dataclass(frozen=True)
class _ConnectOptions:
    """What the native client reads (by attribute) to connect."""

    connect_timeout_secs: float
    max_message_bytes: int
    token: str | None
    tls: _native.ClientTls | None
    keepalive_interval_secs: float | None
    keepalive_timeout_secs: float

    @staticmethod
    def build(
        address: str,
        token: str | None,
        tls: ClientTls | None,
        connect_timeout_secs: float,
        max_message_bytes: int,
        keepalive_interval_secs: float | None,
        keepalive_timeout_secs: float,
    ) -> _ConnectOptions:
        if tls is not None and not isinstance(tls, ClientTls):
            raise ValidationError(
                f"tls must be a ClientTls (ClientTls.from_pem(ca=...)), not {type(tls).__name__}"
            )
        token = resolve_token(token)
        warn_if_token_in_clear(address, token)
        return _ConnectOptions(
            connect_timeout_secs=connect_timeout_secs,
            max_message_bytes=max_message_bytes,
            token=token,
            tls=tls._native if tls is not None else None,
            keepalive_interval_secs=keepalive_interval_secs,
            keepalive_timeout_secs=keepalive_timeout_secs,
        )


def _as_uuid(key: uuid.UUID | str) -> uuid.UUID:
    return key if isinstance(key, uuid.UUID) else uuid.UUID(key)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _refuse_inside_loop(method: str, alternative: str, owner: str | None = None) -> None:
    if not _in_event_loop():
        return
    # connect is a classmethod; the others are called on a client.
    if owner is None:
        owner = "PeerClient" if alternative == "connect" else "client"
    raise ValidationError(
        f"{method}() blocks the thread and was called from a running event loop; "
        f"use `await {owner}.{alternative}(...)` there instead"
    )


def _with_trace(request: RunRequest, headers: _tracing.TraceHeaders) -> RunRequest:
    traceparent, tracestate = headers
    return replace(request, traceparent=traceparent, tracestate=tracestate)


def _traced(request: RunRequest) -> RunRequest:
    """The request carrying the current span's trace context, when tracing is on
    (a stream's run becomes a child of the span that reads it)."""
    return _with_trace(request, _tracing.current_headers()) if _tracing.INSTALLED else request


class PeerClient:
    """A connection to one peer; all calls share one HTTP/2 channel and may overlap."""

    def __init__(self, ref: _native.PeerClient) -> None:
        self._ref = ref
        self._refs = RefBook()
        # Set once this client logged that its peer speaks v1 only (_v1_peer.py).
        self._v1_only_noted = False

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        node_id: str,
        token: str | None = None,
        tls: ClientTls | None = None,
        connect_timeout_secs: float = DEFAULT_CONNECT_TIMEOUT_SECS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_interval_secs: float | None = DEFAULT_KEEPALIVE_INTERVAL_SECS,
        keepalive_timeout_secs: float = DEFAULT_KEEPALIVE_TIMEOUT_SECS,
    ) -> PeerClient:
        """Connects to ``address``: ``HOST:PORT`` (``https://`` with ``tls=``, else
        ``http://``), ``http://HOST:PORT``, or ``https://HOST:PORT`` with ``tls=``; the
        port is required. ``token`` (default ``$BLAZEN_PEER_TOKEN``) is sent with every
        call. Raises TransportError when nothing listens, TlsError when the handshake
        fails, ValidationError for a malformed address."""
        address = peer_url(address, tls=tls is not None)
        options = _ConnectOptions.build(
            address,
            token,
            tls,
            connect_timeout_secs,
            max_message_bytes,
            keepalive_interval_secs,
            keepalive_timeout_secs,
        )
        _native.refresh_log_levels()
        return cls(await _native.PeerClient.connect(address, node_id, options))

    @classmethod
    def connect_blocking(
        cls,
        address: str,
        *,
        node_id: str,
        token: str | None = None,
        tls: ClientTls | None = None,
        connect_timeout_secs: float = DEFAULT_CONNECT_TIMEOUT_SECS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_interval_secs: float | None = DEFAULT_KEEPALIVE_INTERVAL_SECS,
        keepalive_timeout_secs: float = DEFAULT_KEEPALIVE_TIMEOUT_SECS,
    ) -> PeerClient:
        """Blocking :meth:`connect`, for code without an event loop."""
        _refuse_inside_loop("connect_blocking", "connect")
        address = peer_url(address, tls=tls is not None)
        options = _ConnectOptions.build(
            address,
            token,
            tls,
            connect_timeout_secs,
            max_message_bytes,
            keepalive_interval_secs,
            keepalive_timeout_secs,
        )
        return cls(_native.PeerClient.connect_blocking(address, node_id, options))

    @property
    def node_id(self) -> str:
        """This client's node id."""
        return self._ref.node_id

    @property
    def address(self) -> str:
        """The peer's address."""
        return self._ref.address

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._ref.closed

    async def invoke_sub_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
    ) -> SubWorkflowResponse:
        """Runs steps on the peer. A failed workflow comes back with ``.error`` set;
        a run past ``timeout_secs`` raises PeerTimeoutError."""
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return cast(SubWorkflowResponse, await self._send(request, Reply.RESPONSE))

    async def run_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
    ) -> Any:
        """Runs steps on the peer and returns the result; raises WorkflowError on failure."""
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return await self._send(request, Reply.RESULT)

    async def run_remote_workflow_json(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input_json: str = "null",
        timeout_secs: float | None = None,
    ) -> str:
        """JSON text in, the result's JSON text out; raises WorkflowError on failure."""
        request = RunRequest.of_json(workflow_name, step_ids, input_json, timeout_secs)
        return cast(str, await self._send(request, Reply.JSON))

    def invoke_sub_workflow_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
    ) -> SubWorkflowResponse:
        """Blocking :meth:`invoke_sub_workflow`."""
        _refuse_inside_loop("invoke_sub_workflow_blocking", "invoke_sub_workflow")
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return cast(SubWorkflowResponse, self._send_blocking(request, Reply.RESPONSE))

    def run_remote_workflow_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
    ) -> Any:
        """Blocking :meth:`run_remote_workflow`."""
        _refuse_inside_loop("run_remote_workflow_blocking", "run_remote_workflow")
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return self._send_blocking(request, Reply.RESULT)

    def run_remote_workflow_json_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input_json: str = "null",
        timeout_secs: float | None = None,
    ) -> str:
        """Blocking :meth:`run_remote_workflow_json`."""
        _refuse_inside_loop("run_remote_workflow_json_blocking", "run_remote_workflow_json")
        request = RunRequest.of_json(workflow_name, step_ids, input_json, timeout_secs)
        return cast(str, self._send_blocking(request, Reply.JSON))

    def stream_sub_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
    ) -> SubWorkflowStream:
        """Runs steps on the peer and yields the events they write with
        ``ctx.write_event_to_stream`` as they happen, then the terminal StopEvent::

            async for event in client.stream_sub_workflow("train", ["my_app::train"], {}):
                print(event)

        Events of types this process does not define arrive as :class:`GenericEvent`.
        A failed run raises WorkflowError (PeerTimeoutError past ``timeout_secs``)
        after the events written before the failure. Closing the stream (``async
        with``, ``aclose()``) cancels the run on the peer."""
        # Checked and encoded now; the call itself starts when the stream is first read.
        request = self._parented(RunRequest.of_value(workflow_name, step_ids, input, timeout_secs))
        return SubWorkflowStream(lambda: self._open_stream(request))

    def stream_sub_workflow_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
    ) -> SubWorkflowBlockingStream:
        """Blocking :meth:`stream_sub_workflow`::

            with client.stream_sub_workflow_blocking("train", ["my_app::train"], {}) as stream:
                for event in stream:
                    print(event)

        Each ``next()`` waits for the next event; leaving the ``with`` block,
        ``stream.close()`` or Ctrl-C cancels the run on the peer."""
        _refuse_inside_loop("stream_sub_workflow_blocking", "stream_sub_workflow")
        request = self._parented(RunRequest.of_value(workflow_name, step_ids, input, timeout_secs))

        def open_call() -> OpenedStream:
            _refuse_inside_loop("stream_sub_workflow_blocking", "stream_sub_workflow")
            return self._open_stream_blocking(request)

        return SubWorkflowBlockingStream(open_call)

    async def list_steps(self) -> PeerSteps:
        """The steps and workflows the peer can run (the ``ListSteps`` method)."""
        return PeerSteps._from_native(await self._ref.list_steps())

    async def health(self, service: str = "", *, timeout_secs: float | None = 5.0) -> HealthStatus:
        """The peer's standard gRPC health (``grpc.health.v1.Health``) for
        ``service`` (empty: the whole server): "SERVING", "NOT_SERVING" while
        it drains, "SERVICE_UNKNOWN" for a service it does not serve. Raises
        TransportError when it cannot be reached."""
        status = await self._ref.health(service, timeout_secs)
        return cast(HealthStatus, status)

    def list_steps_blocking(self) -> PeerSteps:
        """Blocking :meth:`list_steps`."""
        _refuse_inside_loop("list_steps_blocking", "list_steps")
        return PeerSteps._from_native(self._ref.list_steps_blocking())

    def health_blocking(
        self, service: str = "", *, timeout_secs: float | None = 5.0
    ) -> HealthStatus:
        """Blocking :meth:`health`."""
        _refuse_inside_loop("health_blocking", "health")
        return cast(HealthStatus, self._ref.health_blocking(service, timeout_secs))

    async def deref_session_ref(self, key: uuid.UUID | str) -> bytes:
        """The bytes of a session ref held by the peer, of any size (streamed in pieces)."""
        with self._forgetting_if_gone(key):
            fetched = await self._ref.fetch(str(key))
        return fetched.data

    async def deref_session_ref_into(self, key: uuid.UUID | str, buffer: Buffer) -> int:
        """Streams a session ref into ``buffer`` (a bytearray, numpy array, mmap or
        writable memoryview at least as large as the value); returns the value's size.

        Reusing one buffer for many fetches avoids the cost of mapping new memory,
        which for large values is most of the time a fetch takes."""
        with self._forgetting_if_gone(key):
            fetched = await self._ref.fetch_into(str(key), buffer)
        return fetched.size

    async def fetch_session_ref(self, key: uuid.UUID | str) -> Any:
        """A session ref decoded by the codec for its type tag (see ``register_ref_codec``)."""
        with self._forgetting_if_gone(key):
            fetched = await self._ref.fetch(str(key))
        return self._decode(key, fetched)

    async def release_session_ref(self, key: uuid.UUID | str) -> bool:
        """Frees a session ref on the peer; False when it was already gone."""
        released = await self._ref.release(str(key))
        self._refs.forget(_as_uuid(key))
        return released

    def deref_session_ref_blocking(self, key: uuid.UUID | str) -> bytes:
        """Blocking :meth:`deref_session_ref`."""
        _refuse_inside_loop("deref_session_ref_blocking", "deref_session_ref")
        with self._forgetting_if_gone(key):
            return self._ref.fetch_blocking(str(key)).data

    def deref_session_ref_into_blocking(self, key: uuid.UUID | str, buffer: Buffer) -> int:
        """Blocking :meth:`deref_session_ref_into`."""
        _refuse_inside_loop("deref_session_ref_into_blocking", "deref_session_ref_into")
        with self._forgetting_if_gone(key):
            return self._ref.fetch_into_blocking(str(key), buffer).size

    def fetch_session_ref_blocking(self, key: uuid.UUID | str) -> Any:
        """Blocking :meth:`fetch_session_ref`."""
        _refuse_inside_loop("fetch_session_ref_blocking", "fetch_session_ref")
        with self._forgetting_if_gone(key):
            fetched = self._ref.fetch_blocking(str(key))
        return self._decode(key, fetched)

    def release_session_ref_blocking(self, key: uuid.UUID | str) -> bool:
        """Blocking :meth:`release_session_ref`."""
        _refuse_inside_loop("release_session_ref_blocking", "release_session_ref")
        released = self._ref.release_blocking(str(key))
        self._refs.forget(_as_uuid(key))
        return released

    async def put_session_ref(
        self,
        value: Any,
        *,
        lifetime: RefLifetime | None = None,
        type_tag: str | None = None,
    ) -> RemoteRef:
        """Streams ``value`` into the peer's session refs, in pieces sized to both
        sides' message limits, and returns its handle (``str(ref)`` is the key,
        ``ref.descriptor`` its descriptor); a step there reads it with
        ``await ctx.session_refs.get(key)``.

        Values are encoded as a step's ``insert`` encodes them: anything with the
        buffer protocol (bytes, bytearray, memoryview, numpy arrays) is read in
        place, never copied into ``bytes``; JSON values get tag ``json``; other
        types need a codec (``register_ref_codec``). By default the upload belongs
        to the current ``parent_run()`` (freed when it ends or its lease lapses);
        ``lifetime=RefLifetime.UNTIL_EXPLICIT_DROP`` keeps it until released.
        An upload cut off midway stores nothing. QuotaExceededError when the peer's
        ``max_upload_bytes`` would be passed (before any byte is sent)."""
        call = put_call(self, value, lifetime, type_tag)
        return uploaded(self, call, await self._ref.put(call))

    def put_session_ref_blocking(
        self,
        value: Any,
        *,
        lifetime: RefLifetime | None = None,
        type_tag: str | None = None,
    ) -> RemoteRef:
        """Blocking :meth:`put_session_ref`."""
        _refuse_inside_loop("put_session_ref_blocking", "put_session_ref")
        call = put_call(self, value, lifetime, type_tag)
        return uploaded(self, call, self._ref.put_blocking(call))

    def parent_run(self) -> ParentRun:
        """``async with client.parent_run() as run:`` tags every call inside with
        ``run.id``; refs those runs insert with ``UNTIL_PARENT_FINISH`` are
        released when the block ends, and leased (renewed in the background)
        while it runs, so a crashed parent cannot leak them.

        Without an event loop, ``with client.parent_run() as run:`` does the same
        for the ``*_blocking`` calls inside (a daemon thread renews the lease)."""
        return ParentRun(self)

    async def finish_parent(self, run_id: uuid.UUID | str) -> int:
        """Releases every ``UNTIL_PARENT_FINISH`` ref of a parent run; returns how many.
        A v1-only peer (no FinishParentRun) gets one ReleaseSessionRef per ref
        listed under the run instead."""
        try:
            return await self._ref.finish_parent(str(run_id))
        except PeerUnsupportedError as v1_only:
            note_v1_only(self, v1_only.method)
            return await release_parent_refs(self, str(run_id))
        finally:
            # Failed or not, the parent is over; its lease frees its refs on the peer.
            self._refs.forget_parent(str(run_id))

    def finish_parent_blocking(self, run_id: uuid.UUID | str) -> int:
        """Blocking :meth:`finish_parent`."""
        _refuse_inside_loop("finish_parent_blocking", "finish_parent")
        try:
            return self._ref.finish_parent_blocking(str(run_id))
        except PeerUnsupportedError as v1_only:
            note_v1_only(self, v1_only.method)
            return release_parent_refs_blocking(self, str(run_id))
        finally:
            self._refs.forget_parent(str(run_id))

    def _decode(self, key: uuid.UUID | str, fetched: _native.FetchedBytes) -> Any:
        # A v1 peer sends no type tag; the one the run's response announced stands in.
        tag = fetched.type_tag or self._refs.tag(_as_uuid(key)) or "bytes"
        return decode_ref_value(tag, fetched.data)

    @contextlib.contextmanager
    def _forgetting_if_gone(self, key: uuid.UUID | str) -> Iterator[None]:
        try:
            yield
        except RefNotFoundError:
            self._refs.forget(_as_uuid(key))
            raise

    # ---- the one call path; PeerPool uses these and nothing else of the client ----

    async def _send(self, request: RunRequest, reply: Reply) -> Any:
        """Sends one run request and settles its outcome as ``reply`` asks."""
        request = self._parented(request)
        if not (_tracing.INSTALLED and _tracing.active()):
            native = await self._ref.invoke(request)
        else:
            with _tracing.client_span(
                request.workflow_name, request.step_ids, self.address
            ) as headers:
                native = await self._ref.invoke(_with_trace(request, headers))
                _tracing.mark_failed(native.error)
        return settle(native, reply, self._rememberer(request.parent_run))

    def _send_blocking(self, request: RunRequest, reply: Reply) -> Any:
        """:meth:`_send` on the calling thread."""
        request = self._parented(request)
        if not (_tracing.INSTALLED and _tracing.active()):
            native = self._ref.invoke_blocking(request)
        else:
            with _tracing.client_span(
                request.workflow_name, request.step_ids, self.address
            ) as headers:
                native = self._ref.invoke_blocking(_with_trace(request, headers))
                _tracing.mark_failed(native.error)
        return settle(native, reply, self._rememberer(request.parent_run))

    async def _open_stream(self, request: RunRequest) -> OpenedStream:
        """Starts a streaming run; its refs join the parent the request names,
        wherever the stream is read."""
        request = self._parented(request)
        # The run's span on the peer becomes a child of the reader's span.
        native = await self._ref.stream(_traced(request))
        return OpenedStream(native, self._stream_settler(request.parent_run))

    def _open_stream_blocking(self, request: RunRequest) -> OpenedStream:
        """:meth:`_open_stream` on the calling thread."""
        request = self._parented(request)
        native = self._ref.stream_blocking(_traced(request))
        return OpenedStream(native, self._stream_settler(request.parent_run))

    def _holds_ref(self, key: uuid.UUID | str) -> bool:
        """True when a run made through this client left ``key`` on its peer."""
        return self._refs.knows(_as_uuid(key))

    def _parented(self, request: RunRequest) -> RunRequest:
        """The request tagged with the caller's open ``parent_run()`` on this client,
        and with the run of the step making it, whose usage totals the sub-run's join."""
        if request.within_run is None and (run := within_run()) is not None:
            request = replace(request, within_run=run)
        if request.parent_run is not None:
            return request
        parent = self._current_parent()
        return request if parent is None else replace(request, parent_run=parent)

    def _rememberer(
        self, parent: str | None
    ) -> Callable[[SubWorkflowResponse], SubWorkflowResponse]:
        def remember(response: SubWorkflowResponse) -> SubWorkflowResponse:
            self._refs.remember(
                ((key, descriptor.type_tag) for key, descriptor in response.remote_refs.items()),
                parent,
            )
            return response

        return remember

    def _stream_settler(
        self, parent: str | None
    ) -> Callable[[_native.SubWorkflowResponse], SubWorkflowResponse]:
        remember = self._rememberer(parent)
        return lambda native: cast(
            SubWorkflowResponse, settle(native, Reply.CHECKED_RESPONSE, remember)
        )

    def _current_parent(self) -> str | None:
        for run in reversed(_PARENT_RUNS.get()):
            if run.client is self:
                return str(run.id)
        return None

    async def close(self) -> None:
        """Closes the channel; later calls raise ValidationError. Idempotent."""
        self._ref.close()

    def close_blocking(self) -> None:
        """:meth:`close` for code without an event loop."""
        self._ref.close()

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> PeerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_blocking()

    def __repr__(self) -> str:
        return f"PeerClient({self.address!r}, node_id={self.node_id!r})"


_RENEWER_JOIN_SECS = 5.0
"""How long leaving a blocking parent_run() block waits for a lease renewal in flight."""

# The open parent runs of this context, innermost last; each client uses its own.
_PARENT_RUNS: contextvars.ContextVar[tuple[ParentRun, ...]] = contextvars.ContextVar(
    "blazen_peer_parent_runs", default=()
)


class ParentRun:
    """A parent run on one peer; see :meth:`PeerClient.parent_run`."""

    def __init__(self, client: PeerClient, run_id: uuid.UUID | None = None) -> None:
        self.client = client
        self.id = run_id or uuid.uuid4()
        self._token: contextvars.Token[tuple[ParentRun, ...]] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stop_renewing: threading.Event | None = None
        self._renewer: threading.Thread | None = None

    async def __aenter__(self) -> ParentRun:
        self._token = _PARENT_RUNS.set((*_PARENT_RUNS.get(), self))
        self._heartbeat = asyncio.create_task(self._renew_lease())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._token is not None:
            _PARENT_RUNS.reset(self._token)
        await self.client.finish_parent(self.id)

    def __enter__(self) -> ParentRun:
        if _in_event_loop():
            raise ValidationError(
                "`with client.parent_run()` blocks the thread when it ends and was entered "
                "in a running event loop; use `async with client.parent_run()` there instead"
            )
        self._token = _PARENT_RUNS.set((*_PARENT_RUNS.get(), self))
        self._stop_renewing = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_lease_blocking,
            args=(self._stop_renewing,),
            name=f"blazen_peer lease {self.id}",
            daemon=True,
        )
        self._renewer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stop_renewing is not None:
            self._stop_renewing.set()
        if self._renewer is not None:
            # A renewal in flight is bounded by the client's timeouts; one that lands
            # after the finish below finds no refs left to renew.
            self._renewer.join(timeout=_RENEWER_JOIN_SECS)
        if self._token is not None:
            _PARENT_RUNS.reset(self._token)
        self.client.finish_parent_blocking(self.id)

    def _renew_lease_blocking(self, stop: threading.Event) -> None:
        lease_secs = 3.0
        while not stop.wait(max(lease_secs / 3, 0.05)):
            try:
                lease_secs = self.client._ref.renew_parent_blocking(str(self.id))
            except PeerUnsupportedError as v1_only:
                # No lease to keep: a v1 peer's refs live until released.
                note_v1_only(self.client, v1_only.method)
                return
            except PeerError:
                lease_secs = 3.0

    async def _renew_lease(self) -> None:
        # Renewing at a third of the peer's lease survives two lost renewals.
        while True:
            try:
                lease_secs = await self.client._ref.renew_parent(str(self.id))
            except PeerUnsupportedError as v1_only:
                note_v1_only(self.client, v1_only.method)
                return
            except PeerError:
                lease_secs = 3.0
            await asyncio.sleep(max(lease_secs / 3, 0.05))

    def __repr__(self) -> str:
        return f"ParentRun({self.id})"
