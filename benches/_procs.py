"""Starting the helper processes of the benchmarks."""

from __future__ import annotations

import subprocess
import sys


def spawn(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Runs a helper script and waits for its `READY <where>` line; returns (process, where)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        raise SystemExit(f"{args} did not start: {line!r}")
    return proc, line.split(" ", 1)[1]
