"""Stubs of the private extension module ``blazen_peer._native`` (checked by stubtest)."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, final

from typing_extensions import Buffer

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_SECS",
    "DEFAULT_KEEPALIVE_INTERVAL_SECS",
    "DEFAULT_KEEPALIVE_TIMEOUT_SECS",
    "DEFAULT_LEASE_SECS",
    "DEFAULT_MAX_CONCURRENT_RUNS",
    "DEFAULT_MAX_JSON_DEPTH",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_RETRY_BACKOFF_SECS",
    "DEFAULT_RETRY_MAX_BACKOFF_SECS",
    "DEFAULT_RETRY_MULTIPLIER",
    "DEFAULT_RUN_TIMEOUT_SECS",
    "ENVELOPE_VERSION",
    "MIN_MAX_MESSAGE_BYTES",
    "AbortOnCancel",
    "CallerIdentity",
    "ClientTls",
    "Completion",
    "EventStream",
    "EventTypes",
    "FetchedBytes",
    "FetchedSize",
    "ListedStep",
    "ListedWorkflow",
    "LocalRun",
    "LoopInbox",
    "ModelUsage",
    "PeerClient",
    "PeerServer",
    "RefBuffer",
    "RefRecord",
    "RemoteRefEntry",
    "RunContext",
    "RunCounts",
    "ServerMetrics",
    "ServerTls",
    "SessionRefRegistry",
    "StepListing",
    "SubWorkflowResponse",
    "SyncStepCall",
    "UploadCounts",
    "UsageTotals",
    "WrittenEvent",
    "_panic_probe",
    "close_python_gate",
    "next_sync_step",
    "refresh_log_levels",
    "register_step",
    "register_workflow",
    "registered_step_ids",
    "registered_workflows",
    "sync_step_worker_left",
    "unregister_step",
]

ENVELOPE_VERSION: int

# The core's defaults (blazen-peer-core `transport`, `server`, `client`, `session_refs`).
#: Bound on one gRPC message, both directions.
DEFAULT_MAX_MESSAGE_BYTES: int
#: A step's retries: the wait before the second attempt (``Retry.backoff_secs``)...
DEFAULT_RETRY_BACKOFF_SECS: float
#: ...the factor it grows by after each further attempt...
DEFAULT_RETRY_MULTIPLIER: float
#: ...and the longest wait between two attempts.
DEFAULT_RETRY_MAX_BACKOFF_SECS: float
#: Smallest ``max_message_bytes`` either end accepts.
MIN_MAX_MESSAGE_BYTES: int
#: HTTP/2 keepalive: a ping after this many seconds of silence on a connection...
DEFAULT_KEEPALIVE_INTERVAL_SECS: float
#: ...which must be answered within this many seconds, or the connection is dropped.
DEFAULT_KEEPALIVE_TIMEOUT_SECS: float
#: Seconds a client has to connect.
DEFAULT_CONNECT_TIMEOUT_SECS: float
#: Run deadline, in seconds, when a request carries no ``timeout_secs``.
DEFAULT_RUN_TIMEOUT_SECS: float
#: Lease of ``UNTIL_PARENT_FINISH`` session refs, in seconds.
DEFAULT_LEASE_SECS: float
#: Runs a server has in progress at once before it refuses calls as busy.
DEFAULT_MAX_CONCURRENT_RUNS: int
#: How deeply a request's JSON input may nest.
DEFAULT_MAX_JSON_DEPTH: int
#: Bytes of uploaded values a server holds at once (stored, or still arriving).
DEFAULT_MAX_UPLOAD_BYTES: int

class _PutArgs(Protocol):
    """An upload, read by attribute (`uploads._PutCall`)."""

    @property
    def value(self) -> Any: ...
    @property
    def payload(self) -> Buffer: ...
    @property
    def type_tag(self) -> str: ...
    @property
    def lifetime(self) -> str: ...
    @property
    def parent_run(self) -> str | None: ...

class _RunArgs(Protocol):
    """A run request, read by attribute (`_run_request.RunRequest`)."""

    @property
    def workflow_name(self) -> str: ...
    @property
    def step_ids(self) -> list[str]: ...
    @property
    def input_json(self) -> bytes: ...
    @property
    def timeout_secs(self) -> int | None: ...
    @property
    def parent_run(self) -> str | None: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def tracestate(self) -> str | None: ...
    @property
    def within_run(self) -> RunContext | None: ...

class _RunObservation(Protocol):
    """What `run_started` returns: told how the run ended."""

    context: tuple[str, str | None] | None
    def end(self, failure_kind: str | None, message: str | None) -> None: ...

@final
class EventTypes:
    """The routing chain of one Python event class, built once per class."""

    def __new__(cls, chain: Sequence[str]) -> EventTypes: ...
    @property
    def chain(self) -> list[str]:
        """The chain, most derived first."""

@final
class RunContext:
    """Native half of `blazen_peer.Context`."""

    def record_usage(self, data_json: bytes) -> None:
        """Counts a usage record (the JSON of a `blazen::UsageEvent`) in the run's totals."""
    @property
    def usage(self) -> UsageTotals:
        """The run's usage so far, its sub-runs' included."""

    @property
    def run_id(self) -> str:
        """Unique id of the run, as text."""
    @property
    def node_id(self) -> str:
        """Node executing the run."""
    @property
    def workflow_name(self) -> str:
        """Name the run was requested under."""
    @property
    def cancelled(self) -> bool:
        """True once the run ended or was cancelled."""
    @property
    def caller_node_id(self) -> str | None:
        """The node id the caller announced, for remote runs (not verified)."""
    @property
    def trace_context(self) -> tuple[str, str | None] | None:
        """`(traceparent, tracestate)` (W3C) this run's steps work under: the
        run's span when the server traces, else what the caller sent."""
    @property
    def peer_identity(self) -> CallerIdentity | None:
        """The caller's verified TLS client certificate, under mutual TLS; else None."""
    @property
    def peer_directory(self) -> Any:
        """The serving peer's directory (`PeerServer(peers=...)`), or None."""
    @property
    def streaming(self) -> bool:
        """True when a caller streams this run's events."""
    def write_stream_event(self, event_type: str, data_json: bytes) -> None:
        """Queues an event for the caller (dropped when nobody streams the run)."""
    def stream_full(self) -> bool:
        """True while writers should wait for the caller to read."""
    def wait_for_stream_room(self) -> None:
        """Blocks (GIL released) while the stream is full; for `def` steps in
        worker threads. Returns early when the run ends."""
    def stream_room(self) -> Awaitable[None]:
        """Resolves once the stream has room; for `async def` steps."""
    def set_json(self, key: str, json: bytes) -> None:
        """Stores JSON text under an exported key."""
    def set_object(self, key: str, value: object) -> None:
        """Stores any object under a private key."""
    def get(self, key: str) -> Any:
        """JSON bytes or the stored object under `key`, or None."""
    def insert_ref(self, value: object, payload: object, type_tag: str, lifetime: str) -> str:
        """Stores a session ref owned by this run; returns its key."""
    def get_ref(self, key: str) -> Any:
        """The session ref value under `key`, or None."""
    def remove_ref(self, key: str) -> bool:
        """Drops a session ref; True when it was there."""
    def exported_state(self) -> list[tuple[str, bytes]]:
        """Every exported key with its JSON text."""

