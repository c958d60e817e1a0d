"""A pool of peers behind one call API: routing, balancing, failover, rejoin.

Each call goes to a healthy member that registers every requested step (as
``ListSteps`` reports), the one with the fewest calls in flight. Members are
probed with the standard gRPC health check; one that fails a probe or a call
is taken out of rotation and probed until it serves again.

A member that speaks plain ``blazen.peer.v1`` (no health service, no
``ListSteps``, as the published Rust crate) is probed with a release of a
random key instead, and gets calls by trying: a step it answers UnknownStep
for is remembered as missing there, and the call goes to another member
(nothing ran). It forgets what it learned when it comes back from down.

A call that certainly never started on a member (the connection could not be
made, the member was draining or busy) is sent to another member. A call that
may have started is not re-sent, because steps need not be idempotent: it
raises :class:`TransportError` unless the caller passed ``idempotent=True``.

Session refs stay where they are: a call whose input names a ref the pool
knows (its key, or its :class:`RemoteRef`), uploaded through the pool or made
by a run, goes to the member holding it, where a step can read it; an upload
goes to a member that runs the steps it is for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import difflib
import ipaddress
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from ._address import peer_url
from ._run_request import Reply, RunRequest
from ._seconds import positive_secs
from .client import (
    DEFAULT_CONNECT_TIMEOUT_SECS,
    DEFAULT_MAX_MESSAGE_BYTES,
    PeerClient,
    _refuse_inside_loop,
)
from .errors import (
    PeerBusyError,
    PeerError,
    PeerUnsupportedError,
    PlacementError,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
    ValidationError,
)
from .listing import PeerSteps
from .refs import RefLifetime
from .remote_ref import RemoteRef
from .responses import SubWorkflowResponse
from .streaming import OpenedStream, SubWorkflowBlockingStream, SubWorkflowStream
from .tls import ClientTls

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["PeerPool", "PeerStatus"]

_log = logging.getLogger("blazen_peer")

# A pool pings its members sooner and waits less for the answer than a lone
# PeerClient (the core's 30 s / 20 s): a member that died silently is failed
# over from within ~20 s instead of ~50 s, and the pool has others to call.
POOL_KEEPALIVE_INTERVAL_SECS = 10.0
POOL_KEEPALIVE_TIMEOUT_SECS = 10.0

T = TypeVar("T")


# A session ref's key as it appears in a call's JSON input (str(key), or a RemoteRef's "key").
_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class PeerStatus:
    """One member of a pool, as the pool sees it now."""

    address: str
    node_id: str | None
    healthy: bool
    in_flight: int
    calls: int
    last_error: str | None
    step_ids: frozenset[str]
    # True for a member speaking plain blazen.peer.v1: its step_ids are unknown.
    v1_only: bool = False
    # The placement labels it declares (``require=`` routes on them).
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Settings:
    node_id: str
    token: str | None
    tls: ClientTls | None
    connect_timeout_secs: float
    max_message_bytes: int
    keepalive_interval_secs: float | None
    keepalive_timeout_secs: float
    probe_interval_secs: float
    probe_timeout_secs: float
    resolve_interval_secs: float


class _Member:
    """A peer of the pool: its connection, what it can run and how it is doing."""

    def __init__(self, address: str, tls: ClientTls | None) -> None:
        self.address = address
        self.tls = tls
        self.client: PeerClient | None = None
        self.steps: PeerSteps | None = None
        self.healthy = False
        self.in_flight = 0
        self.calls = 0
        self.last_error: str | None = None
        self.removed = False
        # A plain v1 peer: no health service, no ListSteps; `missing` holds the
        # step ids it answered UnknownStep for (it lists none).
        self.v1_only = False
        self.missing: set[str] = set()
        # The probe in progress, so a slow one (a reconnect waiting out its
        # connect timeout) neither delays the other members' nor doubles up.
        self.probing: asyncio.Task[None] | None = None

    def status(self) -> PeerStatus:
        return PeerStatus(
            address=self.address,
            node_id=self.steps.node_id if self.steps else None,
            healthy=self.healthy,
            in_flight=self.in_flight,
            calls=self.calls,
            last_error=self.last_error,
            step_ids=self.steps.step_ids if self.steps else frozenset(),
            v1_only=self.v1_only,
            labels=dict(self.steps.labels) if self.steps else {},
        )

    def has_labels(self, require: Mapping[str, str]) -> bool:
        """True when the member declares every required label with its value (a
        member not yet listed, or a v1 one, declares none)."""
        labels = self.steps.labels if self.steps is not None else {}
        return all(labels.get(name) == value for name, value in require.items())

    def may_run(self, workflow_name: str, step_ids: Sequence[str]) -> bool:
        """True when the member's listing has the steps, or, for a v1 member,
        when it did not yet answer UnknownStep for any of them. A v1 peer runs
        only the steps a request names, never a workflow by name."""
        if self.v1_only:
            return bool(step_ids) and self.missing.isdisjoint(step_ids)
        return self.steps is not None and self.steps.can_run(workflow_name, step_ids)


class _LoopThread:
    """An event loop of a pool's own, in a daemon thread: where a pool made by
    :meth:`PeerPool.connect_blocking` probes its members and routes calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="blazen_peer pool", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _run_on(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs ``make()`` as a task of ``loop`` (running in another thread), in the
    caller's context (its trace span), and blocks for its outcome. Ctrl-C while
    waiting cancels the task, which cancels the call and the run on the peer."""
    context = contextvars.copy_context()
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    started: list[asyncio.Task[T]] = []

    def settle(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            outcome.set_exception(asyncio.CancelledError())
        elif (failure := task.exception()) is not None:
            outcome.set_exception(failure)
        else:
            outcome.set_result(task.result())

    def start() -> None:
        if not outcome.set_running_or_notify_cancel():
            return
        task = loop.create_task(make(), context=context)
        started.append(task)
        task.add_done_callback(settle)

    def cancel() -> None:
        for task in started:
            task.cancel()

    if loop.is_closed() or not loop.is_running():
        raise ValidationError(
            "this PeerPool's event loop is not running (the pool was connected with "
            "`await PeerPool.connect(...)` on a loop that has ended); use "
            "PeerPool.connect_blocking(...) for a pool used without an event loop"
        )
    loop.call_soon_threadsafe(start)
    try:
        return outcome.result()
    except BaseException:
        if not outcome.done() and not outcome.cancel():
            loop.call_soon_threadsafe(cancel)
        raise


class PeerPool:
    """Several peers behind one call API; build it with :meth:`connect`, or with
    :meth:`connect_blocking` for code without an event loop (every call then has a
    ``*_blocking`` twin, as on :class:`PeerClient`)."""

    def __init__(self, sources: Sequence[str], settings: _Settings) -> None:
        self._sources = list(sources)
        self._settings = settings
        self._members: dict[str, _Member] = {}
        self._changed = asyncio.Condition()
        self._background: asyncio.Task[None] | None = None
        self._closed = False
        self._next = 0
        # Where the pool's probes and calls run: the loop it was connected on.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: _LoopThread | None = None

    @classmethod
    async def connect(
        cls,
        addresses: str | Sequence[str],
        *,
        node_id: str,
        token: str | None = None,
        tls: ClientTls | None = None,
        connect_timeout_secs: float = DEFAULT_CONNECT_TIMEOUT_SECS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_interval_secs: float | None = POOL_KEEPALIVE_INTERVAL_SECS,
        keepalive_timeout_secs: float = POOL_KEEPALIVE_TIMEOUT_SECS,
        probe_interval_secs: float = 2.0,
        probe_timeout_secs: float = 1.0,
        resolve_interval_secs: float = 30.0,
    ) -> PeerPool:
        """Connects to every peer of ``addresses`` (``HOST:PORT``, ``http://HOST:PORT``
        or ``https://HOST:PORT`` each, as for PeerClient.connect). A host name that
        resolves to several addresses, as a Kubernetes headless Service does, gives
        one member per address; names are resolved again every
        ``resolve_interval_secs`` so new peers join. Members that cannot be reached
        yet join once they answer.
        Raises ValidationError for malformed addresses or settings."""
        sources = [addresses] if isinstance(addresses, str) else list(addresses)
        if not sources:
            raise ValidationError("PeerPool.connect needs at least one peer address")
        # The rule of PeerClient.connect: HOST:PORT is https:// with tls=, else http://.
        sources = [peer_url(source, tls=tls is not None) for source in sources]
        for source in sources:
            _split(source)
        positive_secs("probe_interval_secs", probe_interval_secs)
        positive_secs("probe_timeout_secs", probe_timeout_secs)
        positive_secs("resolve_interval_secs", resolve_interval_secs)
        settings = _Settings(
            node_id=node_id,
            token=token,
            tls=tls,
            connect_timeout_secs=connect_timeout_secs,
            max_message_bytes=max_message_bytes,
            keepalive_interval_secs=keepalive_interval_secs,
            keepalive_timeout_secs=keepalive_timeout_secs,
            probe_interval_secs=probe_interval_secs,
            probe_timeout_secs=probe_timeout_secs,
            resolve_interval_secs=resolve_interval_secs,
        )
        pool = cls(sources, settings)
        pool._loop = asyncio.get_running_loop()
        await pool._resolve()
        await pool.probe_now()
        pool._background = asyncio.create_task(pool._maintain(), name="blazen_peer pool probes")
        return pool

    # ---- what callers see -------------------------------------------------

    @property
    def peers(self) -> list[PeerStatus]:
        """Every member, healthy or not, in address order."""
        return [self._members[address].status() for address in sorted(self._members)]

    async def wait_for_healthy(self, count: int = 1, *, timeout_secs: float = 10.0) -> None:
        """Returns once ``count`` members are healthy; raises PeerTimeoutError-like
        TransportError after ``timeout_secs``."""
        try:
            async with asyncio.timeout(timeout_secs), self._changed:
                await self._changed.wait_for(lambda: self._healthy_count() >= count)
        except TimeoutError:
            raise TransportError(
                f"only {self._healthy_count()} of the {count} peers asked for became healthy "
                f"within {timeout_secs} s: {self._describe_members()}",
                started=False,
            ) from None

    async def probe_now(self) -> None:
        """Probes every member once, now (connects those not yet connected)."""
        members = [member for member in self._members.values() if not member.removed]
        await asyncio.gather(*(self._probe(member) for member in members))

    async def invoke_sub_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
        *,
        idempotent: bool = False,
        require: Mapping[str, str] | None = None,
    ) -> SubWorkflowResponse:
        """:meth:`PeerClient.invoke_sub_workflow` on a member chosen by the pool (one
        whose labels include ``require``, when given: see README, "Placement")."""
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return cast(
            SubWorkflowResponse, await self._run(request, Reply.RESPONSE, idempotent, require)
        )

    async def run_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
        *,
        idempotent: bool = False,
        require: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`PeerClient.run_remote_workflow` on a member chosen by the pool (one
        whose labels include ``require``, when given)."""
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return await self._run(request, Reply.RESULT, idempotent, require)

    async def run_remote_workflow_json(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input_json: str = "null",
        timeout_secs: float | None = None,
        *,
        idempotent: bool = False,
        require: Mapping[str, str] | None = None,
    ) -> str:
        """:meth:`PeerClient.run_remote_workflow_json` on a member chosen by the pool."""
        request = RunRequest.of_json(workflow_name, step_ids, input_json, timeout_secs)
        return cast(str, await self._run(request, Reply.JSON, idempotent, require))

    def stream_sub_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
        *,
        require: Mapping[str, str] | None = None,
    ) -> SubWorkflowStream:
        """:meth:`PeerClient.stream_sub_workflow` on a member chosen by the pool.
        Opening the stream fails over like a call; once events flow, a broken
        connection raises TransportError (events cannot be replayed)."""
        # Encoded and checked now, as PeerClient does; routed when first read.
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return SubWorkflowStream(lambda: self._open_stream(request, require))

    async def deref_session_ref(self, key: uuid.UUID | str) -> bytes:
        """The bytes of a session ref, from the member whose run made it."""
        return await self._owner_of(key).deref_session_ref(key)

    async def deref_session_ref_into(self, key: uuid.UUID | str, buffer: Buffer) -> int:
        """:meth:`PeerClient.deref_session_ref_into`, from the member that made the ref."""
        return await self._owner_of(key).deref_session_ref_into(key, buffer)

    async def fetch_session_ref(self, key: uuid.UUID | str) -> Any:
        """:meth:`PeerClient.fetch_session_ref`, from the member that made the ref."""
        return await self._owner_of(key).fetch_session_ref(key)

    async def release_session_ref(self, key: uuid.UUID | str) -> bool:
        """:meth:`PeerClient.release_session_ref`, on the member that made the ref."""
        return await self._owner_of(key).release_session_ref(key)

    async def put_session_ref(
        self,
        value: Any,
        *,
        step_ids: Sequence[str] = (),
        workflow_name: str = "",
        lifetime: RefLifetime = RefLifetime.UNTIL_EXPLICIT_DROP,
        type_tag: str | None = None,
    ) -> RemoteRef:
        """:meth:`PeerClient.put_session_ref` on the member a call naming ``step_ids``
        (or the declared ``workflow_name``) would go to. Calls whose input names a
        ref the pool knows (its key, or its handle), uploaded or made by a run, go
        to the member holding it. A pool has no parent run: the upload lives until
        :meth:`release_session_ref`."""
        if lifetime is not RefLifetime.UNTIL_EXPLICIT_DROP:
            raise ValidationError(
                "a PeerPool has no parent run, so its uploads are UNTIL_EXPLICIT_DROP: free "
                "them with pool.release_session_ref (or upload with a PeerClient inside "
                "its parent_run())"
            )
        if not step_ids and not workflow_name:
            raise ValidationError(
                "name the steps (step_ids=...) or the declared workflow (workflow_name=...) "
                "the value is for, so the pool uploads it to a peer that runs them"
            )
        return await self._route(
            workflow_name,
            step_ids,
            False,
            lambda client: client.put_session_ref(value, lifetime=lifetime, type_tag=type_tag),
        )

    async def close(self) -> None:
        """Stops probing and closes every member's connection. Idempotent."""
        self._closed = True
        tasks = [self._background] + [member.probing for member in self._members.values()]
        self._background = None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for member in self._members.values():
            if member.client is not None:
                await member.client.close()

    async def __aenter__(self) -> PeerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"PeerPool({self._healthy_count()}/{len(self._members)} healthy)"

    # ---- blocking twins ---------------------------------------------------

    @classmethod
    def connect_blocking(
        cls,
        addresses: str | Sequence[str],
        *,
        node_id: str,
        token: str | None = None,
        tls: ClientTls | None = None,
        connect_timeout_secs: float = DEFAULT_CONNECT_TIMEOUT_SECS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive_interval_secs: float | None = POOL_KEEPALIVE_INTERVAL_SECS,
        keepalive_timeout_secs: float = POOL_KEEPALIVE_TIMEOUT_SECS,
        probe_interval_secs: float = 2.0,
        probe_timeout_secs: float = 1.0,
        resolve_interval_secs: float = 30.0,
    ) -> PeerPool:
        """Blocking :meth:`connect`, for code without an event loop. The pool
        probes its members on an event loop of its own, in a daemon thread, until
        :meth:`close_blocking` (or leaving ``with``)."""
        _refuse_inside_loop("connect_blocking", "connect", "PeerPool")
        runner = _LoopThread()
        try:
            pool = _run_on(
                runner.loop,
                lambda: cls.connect(
                    addresses,
                    node_id=node_id,
                    token=token,
                    tls=tls,
                    connect_timeout_secs=connect_timeout_secs,
                    max_message_bytes=max_message_bytes,
                    keepalive_interval_secs=keepalive_interval_secs,
                    keepalive_timeout_secs=keepalive_timeout_secs,
                    probe_interval_secs=probe_interval_secs,
                    probe_timeout_secs=probe_timeout_secs,
                    resolve_interval_secs=resolve_interval_secs,
                ),
            )
        except BaseException:
            runner.stop()
            raise
        pool._loop_thread = runner
        return pool

    def _blocking(self, method: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        _refuse_inside_loop(method, method.removesuffix("_blocking"), "pool")
        if self._loop is None:
            raise ValidationError("this PeerPool was not connected; use PeerPool.connect_blocking")
        return _run_on(self._loop, make)

    def wait_for_healthy_blocking(self, count: int = 1, *, timeout_secs: float = 10.0) -> None:
        """Blocking :meth:`wait_for_healthy`."""
        self._blocking(
            "wait_for_healthy_blocking",
            lambda: self.wait_for_healthy(count, timeout_secs=timeout_secs),
        )

    def probe_now_blocking(self) -> None:
        """Blocking :meth:`probe_now`."""
        self._blocking("probe_now_blocking", self.probe_now)

    def invoke_sub_workflow_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
        *,
        idempotent: bool = False,
        require: Mapping[str, str] | None = None,
    ) -> SubWorkflowResponse:
        """Blocking :meth:`invoke_sub_workflow`."""
        return self._blocking(
            "invoke_sub_workflow_blocking",
            lambda: self.invoke_sub_workflow(
                workflow_name,
                step_ids,
                input,
                timeout_secs,
                idempotent=idempotent,
                require=require,
            ),
        )

    def run_remote_workflow_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
        *,
        idempotent: bool = False,
        require: Mapping[str, str] | None = None,
    ) -> Any:
        """Blocking :meth:`run_remote_workflow`."""
        return self._blocking(
            "run_remote_workflow_blocking",
            lambda: self.run_remote_workflow(
                workflow_name,
                step_ids,
                input,
                timeout_secs,
                idempotent=idempotent,
                require=require,
            ),
        )

    def run_remote_workflow_json_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input_json: str = "null",
        timeout_secs: float | None = None,
        *,
        idempotent: bool = False,
        require: Mapping[str, str] | None = None,
    ) -> str:
        """Blocking :meth:`run_remote_workflow_json`."""
        return self._blocking(
            "run_remote_workflow_json_blocking",
            lambda: self.run_remote_workflow_json(
                workflow_name,
                step_ids,
                input_json,
                timeout_secs,
                idempotent=idempotent,
                require=require,
            ),
        )

    def stream_sub_workflow_blocking(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        timeout_secs: float | None = None,
        *,
        require: Mapping[str, str] | None = None,
    ) -> SubWorkflowBlockingStream:
        """Blocking :meth:`stream_sub_workflow`: opening the stream is routed (and
        fails over) on the pool's loop; events are then read from the chosen member
        in the calling thread."""
        _refuse_inside_loop("stream_sub_workflow_blocking", "stream_sub_workflow", "pool")
        request = RunRequest.of_value(workflow_name, step_ids, input, timeout_secs)
        return SubWorkflowBlockingStream(
            lambda: self._blocking(
                "stream_sub_workflow_blocking", lambda: self._open_stream(request, require)
            )
        )

    def deref_session_ref_blocking(self, key: uuid.UUID | str) -> bytes:
        """Blocking :meth:`deref_session_ref`."""
        return self._blocking("deref_session_ref_blocking", lambda: self.deref_session_ref(key))

    def deref_session_ref_into_blocking(self, key: uuid.UUID | str, buffer: Buffer) -> int:
        """Blocking :meth:`deref_session_ref_into`."""
        return self._blocking(
            "deref_session_ref_into_blocking", lambda: self.deref_session_ref_into(key, buffer)
        )

    def fetch_session_ref_blocking(self, key: uuid.UUID | str) -> Any:
        """Blocking :meth:`fetch_session_ref`."""
        return self._blocking("fetch_session_ref_blocking", lambda: self.fetch_session_ref(key))

    def release_session_ref_blocking(self, key: uuid.UUID | str) -> bool:
        """Blocking :meth:`release_session_ref`."""
        return self._blocking("release_session_ref_blocking", lambda: self.release_session_ref(key))

    def put_session_ref_blocking(
        self,
        value: Any,
        *,
        step_ids: Sequence[str] = (),
        workflow_name: str = "",
        lifetime: RefLifetime = RefLifetime.UNTIL_EXPLICIT_DROP,
        type_tag: str | None = None,
    ) -> RemoteRef:
        """Blocking :meth:`put_session_ref`."""
        return self._blocking(
            "put_session_ref_blocking",
            lambda: self.put_session_ref(
                value,
                step_ids=step_ids,
                workflow_name=workflow_name,
                lifetime=lifetime,
                type_tag=type_tag,
            ),
        )

    def close_blocking(self) -> None:
        """Blocking :meth:`close`; also stops the loop of a pool made by
        :meth:`connect_blocking`. Idempotent."""
        _refuse_inside_loop("close_blocking", "close", "pool")
        loop = self._loop
        if loop is not None and loop.is_running() and not self._closed:
            _run_on(loop, self.close)
        self._closed = True
        if self._loop_thread is not None:
            self._loop_thread.stop()

    def __enter__(self) -> PeerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_blocking()

    # ---- routing ----------------------------------------------------------

    def _run(
        self,
        request: RunRequest,
        reply: Reply,
        idempotent: bool,
        require: Mapping[str, str] | None,
    ) -> Coroutine[Any, Any, Any]:
        return self._route(
            request.workflow_name,
            request.step_ids,
            idempotent,
            lambda client: client._send(request, reply),
            require,
            self._holders(request.input_json),
        )

    def _open_stream(
        self, request: RunRequest, require: Mapping[str, str] | None
    ) -> Coroutine[Any, Any, OpenedStream]:
        # Refs the run makes are fetched from the member that ran it: the opened
        # stream settles through that member's client.
        return self._route(
            request.workflow_name,
            request.step_ids,
            False,
            lambda client: client._open_stream(request),
            require,
            self._holders(request.input_json),
        )

    def _holders(self, input_json: bytes) -> frozenset[str]:
        """Members holding a session ref the input names (a key, or a handle's key):
        a step there reads it with ctx.session_refs.get, which no other member can."""
        keys = {uuid.UUID(found.decode()) for found in _UUID.findall(input_json)}
        if not keys:
            return frozenset()
        return frozenset(
            member.address
            for member in self._members.values()
            if member.client is not None and any(member.client._holds_ref(k) for k in keys)
        )

    async def _route(
        self,
        workflow_name: str,
        step_ids: Sequence[str],
        idempotent: bool,
        call: Callable[[PeerClient], Awaitable[T]],
        require: Mapping[str, str] | None = None,
        holders: frozenset[str] = frozenset(),
    ) -> T:
        if self._closed:
            raise ValidationError("this PeerPool is closed; connect a new one")
        tried: set[str] = set()
        last_refusal: PeerError | None = None
        while True:
            member = self._pick(
                workflow_name, step_ids, tried, last_refusal, require or {}, holders
            )
            client = member.client
            assert client is not None  # healthy members are connected
            member.in_flight += 1
            member.calls += 1
            try:
                return await call(client)
            except PeerBusyError as busy:
                last_refusal = busy
            except UnknownStepError as unknown:
                if not member.v1_only:
                    raise
                # Routed by trying; the peer checks the ids before running anything.
                missing = unknown.step_id
                if missing is not None and missing in step_ids:
                    member.missing.add(missing)
                else:
                    member.missing.update(step_ids)
                last_refusal = unknown
            except PeerUnsupportedError as unsupported:
                # A v1 member lacks the method (streaming): nothing ran, it stays up.
                last_refusal = unsupported
            except TransportError as failure:
                self._mark_down(member, failure)
                if failure.started and not idempotent:
                    raise
                last_refusal = failure
            finally:
                member.in_flight -= 1
            tried.add(member.address)

    def _pick(
        self,
        workflow_name: str,
        step_ids: Sequence[str],
        tried: set[str],
        last_refusal: PeerError | None,
        require: Mapping[str, str],
        holders: frozenset[str] = frozenset(),
    ) -> _Member:
        able = [
            member
            for member in self._members.values()
            if not member.removed and member.may_run(workflow_name, step_ids)
        ]
        if require:
            # Never elsewhere, not even on failover: a call that requires a
            # region must not run outside it, so the others are not candidates.
            placed = [member for member in able if member.has_labels(require)]
            if able and not placed:
                raise self._misplaced(require)
            able = placed
        ready = [
            member
            for member in able
            if member.healthy and member.client is not None and member.address not in tried
        ]
        if not ready:
            failure = self._no_member(workflow_name, step_ids, able, last_refusal)
            if require and isinstance(failure, TransportError):
                failure.args = (f"{failure} (the call requires labels {dict(require)})",)
            raise failure
        # The input names refs a member holds: only a step there can read them.
        ready = [member for member in ready if member.address in holders] or ready
        # Least in flight; ties rotate so an idle pool still spreads calls.
        self._next += 1
        start = self._next % len(ready)
        rotated = ready[start:] + ready[:start]
        return min(rotated, key=lambda member: member.in_flight)

    def _no_member(
        self,
        workflow_name: str,
        step_ids: Sequence[str],
        able: list[_Member],
        last_refusal: PeerError | None,
    ) -> PeerError:
        if isinstance(last_refusal, PeerUnsupportedError) or (
            last_refusal is not None
            and not isinstance(last_refusal, (TransportError, UnknownStepError))
        ):
            # PeerUnsupportedError: the members able to take it lack the method.
            return last_refusal
        wanted = f"steps {list(step_ids)}" if step_ids else f"workflow `{workflow_name}`"
        known = [
            member
            for member in self._members.values()
            if member.steps is not None or member.v1_only
        ]
        if not able and known:
            # No member whose steps are known has them: most likely a misspelled id.
            # Members never reached might, so the message names them too.
            if not step_ids:
                declared = sorted(
                    {w.name for member in known if member.steps for w in member.steps.workflows}
                )
                return UnknownWorkflowError(
                    f"no peer of the pool declares {wanted}"
                    f"{_did_you_mean([workflow_name], declared)}; {self._describe_steps()}",
                    workflow_name=workflow_name,
                    registered=declared,
                )
            registered = sorted({step for member in known for step in _ids(member)})
            missing = [s for s in step_ids if s not in registered] or list(step_ids)
            return UnknownStepError(
                f"no peer of the pool registers {wanted}{_did_you_mean(missing, registered)}; "
                f"{self._describe_steps()}",
                step_id=next(iter(missing), None),
                registered=registered,
            )
        tail = f"; last failure: {last_refusal}" if last_refusal is not None else ""
        return TransportError(
            f"no healthy peer of the pool can run {wanted} now; members: "
            f"{self._describe_members()}{tail}",
            started=False,
        )

    def _misplaced(self, require: Mapping[str, str]) -> PlacementError:
        offered = {
            address: dict(member.steps.labels)
            for address, member in sorted(self._members.items())
            if member.steps is not None and not member.removed
        }
        shown = "; ".join(
            f"{address} has {labels or 'no labels'}" for address, labels in offered.items()
        )
        return PlacementError(
            f"no peer of the pool that can run this call has the labels it requires "
            f"{dict(require)}; the members offer: {shown or 'nothing yet (none listed)'}. "
            "Start a peer with those labels (PeerServer(labels=...), serve --label "
            "NAME=VALUE) or change the requirement",
            require=dict(require),
            offered=offered,
        )

    def _owner_of(self, key: uuid.UUID | str) -> PeerClient:
        wanted = uuid.UUID(str(key))
        for member in self._members.values():
            if member.client is not None and member.client._holds_ref(wanted):
                return member.client
        raise ValidationError(
            f"session ref {wanted} did not come from a call made through this pool, so the "
            "pool does not know which peer holds it; use a PeerClient connected to that peer"
        )

    # ---- health -----------------------------------------------------------

    def _mark_down(self, member: _Member, failure: PeerError) -> None:
        if member.healthy:
            _log.warning(
                "pool: peer %s taken out of rotation: %s",
                member.address,
                failure,
                extra={"peer": member.address},
            )
        member.healthy = False
        member.last_error = str(failure)

    async def _probe(self, member: _Member) -> None:
        was_healthy = member.healthy
        timeout = self._settings.probe_timeout_secs
        try:
            if member.client is None:
                member.client = await self._connect(member)
            if not was_healthy:
                # A peer that comes back may be a new process, of another kind.
                member.v1_only = False
                member.missing.clear()
            status = "SERVING"
            if not member.v1_only:
                try:
                    status = await member.client.health(timeout_secs=timeout)
                except PeerUnsupportedError:
                    self._found_v1(member)
            if member.v1_only:
                # Any answer to a v1 call proves it serves; a random key touches nothing.
                await asyncio.wait_for(member.client.release_session_ref(uuid.uuid4()), timeout)
            healthy = status == "SERVING"
            if healthy and not member.v1_only and (not was_healthy or member.steps is None):
                # A peer that comes back may be a new process with other steps.
                try:
                    member.steps = await asyncio.wait_for(member.client.list_steps(), timeout)
                except PeerUnsupportedError:
                    self._found_v1(member)
            member.last_error = None if healthy else f"health check answered {status}"
        except (PeerError, TimeoutError) as failure:
            healthy = False
            member.last_error = str(failure) or type(failure).__name__
        if healthy != was_healthy:
            if healthy:
                _log.info(
                    "pool: peer %s is serving", member.address, extra={"peer": member.address}
                )
            else:
                _log.warning(
                    "pool: peer %s is not serving: %s",
                    member.address,
                    member.last_error,
                    extra={"peer": member.address},
                )
        member.healthy = healthy
        async with self._changed:
            self._changed.notify_all()

    def _found_v1(self, member: _Member) -> None:
        if not member.v1_only:
            _log.info(
                "pool: peer %s speaks v1 only (no health service or ListSteps): probed "
                "with a v1 call, and given calls by trying",
                member.address,
                extra={"peer": member.address},
            )
        member.v1_only = True
        member.steps = None

    async def _connect(self, member: _Member) -> PeerClient:
        settings = self._settings
        return await PeerClient.connect(
            member.address,
            node_id=settings.node_id,
            token=settings.token,
            tls=member.tls,
            connect_timeout_secs=settings.connect_timeout_secs,
            max_message_bytes=settings.max_message_bytes,
            keepalive_interval_secs=settings.keepalive_interval_secs,
            keepalive_timeout_secs=settings.keepalive_timeout_secs,
        )

    async def _maintain(self) -> None:
        """Probes members every probe interval and re-resolves names every
        resolve interval, for as long as the pool is open."""
        next_resolve = time.monotonic() + self._settings.resolve_interval_secs
        while True:
            await asyncio.sleep(self._settings.probe_interval_secs)
            if time.monotonic() >= next_resolve:
                next_resolve = time.monotonic() + self._settings.resolve_interval_secs
                try:
                    await self._resolve()
                except PeerError as failure:
                    _log.warning("pool: resolving peers failed: %s", failure)
            for member in self._members.values():
                if not member.removed and (member.probing is None or member.probing.done()):
                    member.probing = asyncio.create_task(self._probe(member))
            await self._forget_removed()

    async def _resolve(self) -> None:
        found: dict[str, ClientTls | None] = {}
        for source in self._sources:
            for address, tls in await self._expand(source):
                found[address] = tls
        for address, tls in found.items():
            member = self._members.get(address)
            if member is None:
                self._members[address] = _Member(address, tls)
            else:
                member.removed = False
        for address, member in self._members.items():
            if address not in found and not member.removed:
                _log.info("pool: peer %s left (no longer resolved)", address)
                member.removed = True

    async def _expand(self, source: str) -> list[tuple[str, ClientTls | None]]:
        scheme, host, port = _split(source)
        tls = self._settings.tls
        if _is_ip(host):
            return [(source, tls)]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise TransportError(
                f"cannot resolve peer host `{host}` of {source}: {exc}", started=False
            ) from exc
        # Dual-stack names list each peer twice; one family is enough.
        ips = [str(info[4][0]) for info in infos]
        v4 = [ip for ip in ips if ":" not in ip]
        chosen = sorted(set(v4 or ips))
        # The certificate names the DNS name, not the address connected to.
        member_tls = tls.with_domain(host) if tls is not None else None
        return [(f"{scheme}://{_host_port(ip, port)}", member_tls) for ip in chosen]

    async def _forget_removed(self) -> None:
        for address, member in list(self._members.items()):
            if member.removed and member.in_flight == 0:
                del self._members[address]
                if member.probing is not None:
                    member.probing.cancel()
                if member.client is not None:
                    await member.client.close()

    def _describe_steps(self) -> str:
        parts = []
        for address in sorted(self._members):
            member = self._members[address]
            if member.v1_only:
                lacks = ", ".join(sorted(member.missing)) or "none yet"
                parts.append(
                    f"{address} speaks v1 only (lists no steps; answered unknown: {lacks})"
                )
                continue
            if member.steps is None:
                reason = member.last_error or "not probed yet"
                parts.append(f"{address} has not been reached ({reason}), its steps are unknown")
                continue
            steps = sorted(member.steps.step_ids)
            shown = ", ".join(steps[:_LISTED_STEPS]) or "no steps"
            more = f" and {len(steps) - _LISTED_STEPS} more" if len(steps) > _LISTED_STEPS else ""
            workflows = sorted(workflow.name for workflow in member.steps.workflows)
            declared = f"; workflows: {', '.join(workflows)}" if workflows else ""
            parts.append(f"{address} has {shown}{more}{declared}")
        return "; ".join(parts) or "the pool has no members"

    def _healthy_count(self) -> int:
        return sum(1 for member in self._members.values() if member.healthy and not member.removed)

    def _describe_members(self) -> str:
        parts = []
        for address in sorted(self._members):
            member = self._members[address]
            state = "healthy" if member.healthy else f"down ({member.last_error or 'not probed'})"
            parts.append(f"{address} {state}")
        return "; ".join(parts) or "none"


_LISTED_STEPS = 20
"""How many step ids of each member an UnknownStepError message lists."""


def _did_you_mean(missing: Sequence[str], registered: Sequence[str]) -> str:
    hints = []
    for step_id in missing:
        close = difflib.get_close_matches(step_id, registered, n=1, cutoff=0.6)
        if close:
            hints.append(f"{close[0]!r} for {step_id!r}" if len(missing) > 1 else repr(close[0]))
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _ids(member: _Member) -> frozenset[str]:
    return member.steps.step_ids if member.steps else frozenset()


def _split(address: str) -> tuple[str, str, int]:
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValidationError(
            f"`{address}` is not a peer address; use http://HOST:PORT or https://HOST:PORT"
        )
    return parts.scheme, parts.hostname, parts.port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
