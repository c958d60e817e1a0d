"""What benches/soak.py and its peer (_soak_peer.py) both use: how a process measures
itself, and the values the soak's refs hold."""

from __future__ import annotations

import gc
import os
import threading

STREAM_EVENT_TYPE = "soak.Tick"
"""Wire name of the events the soak's streaming steps write."""


def ref_value(seed: int) -> bytes:
    """The 256 bytes soak::refs stores for ``seed``; soak.py checks what it fetches against it."""
    return seed.to_bytes(8, "little") * 32


def proc_figures() -> dict[str, int]:
    """VmRSS (bytes), open file descriptors and OS threads of this process (Linux /proc)."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        # listdir holds one descriptor of its own open while it reads: the same in every sample.
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(fields["Threads"]),
    }


def python_figures() -> dict[str, int]:
    """Python threads and GC-tracked objects once every collectable cycle is gone."""
    gc.collect()
    return {"py_threads": threading.active_count(), "objects": len(gc.get_objects())}