@final
class SessionRefRegistry:
    """Session refs held by this process; share one between a server and local runs."""

    def __new__(cls, lease_secs: float = ...) -> SessionRefRegistry: ...
    def __len__(self) -> int: ...
    @property
    def total_bytes(self) -> int:
        """Bytes held by live refs."""
    @property
    def lease_secs(self) -> float:
        """Lease of `UNTIL_PARENT_FINISH` refs, in seconds."""
    def list(self) -> list[RefRecord]:
        """Every live ref, oldest first."""
    def insert(self, value: object, payload: object, type_tag: str, lifetime: str) -> str:
        """Stores a value with no owning run (it lives until removed, or per `lifetime`)."""
    def get(self, key: str) -> Any:
        """The value under `key`, or None."""
    def remove(self, key: str) -> bool:
        """Drops the value under `key`; True when it was there."""

@final
class Completion:
    """Receives the outcome of one async step call on the event loop thread."""

    def attach(self, task: asyncio.Future[Any]) -> bool:
        """Records the step's task; False means the run gave up and the task must be cancelled."""
    def succeed(self, emitted: object) -> None:
        """Delivers the events a step emitted, as `[(event, event_types), ...]`."""
    def fail(self, exc: BaseException) -> None:
        """Delivers the exception a step raised."""

@final
class SyncStepCall:
    """A `def` step call handed to a worker thread: the step, its context and
    event as Python objects, and where its outcome goes."""

    @property
    def func(self) -> Callable[..., Any]: ...
    @property
    def context(self) -> RunContext: ...
    @property
    def event(self) -> Any: ...
    def succeed(self, emitted: object) -> None:
        """Delivers the events the step emitted, as `[(event, event_types), ...]`."""
    def fail(self, exc: BaseException) -> None:
        """Delivers the exception the step raised."""

