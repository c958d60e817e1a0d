"""Registering Python functions as steps that peers can run by id."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import _native
from .errors import ValidationError
from .events import Event, stable_module_name

__all__ = [
    "Retry",
    "Step",
    "register_step",
    "register_workflow",
    "registered_step_ids",
    "registered_workflows",
    "step",
    "unregister_step",
]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Retry:
    """How a failing step is tried again: ``@step("id", retries=Retry(attempts=3))``.

    ``attempts`` counts the first one too. Between attempts the step waits
    ``backoff_secs``, then that times ``multiplier`` after each further attempt, at
    most ``max_backoff_secs``. Only exceptions that are instances of ``on`` are
    retried (every ``Exception`` by default); a cancellation or a step's own
    timeout never is. Each retry is logged (logger ``blazen_peer``, WARNING),
    and the final failure says how many attempts ran.
    """

    attempts: int = 3
    backoff_secs: float = _native.DEFAULT_RETRY_BACKOFF_SECS
    multiplier: float = _native.DEFAULT_RETRY_MULTIPLIER
    max_backoff_secs: float = _native.DEFAULT_RETRY_MAX_BACKOFF_SECS
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        on = (self.on,) if isinstance(self.on, type) else tuple(self.on)
        for cls in on:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ValidationError(f"Retry(on=...) takes exception classes, got {cls!r}")
        object.__setattr__(self, "on", on)


class Step(Generic[P, R]):
    """A registered step; calling it calls the function."""

    def __init__(
        self,
        step_id: str,
        fn: Callable[P, R],
        accepts: tuple[type[Event], ...],
        *,
        max_concurrency: int | None = None,
        timeout_secs: float | None = None,
        retries: Retry | None = None,
    ) -> None:
        self.id = step_id
        self.fn = fn
        self.accepts = accepts
        self.max_concurrency = max_concurrency
        self.timeout_secs = timeout_secs
        self.retries = retries
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        names = ", ".join(cls.__name__ for cls in self.accepts)
        return f"<Step {self.id!r} accepts {names}>"


def _accepted_events(fn: Callable[..., Any], step_id: str) -> tuple[type[Event], ...]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise ValidationError(
            f"step {step_id!r} must take (ctx, event); {fn.__qualname__} takes {len(params)} "
            "parameter(s)"
        )
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise ValidationError(
            f"cannot resolve the annotations of step {step_id!r} ({exc}); define the event "
            "classes at module level or pass accepts=[...]"
        ) from exc
    annotation = hints.get(params[1].name)
    if annotation is None:
        raise ValidationError(
            f"step {step_id!r} has no annotation on its event parameter {params[1].name!r}; "
            "annotate it (e.g. `ev: StartEvent`) or pass accepts=[...]"
        )
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    return _check_event_classes(members, step_id)


def _check_event_classes(classes: Iterable[Any], step_id: str) -> tuple[type[Event], ...]:
    accepted = tuple(classes)
    for cls in accepted:
        if not (isinstance(cls, type) and issubclass(cls, Event)):
            raise ValidationError(
                f"step {step_id!r} accepts {cls!r}, which is not an Event subclass"
            )
    if not accepted:
        raise ValidationError(f"step {step_id!r} accepts no event types")
    return accepted


def register_step(
    step_id: str,
    fn: Callable[P, R],
    *,
    accepts: Sequence[type[Event]] | None = None,
    replace: bool = False,
    max_concurrency: int | None = None,
    timeout_secs: float | None = None,
    retries: Retry | None = None,
) -> Step[P, R]:
    """Registers ``fn`` as step ``step_id`` in this process's step registry.

    The events it accepts come from ``accepts`` or from the annotation of its
    second parameter (unions allowed). Registering an id again with another
    function raises :class:`ValidationError` unless ``replace=True``.

    Limits, as the engine's steps have them, hold for every run of the process,
    local or served: ``max_concurrency`` calls at once (more wait for a slot,
    within their run's deadline), ``timeout_secs`` per attempt (an ``async def``
    step is cancelled, a ``def`` step sees ``ctx.cancelled``; the run fails with
    ``failure_kind == "StepTimeout"``), and ``retries`` (a :class:`Retry`).
    """
    if not callable(fn):
        raise ValidationError(f"step {step_id!r} must be a function, got {type(fn).__name__}")
    accepted = (
        _check_event_classes(accepts, step_id)
        if accepts is not None
        else _accepted_events(fn, step_id)
    )
    if retries is not None and not isinstance(retries, Retry):
        raise ValidationError(
            f"step {step_id!r}: retries takes a Retry(...), got {type(retries).__name__}"
        )
    registered = Step(
        step_id,
        fn,
        accepted,
        max_concurrency=max_concurrency,
        timeout_secs=timeout_secs,
        retries=retries,
    )
    _native.register_step(
        step_id,
        sorted({cls.__event_type__ for cls in accepted}),
        fn,
        registered.is_async,
        replace,
        max_concurrency=max_concurrency,
        timeout_secs=timeout_secs,
        retry=retries,
    )
    return registered


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...


@overload
def step(
    step_id: str | None = None,
    /,
    *,
    accepts: Sequence[type[Event]] | None = None,
    replace: bool = False,
    max_concurrency: int | None = None,
    timeout_secs: float | None = None,
    retries: Retry | None = None,
) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def step(
    target: Callable[P, R] | str | None = None,
    /,
    *,
    accepts: Sequence[type[Event]] | None = None,
    replace: bool = False,
    max_concurrency: int | None = None,
    timeout_secs: float | None = None,
    retries: Retry | None = None,
) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
    """Registers a function as a step: ``@step``, ``@step("my_app::analyze")``,
    or ``@step("id", accepts=[MyEvent], replace=True)``, with the limits of
    :func:`register_step`: ``@step("gpu::embed", max_concurrency=1,
    timeout_secs=30, retries=Retry(attempts=3))``.

    Without an id, the id is ``module.qualname`` (a script's file name, not
    ``__main__``, however it was started). ``async def`` steps run on the
    serving event loop; plain ``def`` steps run in worker threads.
    """
    if callable(target):
        return register_step(_default_id(target), target)

    def decorate(fn: Callable[P, R]) -> Step[P, R]:
        step_id = target if target is not None else _default_id(fn)
        return register_step(
            step_id,
            fn,
            accepts=accepts,
            replace=replace,
            max_concurrency=max_concurrency,
            timeout_secs=timeout_secs,
            retries=retries,
        )

    return decorate


def _default_id(fn: Callable[..., Any]) -> str:
    """``module.qualname``, with a script's file name for ``__main__`` (the id a
    caller gets by importing the module is the id the peer registers, however the
    peer was started)."""
    return f"{stable_module_name(fn.__module__)}.{fn.__qualname__}"


def unregister_step(step_id: str) -> bool:
    """Removes a step from the registry; True when it was registered."""
    return _native.unregister_step(step_id)


def registered_step_ids() -> list[str]:
    """Ids of every registered step, sorted."""
    return _native.registered_step_ids()


def register_workflow(name: str, steps: Sequence[str | Step[..., Any]]) -> None:
    """Declares workflow ``name`` as these steps; requests with empty ``step_ids`` run it."""
    _native.register_workflow(name, [s.id if isinstance(s, Step) else s for s in steps])


def registered_workflows() -> list[str]:
    """Names of every declared workflow, sorted."""
    return _native.registered_workflows()
