"""What a client remembers about the session refs its calls returned.

A ref's type tag is kept for peers that only serve the v1 deref (whose reply
carries no tag), and a pool asks which member made a ref. Each entry lives as
long as the ref can: it is forgotten when the ref is released, when the
parent run it was made under finishes, or when the peer reports it gone, so a
client making millions of calls holds only the refs that still exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable


class RefBook:
    """Type tags of live refs, and the parent run each was made under."""

    __slots__ = ("_by_parent", "_tags")

    def __init__(self) -> None:
        self._tags: dict[uuid.UUID, str] = {}
        self._by_parent: dict[str, set[uuid.UUID]] = {}

    def remember(self, refs: Iterable[tuple[uuid.UUID, str]], parent: str | None) -> None:
        for key, tag in refs:
            self._tags[key] = tag
            if parent is not None:
                self._by_parent.setdefault(parent, set()).add(key)

    def tag(self, key: uuid.UUID) -> str | None:
        return self._tags.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._tags

    def __len__(self) -> int:
        return len(self._tags)

    def forget(self, key: uuid.UUID) -> None:
        # The parent's set keeps the key until the parent finishes: finding it
        # there costs more than the few bytes it holds until then.
        self._tags.pop(key, None)

    def forget_parent(self, parent: str) -> None:
        """The parent finished: its ``UNTIL_PARENT_FINISH`` refs are gone. Refs
        made under it with ``UNTIL_EXPLICIT_DROP`` live on at the peer but are
        forgotten here too (the reply does not say which lifetime a ref has);
        the peer still serves them, and still tags them in v2 fetches."""
        for key in self._by_parent.pop(parent, ()):
            self._tags.pop(key, None)
