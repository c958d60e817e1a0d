"""Reading a remote run's events as they happen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from . import _native
from .events import Event, StopEvent, from_stream
from .responses import SubWorkflowResponse

__all__ = ["SubWorkflowBlockingStream", "SubWorkflowStream"]

_Message = tuple[str, bytes] | _native.SubWorkflowResponse | None


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """A stream's call once the peer accepted it, and how its terminal response
    is settled (by the client the call went to, which remembers its refs)."""

    native: _native.EventStream
    settle: Callable[[_native.SubWorkflowResponse], SubWorkflowResponse]


class _Reader:
    """What both stream forms share: turning native messages into events, and the response."""

    def __init__(self) -> None:
        self._settle: Callable[[_native.SubWorkflowResponse], SubWorkflowResponse] | None = None
        self._native: _native.EventStream | None = None
        self._finished = False
        self._response: SubWorkflowResponse | None = None

    @property
    def response(self) -> SubWorkflowResponse | None:
        """The run's full response (result, exported state, remote refs) once the
        terminal event arrived; None before."""
        return self._response

    def _event(self, item: _Message) -> Event | None:
        """The event of one native message; None at the end of the stream."""
        if item is None:
            self._finished = True
            return None
        if isinstance(item, tuple):
            name, data = item
            return from_stream(name, data)
        self._finished = True
        assert self._settle is not None  # set when the stream opened
        response = self._settle(item)
        self._response = response
        return StopEvent(result=response.result)

    def _opened(self, opened: OpenedStream) -> _native.EventStream:
        self._settle = opened.settle
        self._native = opened.native
        return opened.native

    def _state(self) -> str:
        return "finished" if self._finished else "open" if self._native else "not started"


class SubWorkflowStream(_Reader):
    """The events a remote run writes with ``ctx.write_event_to_stream``, in
    order, then its terminal :class:`StopEvent`; a failed run raises its error
    (``WorkflowError``, ``PeerTimeoutError``) after the events written before it.

    The call starts on the first ``__anext__`` (or ``async with``). Leaving an
    ``async with`` block, ``await stream.aclose()``, or dropping the stream
    cancels the call and the run on the peer. The stream holds the events the
    caller has not read yet within a bounded buffer: a slow reader slows the
    peer's steps instead of filling memory.
    """

    def __init__(self, open_call: Callable[[], Awaitable[OpenedStream]]) -> None:
        super().__init__()
        self._open_call: Callable[[], Awaitable[OpenedStream]] | None = open_call

    def __aiter__(self) -> SubWorkflowStream:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        native = self._native or await self._open()
        try:
            item = await native.next()
        except BaseException:
            self._finished = True
            raise
        event = self._event(item)
        if event is None:
            raise StopAsyncIteration
        return event

    async def _open(self) -> _native.EventStream:
        if self._open_call is None:
            raise RuntimeError("the stream was closed before it started")
        open_call, self._open_call = self._open_call, None
        try:
            return self._opened(await open_call())
        except BaseException:
            self._finished = True
            raise

    async def aclose(self) -> None:
        """Cancels the call and the run on the peer unless it already ended. Idempotent."""
        self._finished = True
        self._open_call = None
        if self._native is not None:
            self._native.close()

    async def __aenter__(self) -> SubWorkflowStream:
        if self._native is None and self._open_call is not None:
            await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"SubWorkflowStream({self._state()})"


class SubWorkflowBlockingStream(_Reader):
    """:class:`SubWorkflowStream` for code without an event loop: ``for event in
    stream`` blocks for each event, then yields the terminal :class:`StopEvent`
    (a failed run raises its error after the events written before it).

    The call starts on the first ``next()`` (or ``with``). Leaving a ``with``
    block, ``stream.close()``, dropping the stream, or Ctrl-C while waiting for
    an event cancels the call and the run on the peer.
    """

    def __init__(self, open_call: Callable[[], OpenedStream]) -> None:
        super().__init__()
        self._open_call: Callable[[], OpenedStream] | None = open_call

    def __iter__(self) -> SubWorkflowBlockingStream:
        return self

    def __next__(self) -> Event:
        if self._finished:
            raise StopIteration
        native = self._native or self._open()
        try:
            item = native.next_blocking()
        except BaseException:
            # Ctrl-C (or any failure) ends the stream, and with it the run on the peer.
            self.close()
            raise
        event = self._event(item)
        if event is None:
            raise StopIteration
        return event

    def _open(self) -> _native.EventStream:
        if self._open_call is None:
            raise RuntimeError("the stream was closed before it started")
        open_call, self._open_call = self._open_call, None
        try:
            return self._opened(open_call())
        except BaseException:
            self._finished = True
            raise

    def close(self) -> None:
        """Cancels the call and the run on the peer unless it already ended. Idempotent."""
        self._finished = True
        self._open_call = None
        if self._native is not None:
            self._native.close()

    def __enter__(self) -> SubWorkflowBlockingStream:
        if self._native is None and self._open_call is not None:
            self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SubWorkflowBlockingStream({self._state()})"
