"""Helpers shared by the session-ref tests and the peer they talk to.

Both sides import this module: the peer (`tests/peer_app.py`) and the tests
(`tests/test_session_refs.py`) build values from the same seed and register the
same codec, so the client can check what it fetched without shipping the
expected bytes around.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

POINT_TAG = "tests.point"
"""A codec registered on both sides (`register_ref_codec(POINT_TAG, ..., type=Point)`)."""

PEER_ONLY_TAG = "tests.peer_only"
"""A codec only the peer process registers (in `peer_app.main`), never the tests."""

PATTERN_LEN = 4099
"""A prime, so the pattern never lines up with the peer's 1 MiB deref pieces."""


def pattern_bytes(seed: int, size: int) -> bytearray:
    """`size` deterministic bytes: a seeded random pattern repeated (one allocation)."""
    if size == 0:
        return bytearray()
    pattern = random.Random(seed).randbytes(PATTERN_LEN)
    data = bytearray(pattern) * (size // PATTERN_LEN + 1)
    del data[size:]
    return data


def pattern_sha256(seed: int, size: int) -> str:
    """sha256 hex digest of `pattern_bytes(seed, size)`."""
    return hashlib.sha256(pattern_bytes(seed, size)).hexdigest()


@dataclass(frozen=True)
class Point:
    """A value that is neither bytes-like nor JSON: it needs a codec."""

    x: int
    y: int
    label: str


def encode_point(point: Point) -> bytes:
    return json.dumps({"x": point.x, "y": point.y, "label": point.label}).encode()


def decode_point(raw: bytes) -> Point:
    fields = json.loads(raw)
    return Point(fields["x"], fields["y"], fields["label"])


def encode_peer_only(value: str) -> bytes:
    return b"peer-only:" + value.encode()


def decode_peer_only(raw: bytes) -> str:
    return raw.removeprefix(b"peer-only:").decode()