def next_sync_step() -> SyncStepCall | None:
    """Blocks (GIL released) for the next `def` step call; None tells the calling
    worker thread to end. After interpreter exit began, never returns."""

def sync_step_worker_left() -> None:
    """A worker thread is ending because of an exception in its own loop."""

class _ConnectOptions(Protocol):
    """What `PeerClient.connect` reads, by attribute."""

    @property
    def connect_timeout_secs(self) -> float: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def token(self) -> str | None: ...
    @property
    def tls(self) -> ClientTls | None: ...
    @property
    def keepalive_interval_secs(self) -> float | None: ...
    @property
    def keepalive_timeout_secs(self) -> float: ...

_Pem = tuple[str, bytes]

@final
class ServerTls:
    """A server certificate, its key, and optionally the CA client certificates must chain to."""

    def __new__(cls, cert: _Pem, key: _Pem, client_ca: _Pem | None = None) -> ServerTls: ...
    @property
    def requires_client_certificates(self) -> bool:
        """True when clients must present a certificate signed by the client CA."""

@final
class ClientTls:
    """The CA a client trusts, its optional certificate and key, and an optional server name."""

    def __new__(
        cls, ca: _Pem, identity: tuple[_Pem, _Pem] | None = None, domain: str | None = None
    ) -> ClientTls: ...

class _TransportOptions(Protocol):
    """What `PeerServer` reads, by attribute, for its transport limits."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_concurrent_streams(self) -> int: ...
    @property
    def handshake_timeout_secs(self) -> float: ...
    @property
    def idle_connection_timeout_secs(self) -> float | None: ...
    @property
    def request_body_timeout_secs(self) -> float: ...
    @property
    def max_buffered_request_bytes(self) -> int: ...

@final
class ServerMetrics:
    """A server's figures at one moment: run counts by outcome, run durations
    per histogram bucket, refusals by reason, connections and session refs."""

    @property
    def runs_started(self) -> int: ...
    @property
    def runs_succeeded(self) -> int: ...
    @property
    def runs_failed(self) -> int: ...
    @property
    def runs_cancelled(self) -> int: ...
    @property
    def runs_timed_out(self) -> int: ...
    @property
    def runs_in_flight(self) -> int: ...
    @property
    def run_duration_bounds(self) -> list[float]:
        """Upper bounds in seconds of the duration buckets; one more bucket
        takes longer runs."""
    @property
    def run_duration_counts(self) -> dict[str, list[int]]:
        """Runs per duration bucket, by outcome."""
    @property
    def run_duration_seconds(self) -> dict[str, list[float]]:
        """Their seconds added up, per bucket, by outcome."""
    @property
    def refusals(self) -> dict[str, int]:
        """Calls and connections turned away, by reason."""
    @property
    def connections_open(self) -> int: ...
    @property
    def connections_accepted(self) -> int: ...
    @property
    def session_refs(self) -> int: ...
    @property
    def session_ref_bytes(self) -> int: ...

@final
class PeerServer:
    """A peer server; serves once, from `start` until `stop`."""

    DEFAULT_MAX_MESSAGE_BYTES: ClassVar[int]
    DEFAULT_MAX_CONNECTIONS: ClassVar[int]
    DEFAULT_MAX_CONCURRENT_STREAMS: ClassVar[int]
    DEFAULT_HANDSHAKE_TIMEOUT_SECS: ClassVar[float]
    DEFAULT_IDLE_CONNECTION_TIMEOUT_SECS: ClassVar[float]
    DEFAULT_REQUEST_BODY_TIMEOUT_SECS: ClassVar[float]
    DEFAULT_MAX_BUFFERED_REQUEST_BYTES: ClassVar[int]

    def __new__(
        cls,
        node_id: str,
        default_timeout_secs: float = ...,
        session_refs: SessionRefRegistry | None = None,
        max_message_bytes: int = ...,
        *,
        max_concurrent_runs: int = ...,
        max_json_depth: int = ...,
        tls: ServerTls | None = None,
        tokens: Sequence[str] = ...,
        insecure: bool = False,
        keepalive_interval_secs: float | None = ...,
        keepalive_timeout_secs: float = ...,
        run_started: Callable[
            [str, str, str, str | None, str | None, str | None], _RunObservation | None
        ]
        | None = None,
        transport: _TransportOptions | None = None,
        http_json: bool = False,
        labels: Mapping[str, str] = ...,
        max_upload_bytes: int = ...,
        peer_directory: Any = None,
    ) -> PeerServer: ...
    @property
    def session_refs(self) -> SessionRefRegistry:
        """The registry this server's runs keep session refs in."""
    @property
    def node_id(self) -> str:
        """This server's node id."""
    @property
    def draining(self) -> bool:
        """True from the start of `stop` on: new runs are refused, health says NOT_SERVING."""
    def stats(self) -> RunCounts:
        """Runs since the server started, by how they ended."""
    def metrics(self) -> ServerMetrics:
        """Everything metrics report; before `start`, no run and no connection."""
    def uploads(self) -> UploadCounts:
        """Bytes of uploaded values held, and the uploads still arriving; zeros before `start`."""
    @property
    def serving(self) -> bool:
        """True between a successful `start` and `stop`."""
    def start(self, address: str, event_loop: asyncio.AbstractEventLoop) -> Awaitable[str]:
        """Binds `address` and serves in the background; async steps run on `event_loop`."""
    def stop(self, grace_secs: float | None = None) -> Awaitable[None]:
        """Drains and stops (see `RunningServer::stop`); `grace_secs` None waits
        for every run. Idempotent: a second call waits for nothing."""

