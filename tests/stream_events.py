"""Events that the peer's streaming steps write (steps_streaming.py, steps_probes.py)
and the tests receive.

Both sides import this module (like ref_support.py), so each process defines each
wire name once and the tests' process knows these types: they arrive as these
classes, not as GenericEvent. (`tests.PeerOnly` is deliberately not here.)
"""

from __future__ import annotations

from blazen_peer import Event


class Progress(Event, event_type="tests.Progress"):
    """One step of progress."""

    epoch: int


class Blob(Event, event_type="tests.Blob"):
    """A large event, for back-pressure."""

    index: int
    payload: str
