"""Python half of the step bridge; only the native module calls these.

``start_async_step`` runs on the event loop thread (a job of its loop's
inbox); ``run_sync_step`` runs in a worker thread. Both hand
the native side a list of ``(event, event_types)`` pairs, the shape it routes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from . import _native, _tracing, _wire_json
from ._grammar import with_article
from .context import Context
from .events import Event, StartEvent, StopEvent
from .usage import _WITHIN_RUN

Emitted = list[tuple[Event, _native.EventTypes]]


def start_async_step(
    fn: Any, ctx: _native.RunContext, event: Any, completion: _native.Completion
) -> None:
    # The task copies this context when it is created: PeerClient calls the
    # step makes know which run their sub-run's usage belongs to.
    token = _WITHIN_RUN.set(ctx)
    try:
        _start_async_step(fn, ctx, event, completion)
    finally:
        _WITHIN_RUN.reset(token)


def _start_async_step(
    fn: Any, ctx: _native.RunContext, event: Any, completion: _native.Completion
) -> None:
    try:
        # A run without trace headers has no span to open: skip the tracing
        # machinery (a context manager per step) when OpenTelemetry is merely installed.
        if _tracing.INSTALLED and (headers := ctx.trace_context) is not None:
            task = _start_traced(fn, ctx, event, completion, headers)
        else:
            call = fn(Context(ctx), _as_event(event))
            task = _start_task(_finishing(_paced(call, ctx) if ctx.streaming else call, completion))
    except BaseException as exc:
        completion.fail(exc)
        return
    if not completion.attach(task):
        task.cancel()


def _start_traced(
    fn: Any,
    ctx: _native.RunContext,
    event: Any,
    completion: _native.Completion,
    headers: _tracing.TraceHeaders,
) -> asyncio.Future[Any]:
    with _tracing.starting_step(_step_name(fn), headers) as end_span:
        call = fn(Context(ctx), _as_event(event))
        step = _paced(call, ctx) if ctx.streaming else call
        return _start_task(_finishing(step, completion, end_span))


def _start_task(step: Coroutine[Any, Any, None]) -> asyncio.Future[Any]:
    """The step's task. Where asyncio can (3.12+, and the app set no task factory of
    its own) it starts eagerly: a step that never suspends has finished, and its
    run's reply is on its way, before this returns, without waiting a turn of the loop."""
    loop = asyncio.get_running_loop()
    if _EAGER and loop.get_task_factory() is None:
        return asyncio.Task(step, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return loop.create_task(step)


_EAGER = sys.version_info >= (3, 12)


async def _finishing(
    call: Awaitable[Any],
    completion: _native.Completion,
    end_span: Callable[[], None] | None = None,
) -> None:
    """Runs the step and hands its outcome over in the same turn of the loop (a done
    callback would wait one more). Its span, if traced, ends first: the run's next
    step may start as soon as the outcome is handed over."""
    try:
        try:
            output = await call
        finally:
            if end_span is not None:
                end_span()
    except GeneratorExit:
        # The task was destroyed pending (its loop stopped without cancelling it):
        # the completion, freed with it, fails the run as such.
        raise
    except asyncio.CancelledError as cancelled:
        # Not the caller's doing (a caller's cancel abandons the completion first,
        # which makes this a no-op): the step raised CancelledError, or the peer's
        # own application or event loop cancelled its task, typically on the way
        # out. A bare CancelledError would say nothing.
        why = f": {cancelled}" if str(cancelled) else ""
        completion.fail(
            asyncio.CancelledError(
                f"the step's task was cancelled on the peer, not by the caller{why} "
                "(did the step raise CancelledError, or the peer's app or event loop stop?)"
            )
        )
        raise
    except (KeyboardInterrupt, SystemExit) as exc:
        # The run fails, and the interrupt still reaches the app (as it would
        # from any task).
        completion.fail(exc)
        raise
    except BaseException as exc:
        completion.fail(exc)
        return
    try:
        emitted = normalize_output(output)
    except BaseException as exc:
        completion.fail(exc)
        return
    completion.succeed(emitted)


async def _paced(call: Coroutine[Any, Any, Any], ctx: _native.RunContext) -> Any:
    return await _Paced(call, ctx)


class _Paced:
    """Drives an async step's coroutine and, at each of its awaits, holds it
    while its run's event stream is full: back-pressure for
    ``ctx.write_event_to_stream``, which the step calls without awaiting."""

    __slots__ = ("_call", "_ctx")

    def __init__(self, call: Coroutine[Any, Any, Any], ctx: _native.RunContext) -> None:
        self._call = call
        self._ctx = ctx

    def __await__(self) -> Generator[Any, None, Any]:
        call, ctx = self._call, self._ctx
        error: BaseException | None = None
        while True:
            try:
                awaited = call.send(None) if error is None else call.throw(error)
            except StopIteration as done:
                return done.value
            error = None
            try:
                while ctx.stream_full():
                    yield from ctx.stream_room().__await__()
                yield awaited
            except GeneratorExit:
                call.close()
                raise
            except BaseException as exc:  # cancellation included: the step decides
                error = exc


def run_sync_step(fn: Any, ctx: _native.RunContext, event: Any) -> Emitted:
    token = _WITHIN_RUN.set(ctx)
    try:
        return _run_sync_step(fn, ctx, event)
    finally:
        _WITHIN_RUN.reset(token)


def _run_sync_step(fn: Any, ctx: _native.RunContext, event: Any) -> Emitted:
    if not _tracing.INSTALLED or (headers := ctx.trace_context) is None:
        return normalize_output(fn(Context(ctx), _as_event(event)))
    with _tracing.step_span(_step_name(fn), headers):
        return normalize_output(fn(Context(ctx), _as_event(event)))


def _step_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _as_event(event: Any) -> Event:
    if isinstance(event, tuple):
        _type_name, raw = event
        return StartEvent(json.loads(raw))
    if not isinstance(event, Event):
        raise TypeError(f"expected an Event, got {type(event).__name__}")
    return event


def normalize_output(output: Any) -> Emitted:
    """A step returns an Event, a list of Events (fan-out), or None (emits nothing)."""
    if output is None:
        return []
    if isinstance(output, Event):
        return [(output, type(output)._blazen_types)]
    if isinstance(output, list | tuple):
        emitted: Emitted = []
        for item in output:
            if not isinstance(item, Event):
                raise TypeError(
                    f"a step returned a list containing {type(item).__name__}; "
                    "a list may hold only Events"
                )
            emitted.append((item, type(item)._blazen_types))
        return emitted
    raise TypeError(
        f"a step returned {type(output).__name__}; return an Event, a list of Events, or None"
    )


def stop_result_json(event: StopEvent) -> bytes:
    try:
        encoded = _wire_json.dumps(event.result)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"StopEvent.result holds {with_article(type(event.result).__name__)}, which is "
            f"not JSON-serializable ({exc}); results of remote runs travel as JSON"
        ) from exc
    return encoded.encode()


def describe_exception(exc: BaseException) -> tuple[str, str, str, bool]:
    """(type name, message, formatted traceback, is-cancellation) of a step's exception."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    described = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _cut_own_frames(described, set())
    text = "".join(described.format())
    return name, str(exc), text, isinstance(exc, asyncio.CancelledError)


_OWN_FILES = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _cut_own_frames(described: traceback.TracebackException, seen: set[int]) -> None:
    """Drops this package's frames (the bridge, the workers, the tracing
    wrapper, and any of its code the step called) from ``described`` and the
    exceptions chained to it: the caller's log should show the step's frames."""
    if id(described) in seen:
        return
    seen.add(id(described))
    described.stack = traceback.StackSummary.from_list(
        [frame for frame in described.stack if not frame.filename.startswith(_OWN_FILES)]
    )
    for chained in (
        described.__cause__,
        described.__context__,
        *(getattr(described, "exceptions", None) or ()),
    ):
        if chained is not None:
            _cut_own_frames(chained, seen)