@final
class SubWorkflowResponse:
    """A decoded `SubWorkflowResponse`; JSON stays as bytes for Python to parse."""

    @property
    def peer_address(self) -> str | None:
        """The address of the peer that answered (and holds `remote_refs`)."""
    @property
    def has_remote_refs(self) -> bool:
        """True when refs outlive the run (cheaper than building `remote_refs`)."""
    @property
    def result_json(self) -> bytes | None:
        """The StopEvent's result as JSON text, or None."""
    @property
    def state_json(self) -> dict[str, bytes]:
        """Exported state, each value JSON text."""
    @property
    def remote_refs(self) -> list[RemoteRefEntry]:
        """The refs the response lists."""
    @property
    def usage(self) -> UsageTotals:
        """The run's usage totals, its sub-runs' included (zero from a v1 peer)."""
    @property
    def error(self) -> str | None:
        """The remote workflow's error text, or None."""
    @property
    def timed_out(self) -> bool:
        """True when the run failed because it passed its deadline."""
    def raise_for_error(self) -> None:
        """Raises the typed error for a failed run; does nothing for a successful one."""

@final
class PeerClient:
    """A connected client; calls share one HTTP/2 channel."""

    @staticmethod
    def connect(address: str, node_id: str, options: _ConnectOptions) -> Awaitable[PeerClient]:
        """Connects to `address`; the awaitable fails fast when nothing listens."""
    @staticmethod
    def connect_blocking(address: str, node_id: str, options: _ConnectOptions) -> PeerClient:
        """Blocking form of `connect`."""
    @property
    def node_id(self) -> str:
        """This client's node id."""
    @property
    def address(self) -> str:
        """The peer's address."""
    @property
    def closed(self) -> bool:
        """True after `close`."""
    def close(self) -> None:
        """Drops the channel; later calls raise ValidationError. Idempotent."""
    def invoke(self, call: _RunArgs) -> Awaitable[SubWorkflowResponse]:
        """Runs a sub-workflow; resolves to a `SubWorkflowResponse`."""
    def invoke_blocking(self, call: _RunArgs) -> SubWorkflowResponse:
        """Blocking form of `invoke`."""
    def stream(self, call: _RunArgs) -> Awaitable[EventStream]:
        """Starts a streaming run; resolves to an `EventStream` to read with `next()`."""
    def stream_blocking(self, call: _RunArgs) -> EventStream:
        """Blocking form of `stream`: the `EventStream`, read with `next_blocking()`."""
    def fetch(self, key: str) -> Awaitable[FetchedBytes]:
        """Fetches a session ref of any size; resolves to a `FetchedBytes`."""
    def fetch_blocking(self, key: str) -> FetchedBytes:
        """Blocking form of `fetch`."""
    def fetch_into(self, key: str, buffer: Buffer) -> Awaitable[FetchedSize]:
        """Streams a session ref into a caller's writable buffer; resolves to a
        `FetchedSize`. Reusing one buffer skips the page faults of new memory."""
    def fetch_into_blocking(self, key: str, buffer: Buffer) -> FetchedSize:
        """Blocking form of `fetch_into`."""
    def finish_parent(self, parent_run: str) -> Awaitable[int]:
        """Releases the `UNTIL_PARENT_FINISH` refs of a parent run; resolves to how many."""
    def finish_parent_blocking(self, parent_run: str) -> int:
        """Blocking form of `finish_parent`."""
    def renew_parent(self, parent_run: str) -> Awaitable[float]:
        """Renews a parent run's lease; resolves to the peer's lease in seconds."""
    def renew_parent_blocking(self, parent_run: str) -> float:
        """Blocking form of `renew_parent`."""
    def put(self, call: _PutArgs) -> Awaitable[RemoteRefEntry]:
        """Streams a value into the peer's session refs; resolves to its
        `RemoteRefEntry` (key and descriptor)."""
    def put_blocking(self, call: _PutArgs) -> RemoteRefEntry:
        """Blocking form of `put`."""
    def release(self, key: str) -> Awaitable[bool]:
        """Releases a session ref; resolves to False when it was already gone."""
    def release_blocking(self, key: str) -> bool:
        """Blocking form of `release`."""
    def list_steps(self) -> Awaitable[StepListing]:
        """What the peer can run; resolves to its `StepListing`."""
    def list_steps_blocking(self) -> StepListing:
        """Blocking form of `list_steps`."""
    def health(self, service: str = "", timeout_secs: float | None = None) -> Awaitable[str]:
        """Standard gRPC health check; resolves to "SERVING", "NOT_SERVING",
        "SERVICE_UNKNOWN" or "UNKNOWN"."""
    def health_blocking(self, service: str = "", timeout_secs: float | None = None) -> str:
        """Blocking form of `health`."""

