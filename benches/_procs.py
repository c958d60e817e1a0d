"""Starting and stopping the helper processes of the benchmarks."""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
from collections.abc import Iterator

# Generous for a loaded 2-core CI box (a peer with 100,000 refs starts in about a second),
# short enough that a helper that never gets ready fails the run instead of hanging it.
START_TIMEOUT_SECS = 60.0


def spawn(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Runs a helper script and waits for its `READY <where>` line; returns (process, where)."""
    return spawn_command([sys.executable, *args], "READY ")


def spawn_command(argv: list[str], ready: str) -> tuple[subprocess.Popen[str], str]:
    """Runs ``argv`` and waits for the line starting with ``ready``; returns (process,
    the rest of that line). stdin is a pipe: some helpers serve until it closes."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_SECS)
    line = proc.stdout.readline().strip() if readable else ""
    if not line.startswith(ready):
        stop(proc)
        why = repr(line) if readable else f"nothing within {START_TIMEOUT_SECS:g} s"
        raise SystemExit(f"{argv} did not start: {why}")
    return proc, line.removeprefix(ready)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


@contextlib.contextmanager
def serving(*args: str) -> Iterator[str]:
    """A helper script running for the ``with`` block; yields where it listens."""
    proc, where = spawn(*args)
    try:
        yield where
    finally:
        stop(proc)


@contextlib.contextmanager
def serving_command(argv: list[str], ready: str) -> Iterator[str]:
    """:func:`serving` for any program that announces itself with ``ready``."""
    proc, where = spawn_command(argv, ready)
    try:
        yield where
    finally:
        stop(proc)
