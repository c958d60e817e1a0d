"""Daemon threads that run plain ``def`` steps; only the native module starts them.

They are Python's own threads, so at interpreter exit a step still running is
abandoned the way CPython abandons any daemon thread, instead of aborting the
process (see ``crates/blazen-peer-py/src/sync_steps.rs``). Exit first gives
running steps a bounded wait to return.
"""

from __future__ import annotations

import itertools
import threading

from . import _bridge, _native

_numbers = itertools.count(1)


def start_worker() -> None:
    """Starts one more worker; the pool already counted it."""
    threading.Thread(target=_work, name=f"blazen-peer-step-{next(_numbers)}", daemon=True).start()


def _work() -> None:
    retired = False
    try:
        while (call := _native.next_sync_step()) is not None:
            _run(call)
            del call  # holds the step's context and event until the next call
        retired = True
    finally:
        if not retired:
            _native.sync_step_worker_left()


def _run(call: _native.SyncStepCall) -> None:
    try:
        emitted = _bridge.run_sync_step(call.func, call.context, call.event)
    except BaseException as exc:  # the step's failure, whatever it is, goes to its run
        call.fail(exc)
    else:
        call.succeed(emitted)
