"""Leaving a parent run on a peer that speaks plain ``blazen.peer.v1``.

Such a peer (the published Rust crate ``blazen-peer`` 0.7.0, for one) has no
``FinishParentRun`` and no ``RenewParentLease``: its refs have no lifetimes and
no lease, and live until released. So leaving ``parent_run()`` releases the
refs first listed inside the block one by one with ``ReleaseSessionRef`` (a v1
method), and the lease renewal stops. Each client says so once in the log.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from .errors import PeerError

if TYPE_CHECKING:
    from .client import PeerClient

_log = logging.getLogger("blazen_peer")

_noted_lock = threading.Lock()


def note_v1_only(client: PeerClient, method: str) -> None:
    """Logs, once per client, that its peer lacks the parent-run methods."""
    with _noted_lock:
        if client._v1_only_noted:
            return
        client._v1_only_noted = True
    _log.warning(
        "peer %s speaks v1 only (no %s): parent_run() releases the refs listed inside "
        "it one by one with ReleaseSessionRef when it ends, and they have no lease, so "
        "a parent that dies inside the block leaves them on the peer",
        client.address,
        method,
        extra={"peer": client.address},
    )


async def release_parent_refs(client: PeerClient, run_id: str) -> int:
    """Releases each ref made under ``run_id``; returns how many the peer dropped.
    Tries them all, then raises the first failure, if any (the caller forgets
    the parent's refs either way, as after FinishParentRun)."""
    released = 0
    first_failure: PeerError | None = None
    for key in client._refs.live_of(run_id):
        try:
            released += await client._ref.release(str(key))
        except PeerError as failure:
            first_failure = first_failure or failure
    if first_failure is not None:
        raise first_failure
    return released


def release_parent_refs_blocking(client: PeerClient, run_id: str) -> int:
    """Blocking :func:`release_parent_refs`."""
    released = 0
    first_failure: PeerError | None = None
    for key in client._refs.live_of(run_id):
        try:
            released += client._ref.release_blocking(str(key))
        except PeerError as failure:
            first_failure = first_failure or failure
    if first_failure is not None:
        raise first_failure
    return released
