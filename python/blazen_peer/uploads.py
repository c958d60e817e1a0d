"""Uploads: a value streamed from a client into a peer's session refs.

``await client.put_session_ref(value)`` encodes the value as a step's
``ctx.session_refs.insert`` would (buffer-protocol values as they are, JSON,
or a registered codec), hands the native client a view of its bytes (never a
``bytes`` copy), and gets back a :class:`RemoteRef` once the peer stored it.
What the upload belongs to is decided here, once, for both the async and the
blocking form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _native
from .errors import ValidationError
from .refs import RefLifetime, encode_ref_value
from .remote_ref import RemoteRef

if TYPE_CHECKING:
    from .client import PeerClient

#: Bytes of uploaded values a server holds at once; the default lives in the Rust core
#: (server/upload.rs).
DEFAULT_MAX_UPLOAD_BYTES: int = _native.DEFAULT_MAX_UPLOAD_BYTES


@dataclass(frozen=True, slots=True)
class _PutCall:
    """An upload as the native client reads it (by attribute)."""

    #: The value, kept alive for the whole upload.
    value: Any
    #: The bytes-like object its bytes are read from, in place.
    payload: Any
    type_tag: str
    lifetime: str
    parent_run: str | None


def put_call(
    client: PeerClient, value: Any, lifetime: RefLifetime | None, type_tag: str | None
) -> _PutCall:
    """The native arguments of an upload: by default the caller's current
    ``parent_run()`` owns it; without one, a lifetime must be asked for."""
    parent = client._current_parent()
    if lifetime is None or lifetime is RefLifetime.UNTIL_PARENT_FINISH:
        if parent is None:
            raise ValidationError(
                "put_session_ref outside `async with client.parent_run()`: an upload "
                "belongs to the caller's parent run by default (freed when it ends, or when "
                "its lease lapses); open one around the calls that use the value, or pass "
                "lifetime=RefLifetime.UNTIL_EXPLICIT_DROP and free it with release_session_ref"
            )
        lifetime = RefLifetime.UNTIL_PARENT_FINISH
    elif lifetime is not RefLifetime.UNTIL_EXPLICIT_DROP:
        raise ValidationError(
            f"an upload's lifetime is UNTIL_PARENT_FINISH or UNTIL_EXPLICIT_DROP, not "
            f"{lifetime!r}: an upload belongs to no run on the peer, so it cannot end with one"
        )
    payload, tag = encode_ref_value(value, type_tag)
    return _PutCall(value, payload, tag, lifetime.value, parent)


def uploaded(client: PeerClient, call: _PutCall, entry: _native.RemoteRefEntry) -> RemoteRef:
    """The handle of a stored upload; the client remembers its tag and parent,
    as it does for refs a run returned."""
    ref = RemoteRef(
        key=entry.key,
        origin_node_id=entry.origin_node_id,
        origin_address=client.address,
        type_tag=entry.type_tag,
        created_at_epoch_ms=entry.created_at_epoch_ms,
    )
    client._refs.remember([(ref.key, ref.type_tag)], call.parent_run)
    return ref
