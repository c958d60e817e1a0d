"""The one JSON encoding of values that travel (inputs, results, events, state, refs):
compact, non-ASCII text as is, no NaN or infinity (other peers' parsers reject them).

One encoder serves every call: ``json.dumps`` with these options builds a new encoder
each time, which was a visible share of a trivial call's cost."""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    """``value`` as wire JSON; raises TypeError or ValueError as ``json.dumps`` does."""
    return _ENCODER.encode(value)
