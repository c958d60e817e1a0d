"""Where did a call run? (``pool::*``) for tests/test_pool.py and tests/test_multihost.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from blazen_peer import Context, RefLifetime, StartEvent, StopEvent, step
from peer_state import GATE_TIMEOUT_SECS


@step("pool::whoami")
async def whoami(ctx: Context, ev: StartEvent) -> StopEvent:
    """Reports the node that ran the call (``--node-id``) and echoes ``ev.data``."""
    return StopEvent(result={"node_id": ctx.node_id, "data": ev.data})


@step("pool::hold")
async def pool_hold(ctx: Context, ev: StartEvent) -> StopEvent:
    """Creates the file ``<started_dir>/<node id>.<run id>`` holding ``ev.tag`` (the test
    reads them to see which node runs which call), inserts ``ref_value`` (if given, as
    UTF-8 bytes, UNTIL_EXPLICIT_DROP), then waits until one of the files in ``release``
    (a list of paths) exists, up to GATE_TIMEOUT_SECS. Returns the node id, the tag and
    the ref's key (or None)."""
    marker = Path(ev.started_dir) / f"{ctx.node_id}.{ctx.run_id}"
    key = None
    ref_value = ev.data.get("ref_value")
    if ref_value is not None:
        explicit = RefLifetime.UNTIL_EXPLICIT_DROP
        key = str(await ctx.session_refs.insert(str(ref_value).encode(), lifetime=explicit))
    marker.write_text(str(ev.tag))
    releases = [Path(path) for path in ev.release]
    deadline = time.monotonic() + GATE_TIMEOUT_SECS
    while not any(path.exists() for path in releases):
        if time.monotonic() > deadline:
            raise TimeoutError(f"none of {releases} appeared within {GATE_TIMEOUT_SECS}s")
        await asyncio.sleep(0.01)
    return StopEvent(result={"node_id": ctx.node_id, "tag": ev.tag, "key": key})
