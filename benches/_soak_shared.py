"""What benches/soak.py and its peer (_soak_peer.py) both use: how a process measures
itself, and the values the soak's refs hold."""

from __future__ import annotations

import gc
import hashlib
import os
import threading

STREAM_EVENT_TYPE = "soak.Tick"
"""Wire name of the events the soak's streaming steps write."""

MAX_UPLOAD_BYTES = 4 * 1024 * 1024
"""The soak peer's ``max_upload_bytes``: small, so an upload past it costs the caller nothing
but the refusal (the whole size is reserved before the first byte is sent)."""

POLICY_TIMEOUT_SECS = 0.25
"""timeout_secs of the soak's policy steps: far above an attempt's few milliseconds, short
enough that the calls made to time out hold one of the steps' 2 slots only briefly."""

UPLOAD_BYTES = 4 * 1024
"""Size of each value the soak uploads (``put_session_ref``)."""


def ref_value(seed: int) -> bytes:
    """The 256 bytes soak::refs stores for ``seed``; soak.py checks what it fetches against it."""
    return seed.to_bytes(8, "little") * 32


def upload_value(seed: int) -> bytes:
    """The UPLOAD_BYTES bytes the soak uploads for ``seed``."""
    return seed.to_bytes(8, "little") * (UPLOAD_BYTES // 8)


def digest(value: bytes | bytearray | memoryview) -> dict[str, int | str]:
    """What a soak step reports of a bytes value it read (an upload, a ref of another peer)."""
    view = memoryview(value)
    return {"size": view.nbytes, "sha256": hashlib.sha256(view).hexdigest()}


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
