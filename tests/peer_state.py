"""What the peer_app process shares with its step modules: the serving PeerServer.

`peer_app.main` sets ``SERVER``; the steps that report on the server (`refs::registry`,
`refs::insert_default`, `probe::status`) read it here, so a step module never imports
peer_app (which is ``__main__`` when run as a script).
"""

from __future__ import annotations

from blazen_peer import PeerServer, SessionRefRegistry

SERVER: PeerServer | None = None
"""The serving PeerServer once `peer_app.main` created it."""

GATE_TIMEOUT_SECS = 20.0
"""How long a step waits for a gate, a barrier or a release file the test controls."""


def server_refs() -> SessionRefRegistry:
    """The serving server's registry (only in a peer_app process)."""
    if SERVER is None:
        raise RuntimeError("this step needs the peer_app server (run peer_app.py)")
    return SERVER.session_refs
