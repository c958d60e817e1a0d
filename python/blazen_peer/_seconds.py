"""The check of the ``*_secs`` settings that Python reads itself (a run's
``timeout_secs``, the pool's probe settings); those passed on to the native
module are checked there, by ``seconds()`` in ``crates/blazen-peer-py/src/server.rs``,
in the same words."""

from __future__ import annotations

import math

from .errors import ValidationError


def positive_secs(name: str, value: object) -> float:
    """``value`` when it is a positive, finite number of seconds; otherwise
    ValidationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{name} must be a number of seconds, got {value!r}")
    if not value > 0 or math.isinf(value):
        raise ValidationError(f"{name} must be a positive, finite number of seconds, got {value}")
    return value
