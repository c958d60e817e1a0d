"""A handle on a session ref that names the peer holding it.

A :class:`RemoteRef` travels in a call's JSON input as it is (it is a dict), so
a step on one peer can be handed a value another peer holds and fetch it from
there directly with ``await ctx.session_refs.fetch(handle)``, never through the
caller. The handle names its origin (node id and address), the key and the
type tag; it carries no credentials: the fetching peer reaches the origin only
through the connections its operator configured (``PeerServer(peers=...)``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from .errors import ValidationError
from .responses import RemoteRefDescriptor

__all__ = ["RemoteRef"]

#: The value of a handle's ``kind`` field, so a step can tell a handle from other input.
KIND = "blazen_peer.RemoteRef"
_FIELDS = ("key", "origin_node_id", "origin_address", "type_tag")


class RemoteRef(dict[str, Any]):
    """A session ref held by a peer: ``{"kind", "key", "origin_node_id",
    "origin_address", "type_tag", "created_at_epoch_ms"}``.

    Made by :meth:`blazen_peer.SubWorkflowResponse.remote_ref` and
    :meth:`PeerClient.put_session_ref`; ``str(ref)`` is its key, so it also
    works where a key is expected."""

    def __init__(
        self,
        *,
        key: uuid.UUID | str,
        origin_node_id: str,
        origin_address: str,
        type_tag: str,
        created_at_epoch_ms: int = 0,
    ) -> None:
        super().__init__(
            kind=KIND,
            key=str(key),
            origin_node_id=origin_node_id,
            origin_address=origin_address,
            type_tag=type_tag,
            created_at_epoch_ms=created_at_epoch_ms,
        )

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> RemoteRef:
        """The handle in ``value`` (a RemoteRef, or the dict it became in a
        step's input); ValidationError saying what is missing otherwise."""
        if isinstance(value, RemoteRef):
            return value
        if not isinstance(value, Mapping) or value.get("kind") != KIND:
            raise ValidationError(
                f"expected a RemoteRef handle (a dict with kind {KIND!r}, made by "
                f"resp.remote_ref(...) or put_session_ref), got {value!r:.200}"
            )
        missing = [name for name in _FIELDS if not isinstance(value.get(name), str)]
        if missing:
            raise ValidationError(
                f"the RemoteRef handle lacks {', '.join(missing)}: {value!r:.200}"
            )
        try:
            key = uuid.UUID(value["key"])
        except ValueError as exc:
            raise ValidationError(f"the RemoteRef handle's key is not a UUID: {exc}") from exc
        created = value.get("created_at_epoch_ms", 0)
        return cls(
            key=key,
            origin_node_id=value["origin_node_id"],
            origin_address=value["origin_address"],
            type_tag=value["type_tag"],
            created_at_epoch_ms=created if isinstance(created, int) else 0,
        )

    @property
    def key(self) -> uuid.UUID:
        """The ref's key on its origin."""
        return uuid.UUID(self["key"])

    @property
    def origin_node_id(self) -> str:
        """The node id of the peer holding the ref."""
        return str(self["origin_node_id"])

    @property
    def origin_address(self) -> str:
        """The address the handle's maker reached that peer at."""
        return str(self["origin_address"])

    @property
    def type_tag(self) -> str:
        """The codec name of the value."""
        return str(self["type_tag"])

    @property
    def descriptor(self) -> RemoteRefDescriptor:
        """The ref as a response's ``remote_refs`` describes it."""
        return RemoteRefDescriptor(
            origin_node_id=self.origin_node_id,
            type_tag=self.type_tag,
            created_at_epoch_ms=int(self["created_at_epoch_ms"]),
        )

    def __str__(self) -> str:
        return str(self["key"])

    def __repr__(self) -> str:
        return (
            f"RemoteRef(key={self['key']!r}, origin_node_id={self.origin_node_id!r}, "
            f"origin_address={self.origin_address!r}, type_tag={self.type_tag!r})"
        )
