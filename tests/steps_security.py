"""Who called, and which calls reached a step (``security::*``): tests/test_security.py,
test_tls_mismatch.py and the keepalive tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from blazen_peer import Context, StartEvent, StopEvent, step

MARKS: dict[str, int] = {}


@step("security::mark")
async def mark(ctx: Context, ev: StartEvent) -> StopEvent:
    """Counts a call under ``tag`` and reports who made it."""
    MARKS[ev.tag] = MARKS.get(ev.tag, 0) + 1
    identity = ctx.peer_identity
    return StopEvent(
        result={
            "caller_node_id": ctx.caller_node_id,
            "peer_identity": None
            if identity is None
            else {
                "subject": identity.subject,
                "common_name": identity.common_name,
                "dns_names": list(identity.dns_names),
                "uris": list(identity.uris),
                "der_len": len(identity.certificate_der),
            },
        }
    )


@step("security::marks")
async def marks(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=MARKS)


@step("security::hold")
def hold(ctx: Context, ev: StartEvent) -> StopEvent:
    """Creates the file ``started``, then holds its run slot until the file ``release``
    exists (the test creates it)."""
    Path(ev.started).touch()
    release = Path(ev.release)
    while not release.exists():
        time.sleep(0.01)
    return StopEvent(result="released")


@step("security::silent")
async def silent(ctx: Context, ev: StartEvent) -> StopEvent:
    """Sends nothing for ``secs`` seconds, so only keepalive pings cross the connection."""
    await asyncio.sleep(float(ev.secs))
    return StopEvent(result="still connected")
