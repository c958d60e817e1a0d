"""Running steps in this process with the same engine a peer uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Any

from . import _native
from .context import Context
from .errors import ValidationError
from .events import Event, StartEvent, StopEvent, from_stream
from .refs import SessionRefRegistry
from .steps import Step
from .usage import RunUsage

__all__ = ["Workflow", "WorkflowHandler"]

_NO_INPUT: Any = object()
_DEFAULT_LOCAL_REGISTRY: SessionRefRegistry | None = None


def default_local_registry() -> SessionRefRegistry:
    """The registry of in-process runs that were given none."""
    global _DEFAULT_LOCAL_REGISTRY
    if _DEFAULT_LOCAL_REGISTRY is None:
        _DEFAULT_LOCAL_REGISTRY = SessionRefRegistry()
    return _DEFAULT_LOCAL_REGISTRY


class WorkflowHandler:
    """A run in progress: ``await handler.result()`` for the StopEvent's result,
    or ``async for event in handler.stream_events()`` for the events its steps
    write, then its StopEvent."""

    def __init__(self, run: _native.LocalRun, future: asyncio.Future[StopEvent]) -> None:
        self._run = run
        self._context = Context(run.context)
        self._future = future
        self._streamed = False

    def __del__(self) -> None:
        # Nobody can read the events any more: steps must not wait for room.
        self._run.discard_events()

    async def stream_events(self) -> AsyncIterator[Event]:
        """The events the run's steps write with ``ctx.write_event_to_stream``, in
        order, then its terminal :class:`StopEvent`; a failed run raises its
        ``WorkflowError`` after the events written before it.

        As for remote streams, a slow reader slows the steps (a bounded buffer)
        and no event is dropped. Events are kept from the start of the run; call
        this before :meth:`result`, which otherwise lets them go unread.
        """
        if self._streamed:
            raise ValidationError(
                "stream_events() was already called for this run; its events are read once, "
                "so keep the first iterator (or start another run)"
            )
        self._streamed = True
        while (written := await self._run.next_event()) is not None:
            yield from_stream(written.event_type, written.data_json)
        yield await self._future

    @property
    def run_id(self) -> str:
        """Unique id of the run."""
        return self._context.run_id

    @property
    def context(self) -> Context:
        """The run's context."""
        return self._context

    @property
    def usage(self) -> RunUsage:
        """The run's LLM usage and cost so far (``ctx.emit_usage``), the remote
        sub-runs its steps delegated to included."""
        return self._context.usage

    @property
    def state(self) -> dict[str, Any]:
        """The run's exported state (public keys) as it stands now."""
        return self._context.exported_state()

    async def result(self) -> Any:
        """Waits for the run and returns the StopEvent's ``result``; raises WorkflowError.

        Unless :meth:`stream_events` began first, the events the steps write are
        let go from here on, unread."""
        if not self._streamed:
            self._run.discard_events()
        stop = await self._future
        return stop.result

    def done(self) -> bool:
        """True once the run ended."""
        return self._future.done()

    def cancel(self) -> bool:
        """Cancels the run; its async steps receive CancelledError."""
        return self._future.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()


class Workflow:
    """Named steps run in-process: ``handler = await wf.run(document="...")``."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Step[..., Any] | str],
        *,
        timeout_secs: float | None = None,
    ) -> None:
        self.name = name
        self.step_ids = [s.id if isinstance(s, Step) else s for s in steps]
        self.timeout_secs = timeout_secs

    async def run(
        self,
        input: Any = _NO_INPUT,
        /,
        *,
        session_refs: SessionRefRegistry | None = None,
        **fields: Any,
    ) -> WorkflowHandler:
        """Starts a run whose StartEvent carries ``input`` or the keyword fields.

        Session refs its steps insert go to ``session_refs`` (shared with a
        server, say) or to the process's default registry.
        """
        start = StartEvent(**fields) if input is _NO_INPUT else StartEvent(input, **fields)
        registry = session_refs if session_refs is not None else default_local_registry()
        run = _native.LocalRun(self.name, self.step_ids, asyncio.get_running_loop(), registry._ref)
        future = run.run(start, StartEvent._blazen_types, self.timeout_secs)
        return WorkflowHandler(run, future)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, {self.step_ids!r})"