@final
class LocalRun:
    """One in-process run of registered steps."""

    def __new__(
        cls,
        workflow_name: str,
        step_ids: Sequence[str],
        event_loop: asyncio.AbstractEventLoop,
        session_refs: SessionRefRegistry | None = None,
    ) -> LocalRun: ...
    @property
    def context(self) -> RunContext:
        """The run's context."""
    def run(
        self, start_event: object, types: EventTypes, timeout_secs: float | None = None
    ) -> asyncio.Future[Any]:
        """Runs from `start_event` to the StopEvent, which the awaitable returns."""
    def next_event(self) -> Awaitable[WrittenEvent | None]:
        """Resolves to each event the steps wrote (a `WrittenEvent`), in order,
        then None once the run ended and every event was read."""
    def discard_events(self) -> None:
        """Nobody will read the events: drops those queued and releases writers
        waiting for room, so an unread run never stalls."""

@final
class WrittenEvent:
    """An event a step of a local run wrote with `write_event_to_stream`."""

    @property
    def event_type(self) -> str: ...
    @property
    def data_json(self) -> bytes:
        """The event's fields as UTF-8 JSON text."""

@final
class AbortOnCancel:
    """Done-callback that aborts the Rust task when the asyncio future was cancelled."""

    def __call__(self, future: asyncio.Future[Any]) -> None: ...

def refresh_log_levels() -> None:
    """Forgets cached logger levels, so `setLevel` calls made since take effect
    (servers and clients call it when they start)."""

def close_python_gate() -> None:
    """Closes the gate and waits for runtime threads to leave Python and for
    running `def` steps to return (atexit hook)."""

class _RetryArgs(Protocol):
    """A step's retry policy, read by attribute (`steps.Retry`)."""

    @property
    def attempts(self) -> int: ...
    @property
    def backoff_secs(self) -> float: ...
    @property
    def multiplier(self) -> float: ...
    @property
    def max_backoff_secs(self) -> float: ...
    @property
    def on(self) -> tuple[type[BaseException], ...]: ...

def register_step(
    step_id: str,
    accepts: Sequence[str],
    func: object,
    is_async: bool,
    replace: bool = False,
    *,
    max_concurrency: int | None = None,
    timeout_secs: float | None = None,
    retry: _RetryArgs | None = None,
) -> None:
    """Registers `func` as step `step_id` in the process-wide registry."""

def unregister_step(step_id: str) -> bool:
    """Removes a step; True when it was registered."""

def registered_step_ids() -> list[str]:
    """Registered step ids, sorted."""

def register_workflow(name: str, step_ids: Sequence[str]) -> None:
    """Declares a named workflow, run when a request names no steps."""

def registered_workflows() -> list[str]:
    """Declared workflow names, sorted."""

def _panic_probe(message: str) -> Awaitable[None]:
    """Awaitable whose Rust future panics: lets the tests prove a panic surfaces
    as a `TransportError` instead of a hung coroutine or a dead interpreter."""

