"""What a client remembers about the session refs its calls returned.

A ref's type tag is kept for peers that only serve the v1 deref (whose reply
carries no tag), and a pool asks which member made a ref. Each entry lives as
long as the ref can: it is forgotten when the ref is released, when the
parent run it was made under finishes, or when the peer reports it gone, so a
client making millions of calls holds only the refs that still exist. The
last few thousand forgotten keys are still recognised, so a pool can send a
second release or fetch of a gone ref to the peer that made it (which answers
False or RefNotFoundError) instead of failing to route it.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable

# Forgotten keys still recognised as this client's; bounded, oldest out first.
# Kept as plain ints: the collector never has to visit them.
FORGOTTEN_KEPT = 4096


class RefBook:
    """Type tags of live refs, and the parent run each was made under."""

    __slots__ = ("_by_parent", "_forgotten", "_lock", "_tags")

    def __init__(self) -> None:
        self._tags: dict[uuid.UUID, str] = {}
        self._by_parent: dict[str, set[uuid.UUID]] = {}
        self._forgotten: OrderedDict[int, None] = OrderedDict()
        # Blocking calls may run on other threads than the loop's.
        self._lock = threading.Lock()

    def remember(self, refs: Iterable[tuple[uuid.UUID, str]], parent: str | None) -> None:
        with self._lock:
            for key, tag in refs:
                # A key seen before came from an earlier run: it is not this
                # parent's. (A v1 peer lists every ref it holds in every reply.)
                if parent is not None and key not in self._tags:
                    self._by_parent.setdefault(parent, set()).add(key)
                self._tags[key] = tag

    def tag(self, key: uuid.UUID) -> str | None:
        return self._tags.get(key)

    def knows(self, key: uuid.UUID) -> bool:
        """True for a live ref of this client's, or one it forgot recently."""
        return key in self._tags or key.int in self._forgotten

    def __len__(self) -> int:
        return len(self._tags)

    def forget(self, key: uuid.UUID) -> None:
        # The parent's set keeps the key until the parent finishes: finding it
        # there costs more than the few bytes it holds until then.
        with self._lock:
            self._drop(key)

    def live_of(self, parent: str) -> list[uuid.UUID]:
        """The refs made under ``parent`` that are not forgotten yet."""
        with self._lock:
            return [key for key in self._by_parent.get(parent, ()) if key in self._tags]

    def forget_parent(self, parent: str) -> None:
        """The parent finished: its ``UNTIL_PARENT_FINISH`` refs are gone. Refs
        made under it with ``UNTIL_EXPLICIT_DROP`` live on at the peer but are
        forgotten here too (the reply does not say which lifetime a ref has);
        the peer still serves them, and still tags them in v2 fetches."""
        with self._lock:
            for key in self._by_parent.pop(parent, ()):
                self._drop(key)

    def _drop(self, key: uuid.UUID) -> None:
        if self._tags.pop(key, None) is None:
            return
        self._forgotten[key.int] = None
        if len(self._forgotten) > FORGOTTEN_KEPT:
            self._forgotten.popitem(last=False)
