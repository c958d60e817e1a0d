"""How ``PeerServer.serve()`` borrows SIGTERM and SIGINT, and gives them back.

The rule (a library must not take over its host's signals):

- serve() handles the signals only in the main thread, and only when the process
  leaves **both** to their defaults: ``SIG_DFL``, Python's ``default_int_handler``
  for SIGINT, or asyncio.run()'s own Ctrl-C handler *when serve() is the coroutine
  asyncio.run() runs* (``asyncio.run(server.serve(...))``, ``serve_blocking``).
  A signal the process ignores (``SIG_IGN``, e.g. SIGINT of a background job) stays
  ignored and does not count as the application's.
- If the application handles either signal itself (``signal.signal(...)``,
  ``loop.add_signal_handler(...)``, or asyncio.run()'s Ctrl-C handler for another
  main task: serve() is a side task of an app), serve() touches neither: the
  application owns shutdown and stops the peer by cancelling serve()'s task or
  calling ``stop()``. Taking one signal and not the other would turn, say, Ctrl-C
  into "stop the peer, keep the app running" behind the application's back.
- On the first signal the handlers are given back at once (so a second signal
  during the drain does what it would without the peer: end the process, raise
  KeyboardInterrupt, or cancel asyncio.run()'s main task), then the peer drains.
- Whatever serve() replaced is restored exactly (the same handler object, not a
  default) when it returns, raises or is cancelled; a handler someone else
  installed in the meantime is left in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "stop_on_signals"]

#: The signals serve() stops on.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _Owner(enum.Enum):
    DEFAULT = "default"  # nobody handles it: serve() may
    IGNORED = "ignored"  # SIG_IGN: stays ignored
    APPLICATION = "application"  # the host's own handler: hands off


_UNKNOWN = object()


def _asyncio_run_sigint(handler: _Handler) -> asyncio.Task[Any] | None:
    """The main task of the asyncio.run() whose Ctrl-C handler ``handler`` is, else None.

    asyncio.Runner installs ``functools.partial(runner._on_sigint, main_task=task)``
    (Python 3.11+); that name is private, so anything else counts as the
    application's handler (the safe side: serve() leaves the signals alone).
    """
    on_sigint = getattr(asyncio.Runner, "_on_sigint", None)
    if (
        on_sigint is not None
        and isinstance(handler, functools.partial)
        and getattr(handler.func, "__func__", None) is on_sigint
    ):
        main_task = handler.keywords.get("main_task")
        if isinstance(main_task, asyncio.Task):
            return main_task
    return None


def _owner(
    loop: asyncio.AbstractEventLoop,
    signum: signal.Signals,
    handler: _Handler,
    task: asyncio.Task[Any] | None,
) -> _Owner:
    # Handlers of the loop (add_signal_handler) show as the loop's no-op Python
    # handler, so the check below sees them; the loop's table (private, so read
    # defensively) also catches one whose Python-level handler was reset since.
    if signum in getattr(loop, "_signal_handlers", {}):
        return _Owner.APPLICATION
    if handler is signal.SIG_IGN:
        return _Owner.IGNORED
    if handler is signal.SIG_DFL:
        return _Owner.DEFAULT
    if signum == signal.SIGINT:
        if handler is signal.default_int_handler:
            return _Owner.DEFAULT
        main_task = _asyncio_run_sigint(handler)
        if main_task is not None and main_task is task:
            return _Owner.DEFAULT
    # A Python handler, a loop's, or None (installed outside Python).
    return _Owner.APPLICATION


def _loop_callback(loop: asyncio.AbstractEventLoop, signum: signal.Signals) -> object:
    """The callback the loop runs for ``signum``, None if none, _UNKNOWN if it cannot tell."""
    handlers = getattr(loop, "_signal_handlers", None)
    if not isinstance(handlers, dict):
        return _UNKNOWN
    handle = handlers.get(signum)
    if handle is None:
        return None
    return getattr(handle, "_callback", _UNKNOWN)


class _Borrowed:
    """The signals serve() took, what they had before, and how to give them back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request_stop: Callable[[], None]) -> None:
        self._loop = loop
        self._request_stop = request_stop
        self._taken: list[tuple[signal.Signals, _Handler]] = []

    def take(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread receives signals
        task = asyncio.current_task(self._loop)
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        owners = {
            signum: _owner(self._loop, signum, previous[signum], task) for signum in STOP_SIGNALS
        }
        if _Owner.APPLICATION in owners.values():
            return
        for signum in STOP_SIGNALS:
            if owners[signum] is not _Owner.DEFAULT:
                continue
            try:
                self._loop.add_signal_handler(signum, self._on_signal)
            except (NotImplementedError, RuntimeError, ValueError):
                # A loop without signal support (Windows, some embedded
                # interpreters): serve until cancelled instead.
                break
            self._taken.append((signum, previous[signum]))

    def _on_signal(self) -> None:
        # Given back first: a second signal during the drain acts as without us.
        self.give_back()
        self._request_stop()

    def give_back(self) -> None:
        """Restores what take() replaced; idempotent."""
        while self._taken:
            signum, previous = self._taken.pop()
            current = _loop_callback(self._loop, signum)
            if current is not _UNKNOWN and current != self._on_signal:
                continue  # replaced or removed by someone else since: theirs now
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_signal_handler(signum)
            # remove_signal_handler() leaves SIG_DFL / default_int_handler behind;
            # put back exactly what was there (asyncio.run()'s own handler, say).
            with contextlib.suppress(TypeError, ValueError, OSError):
                signal.signal(signum, previous)


@contextlib.contextmanager
def stop_on_signals(enabled: bool, request_stop: Callable[[], None]) -> Iterator[None]:
    """Calls ``request_stop`` on SIGTERM or SIGINT inside the block, following the
    rule of this module, and restores the previous handlers when the block exits
    however it exits. Must be entered from a coroutine running on the loop."""
    borrowed = _Borrowed(asyncio.get_running_loop(), request_stop)
    if enabled:
        borrowed.take()
    try:
        yield
    finally:
        borrowed.give_back()