@final
class EventStream:
    """The events of a streaming run, then its response."""

    def next(self) -> Awaitable[tuple[str, bytes] | SubWorkflowResponse | None]:
        """Resolves to `(type_name, data_json)` per event, then the run's
        `SubWorkflowResponse`, then None."""
    def next_blocking(self) -> tuple[str, bytes] | SubWorkflowResponse | None:
        """Blocking form of `next`."""
    def close(self) -> None:
        """Cancels the call (and the run on the peer) unless it already ended. Idempotent."""

@final
class LoopInbox:
    """The inbox of one event loop; get it with [`for_loop`]."""

    # pyo3 gives a no-argument __call__ no text signature.
    def __call__(self, *args: object, **kwargs: object) -> None:
        """Runs every queued job (the loop calls this)."""

@final
class RunCounts:
    """Runs since a server started, by how they ended."""

    @property
    def runs_started(self) -> int: ...
    @property
    def runs_succeeded(self) -> int: ...
    @property
    def runs_failed(self) -> int: ...
    @property
    def runs_cancelled(self) -> int: ...
    @property
    def runs_timed_out(self) -> int: ...
    @property
    def runs_in_flight(self) -> int: ...

@final
class UploadCounts:
    """Uploaded values a server holds, and the uploads still arriving."""

    @property
    def bytes_held(self) -> int: ...
    @property
    def in_progress(self) -> int: ...
    @property
    def bytes_arriving(self) -> int: ...

@final
class RefBuffer:
    """The bytes of a stored ref that no Python object holds (an upload), read
    in place through the buffer protocol: `memoryview(buffer)` copies nothing,
    and the view keeps the bytes alive after the ref is released."""

    @property
    def type_tag(self) -> str:
        """Codec name of the bytes."""
    def __len__(self) -> int: ...

@final
class FetchedBytes:
    """A session ref fetched from a peer: its bytes and the type tag its codec reads."""

    @property
    def type_tag(self) -> str: ...
    @property
    def data(self) -> bytes: ...

@final
class FetchedSize:
    """A session ref streamed into a caller's buffer: how many bytes it filled,
    and the type tag its codec reads."""

    @property
    def type_tag(self) -> str: ...
    @property
    def size(self) -> int: ...

@final
class RefRecord:
    """One live session ref of a registry."""

    @property
    def key(self) -> str: ...
    @property
    def type_tag(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def lifetime(self) -> str: ...
    @property
    def created_at_epoch_ms(self) -> int: ...
    @property
    def owner_run(self) -> str | None: ...
    @property
    def parent_run(self) -> str | None: ...

@final
class RemoteRefEntry:
    """A ref a response lists: it stays on `origin_node_id` under `key`."""

    @property
    def key(self) -> str: ...
    @property
    def origin_node_id(self) -> str: ...
    @property
    def type_tag(self) -> str: ...
    @property
    def created_at_epoch_ms(self) -> int: ...

@final
class CallerIdentity:
    """The verified TLS client certificate of a caller."""

    @property
    def subject(self) -> str: ...
    @property
    def common_name(self) -> str | None: ...
    @property
    def dns_names(self) -> list[str]: ...
    @property
    def uris(self) -> list[str]: ...
    @property
    def certificate_der(self) -> bytes:
        """The certificate itself (DER)."""

@final
class ListedStep:
    """A step a peer lists, with the event types it accepts."""

    @property
    def id(self) -> str: ...
    @property
    def accepts(self) -> list[str]: ...
    @property
    def max_concurrency(self) -> int | None: ...
    @property
    def in_use(self) -> int: ...
    @property
    def timeout_secs(self) -> float | None: ...
    @property
    def attempts(self) -> int: ...

@final
class ListedWorkflow:
    """A workflow a peer lists, by name, with its steps."""

    @property
    def name(self) -> str: ...
    @property
    def step_ids(self) -> list[str]: ...

@final
class StepListing:
    """`ListSteps`' answer."""

    @property
    def node_id(self) -> str: ...
    @property
    def steps(self) -> list[ListedStep]: ...
    @property
    def workflows(self) -> list[ListedWorkflow]: ...
    @property
    def draining(self) -> bool: ...
    @property
    def labels(self) -> dict[str, str]: ...

@final
class ModelUsage:
    """A run's usage of one provider and model."""

    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def calls(self) -> int: ...

@final
class UsageTotals:
    """A run's usage totals, its sub-runs' included."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def by_model(self) -> list[ModelUsage]: ...
