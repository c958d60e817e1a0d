"""Steps that read uploaded values (``upload::*``, tests/test_uploads.py) and refs of
other peers (``p2p::*``, tests/test_p2p_refs.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import peer_state
import ref_support
from blazen_peer import Context, RefLifetime, StartEvent, StopEvent, step


def _describe(value: Any) -> dict[str, Any]:
    """What a step saw: its type, and the size and digest of a buffer, or the value."""
    try:
        view = memoryview(value)
    except TypeError:
        return {"type": type(value).__name__, "value": repr(value)}
    return {
        "type": type(value).__name__,
        "size": view.nbytes,
        "readonly": view.readonly,
        "sha256": hashlib.sha256(view).hexdigest(),
    }


@step("upload::describe")
async def describe(ctx: Context, ev: StartEvent) -> StopEvent:
    """Reads ``key`` (a key or a handle) with ctx.session_refs.get; a key this node does
    not hold raises RefNotFoundError here, in the step."""
    return StopEvent(result=_describe(await ctx.session_refs.get(ev.key)))


@step("upload::describe_sync")
def describe_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    """``upload::describe`` as a plain def step (get_sync)."""
    return StopEvent(result=_describe(ctx.session_refs.get_sync(ev.key)))


@step("upload::numpy")
async def numpy_view(ctx: Context, ev: StartEvent) -> StopEvent:
    """Views the uploaded ``key`` as a numpy array of ``dtype`` twice, and reports
    whether both views are the stored bytes themselves (no copy)."""
    first = np.frombuffer(await ctx.session_refs.get(ev.key), dtype=ev.dtype)
    second = np.frombuffer(await ctx.session_refs.get(ev.key), dtype=ev.dtype)
    base = first.base
    return StopEvent(
        result={
            "same_memory": first.ctypes.data == second.ctypes.data,
            "owns_data": bool(first.flags.owndata),
            "writeable": bool(first.flags.writeable),
            "exporter": type(base.obj).__name__ if isinstance(base, memoryview) else None,
            "sum": float(first.sum(dtype=np.float64)),
            "size": int(first.size),
        }
    )


@step("upload::held")
async def held(ctx: Context, ev: StartEvent) -> StopEvent:
    """The server's upload counters and its registry's size."""
    server = peer_state.SERVER
    assert server is not None, "upload::held needs the peer_app server"
    refs = server.session_refs
    # len() sweeps expired leases first, so the upload counters read after it.
    counts = {"refs": len(refs), "ref_bytes": refs.total_bytes}
    return StopEvent(result={**dataclasses.asdict(server.uploads()), **counts})


@step("p2p::make")
async def make(ctx: Context, ev: StartEvent) -> StopEvent:
    """Keeps ``pattern_bytes(seed, size)`` until the caller's parent run finishes."""
    value = ref_support.pattern_bytes(int(ev.seed), int(ev.size))
    key = await ctx.session_refs.insert(value, lifetime=RefLifetime.UNTIL_PARENT_FINISH)
    return StopEvent(result={"features": str(key), "sha256": hashlib.sha256(value).hexdigest()})


@step("p2p::fetch")
async def fetch(ctx: Context, ev: StartEvent) -> StopEvent:
    """Fetches the RemoteRef ``features`` from the peer that holds it."""
    return StopEvent(result=_describe(await ctx.session_refs.fetch(ev.features)))


@step("p2p::fetch_sync")
def fetch_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    """``p2p::fetch`` as a plain def step (fetch_sync)."""
    return StopEvent(result=_describe(ctx.session_refs.fetch_sync(ev.features)))
