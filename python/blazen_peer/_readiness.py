"""The one line a serving process prints when it is up: `serve` and the CLI share it.

    blazen-peer: node NODE serving on HOST:PORT (N steps: a, b, ...)

Scripts and tests wait for it (on stderr) instead of sleeping.
"""

from __future__ import annotations

import sys

from ._grammar import count
from .steps import registered_step_ids


def readiness_line(node_id: str, address: str) -> str:
    step_ids = registered_step_ids()
    steps = f"{count(len(step_ids), 'step')}: {', '.join(step_ids)}"
    return f"blazen-peer: node {node_id} serving on {address} ({steps})"


def announce(node_id: str, address: str) -> None:
    """Writes the readiness line to stderr; a missing or closed stderr is no error."""
    stream = sys.stderr
    if stream is None:  # pythonw, some daemons
        return
    try:
        stream.write(readiness_line(node_id, address) + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass
