"""Session refs: values that stay on the peer that made them.

A step stores a value with ``await ctx.session_refs.insert(value, lifetime=...)``
and hands out its key; a caller on another machine fetches the bytes lazily
with ``client.deref_session_ref(key)`` / ``client.fetch_session_ref(key)`` and
frees them with ``client.release_session_ref(key)``.

Values are encoded by type tag: ``bytes`` for anything with the buffer protocol
(kept without a copy when C-contiguous), ``json`` for JSON values, and any
other tag through a codec registered on both sides with
:func:`register_ref_codec`. Nothing is ever unpickled unless you register a
pickle codec yourself: a peer must never run a stranger's pickle.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from . import _native, _wire_json
from ._grammar import with_article
from .errors import EncodeError, RefNotFoundError, RefOriginError, ValidationError
from .remote_ref import RemoteRef

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "RefInfo",
    "RefLifetime",
    "SessionRefRegistry",
    "SessionRefs",
    "decode_ref_value",
    "register_ref_codec",
]

#: Lease of ``UNTIL_PARENT_FINISH`` refs; the default lives in the Rust core (session_refs.rs).
DEFAULT_LEASE_SECS: float = _native.DEFAULT_LEASE_SECS


class RefLifetime(enum.Enum):
    """When a session ref is purged automatically."""

    UNTIL_CONTEXT_DROP = "UNTIL_CONTEXT_DROP"
    """Purged when the run that made it ends, however it ends (the default)."""
    UNTIL_PARENT_FINISH = "UNTIL_PARENT_FINISH"
    """Lives until released, until the caller's parent run finishes, or until its lease runs out."""
    UNTIL_EXPLICIT_DROP = "UNTIL_EXPLICIT_DROP"
    """Lives until released."""


@dataclass(frozen=True)
class _Codec:
    type_tag: str
    encode: Callable[[Any], Any]
    decode: Callable[[bytes], Any]
    type: type | None


_BUILTIN_TAGS = frozenset({"bytes", "json"})
_CODECS_BY_TAG: dict[str, _Codec] = {}
_CODECS_BY_TYPE: dict[type, _Codec] = {}


def register_ref_codec(
    type_tag: str,
    encode: Callable[[Any], Any],
    decode: Callable[[bytes], Any],
    *,
    type: type | None = None,
) -> None:
    """Registers how values tagged ``type_tag`` become bytes and back.

    ``encode`` returns a bytes-like object; ``decode`` takes ``bytes``. With
    ``type=``, inserting an instance of that type (or a subclass) uses this
    codec without naming the tag. Register the same codec on both sides.
    """
    if not type_tag or type_tag in _BUILTIN_TAGS:
        raise ValidationError(
            f"type tag {type_tag!r} is reserved or empty; pick another (e.g. 'numpy.ndarray')"
        )
    codec = _Codec(type_tag, encode, decode, type)
    _CODECS_BY_TAG[type_tag] = codec
    if type is not None:
        _CODECS_BY_TYPE[type] = codec


def _codec_for_type(cls: type) -> _Codec | None:
    for base in cls.__mro__:
        codec = _CODECS_BY_TYPE.get(base)
        if codec is not None:
            return codec
    return None


def _as_json(value: Any) -> bytes:
    try:
        text = _wire_json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"the value is not JSON for the 'json' ref type: {exc}") from exc
    return text.encode()


def _as_buffer(value: Any) -> Any:
    view = memoryview(value)
    return value if view.c_contiguous else view.tobytes()


def _run_codec(codec: _Codec, value: Any) -> Any:
    try:
        encoded = codec.encode(value)
        memoryview(encoded)
    except Exception as exc:
        raise EncodeError(
            f"the codec for type tag {codec.type_tag!r} failed to encode a "
            f"{type(value).__name__}: {exc}"
        ) from exc
    return encoded


def encode_ref_value(value: Any, type_tag: str | None = None) -> tuple[Any, str]:
    """The bytes-like payload and type tag a value is stored as."""
    if type_tag is None:
        codec = _codec_for_type(type(value))
        if codec is not None:
            return _run_codec(codec, value), codec.type_tag
        try:
            return _as_buffer(value), "bytes"
        except TypeError:
            pass
        if value is None or isinstance(value, dict | list | str | int | float | bool):
            return _as_json(value), "json"
        raise EncodeError(
            f"cannot store {with_article(type(value).__name__)} as a session ref: it has no "
            "buffer protocol, is not JSON, and no codec is registered for its type; register one "
            "with "
            f"register_ref_codec('your.tag', encode, decode, type={type(value).__name__})"
        )
    if type_tag == "bytes":
        try:
            return _as_buffer(value), "bytes"
        except TypeError as exc:
            raise EncodeError(f"type tag 'bytes' needs a bytes-like value: {exc}") from exc
    if type_tag == "json":
        return _as_json(value), "json"
    codec = _CODECS_BY_TAG.get(type_tag)
    if codec is None:
        raise EncodeError(
            f"no codec is registered for type tag {type_tag!r}; register one with "
            "register_ref_codec(type_tag, encode, decode)"
        )
    return _run_codec(codec, value), type_tag


def decode_ref_value(type_tag: str, raw: bytes | memoryview) -> Any:
    """Turns fetched bytes back into a value with the codec for ``type_tag``;
    ``bytes`` values stay as they are (a memoryview stays a view: no copy),
    codecs get ``bytes``, as their contract says."""
    if type_tag == "bytes":
        return raw
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if type_tag == "json":
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise EncodeError(f"a 'json' session ref does not hold JSON: {exc}") from exc
    codec = _CODECS_BY_TAG.get(type_tag)
    if codec is None:
        raise EncodeError(
            f"no codec is registered here for type tag {type_tag!r}; register the same codec as "
            "the peer with register_ref_codec(type_tag, encode, decode), or use "
            "deref_session_ref for the raw bytes"
        )
    try:
        return codec.decode(raw)
    except Exception as exc:
        raise EncodeError(f"the codec for type tag {type_tag!r} failed to decode: {exc}") from exc


@dataclass(frozen=True)
class RefInfo:
    """What an operator sees of a live session ref."""

    key: uuid.UUID
    type_tag: str
    size: int
    lifetime: RefLifetime
    created_at_epoch_ms: int
    owner_run: str | None
    parent_run: str | None


class SessionRefRegistry:
    """Session refs held by this process. A server owns one by default; pass one
    to ``PeerServer(session_refs=...)`` and ``Workflow.run(session_refs=...)`` to share it.

    ``lease_secs`` bounds how long ``UNTIL_PARENT_FINISH`` refs outlive a parent
    that stopped renewing them (a crashed caller).
    """

    def __init__(self, lease_secs: float = DEFAULT_LEASE_SECS) -> None:
        self._ref = _native.SessionRefRegistry(lease_secs)

    @classmethod
    def _wrap(cls, ref: _native.SessionRefRegistry) -> SessionRefRegistry:
        registry = cls.__new__(cls)
        registry._ref = ref
        return registry

    def __len__(self) -> int:
        return len(self._ref)

    @property
    def total_bytes(self) -> int:
        """Bytes held by live refs."""
        return self._ref.total_bytes

    @property
    def lease_secs(self) -> float:
        """Lease of ``UNTIL_PARENT_FINISH`` refs."""
        return self._ref.lease_secs

    def list(self) -> list[RefInfo]:
        """Every live ref, oldest first."""
        return [
            RefInfo(
                key=uuid.UUID(record.key),
                type_tag=record.type_tag,
                size=record.size,
                lifetime=RefLifetime(record.lifetime),
                created_at_epoch_ms=record.created_at_epoch_ms,
                owner_run=record.owner_run,
                parent_run=record.parent_run,
            )
            for record in self._ref.list()
        ]

    def insert(
        self,
        value: Any,
        *,
        lifetime: RefLifetime = RefLifetime.UNTIL_EXPLICIT_DROP,
        type_tag: str | None = None,
    ) -> uuid.UUID:
        """Stores a value outside any run (it lives until removed)."""
        payload, tag = encode_ref_value(value, type_tag)
        return uuid.UUID(self._ref.insert(value, payload, tag, lifetime.value))

    def get(self, key: uuid.UUID | str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        value = self._ref.get(str(key))
        return default if value is None else _stored_value(value)

    def remove(self, key: uuid.UUID | str) -> bool:
        """Drops the value under ``key``; True when it was there."""
        return self._ref.remove(str(key))

    def __repr__(self) -> str:
        return f"SessionRefRegistry(refs={len(self)}, total_bytes={self.total_bytes})"


_MISSING: Any = object()


def _stored_value(value: Any) -> Any:
    """A registry's value as steps see it: the object a step inserted, or an
    uploaded value decoded in place (``bytes``: a read-only memoryview over
    the stored bytes, no copy)."""
    if not isinstance(value, _native.RefBuffer):
        return value
    # RefBuffer exports the buffer protocol from Rust (__getbuffer__), which
    # CPython 3.11 does not show as a Python-level __buffer__ for the stub to declare.
    return decode_ref_value(value.type_tag, memoryview(cast("Buffer", value)))


def _key_of(key: uuid.UUID | str | Mapping[str, Any]) -> str:
    return str(RemoteRef.parse(key).key) if isinstance(key, Mapping) else str(key)


class SessionRefs:
    """``ctx.session_refs``: the run's view of its registry."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: _native.RunContext) -> None:
        self._ctx = ctx

    async def insert(
        self,
        value: Any,
        *,
        lifetime: RefLifetime = RefLifetime.UNTIL_CONTEXT_DROP,
        type_tag: str | None = None,
    ) -> uuid.UUID:
        """Stores ``value`` on this node and returns its key."""
        return self.insert_sync(value, lifetime=lifetime, type_tag=type_tag)

    async def get(self, key: uuid.UUID | str | Mapping[str, Any], default: Any = _MISSING) -> Any:
        """The value under ``key`` (a key, or a :class:`RemoteRef` of this node):
        the object itself when a step of this process inserted it; an uploaded
        value decoded by its type tag, ``bytes`` as a read-only memoryview over
        the stored bytes (``numpy.frombuffer(view, dtype)`` copies nothing).
        A key this node does not hold raises RefNotFoundError, or returns
        ``default`` when one is given."""
        return self.get_sync(key, default)

    async def fetch(self, handle: Mapping[str, Any]) -> Any:
        """The value a :class:`RemoteRef` names, fetched from the peer that holds
        it, directly, through this peer's directory (``PeerServer(peers=...)``):
        never through the caller, never with credentials from the request.
        RefOriginError when the origin is not in the directory or cannot be
        reached; RefNotFoundError when it no longer holds the ref."""
        ref = RemoteRef.parse(handle)
        if ref.origin_node_id == self._ctx.node_id:
            return self.get_sync(ref.key)
        return await self._directory(ref).fetch(ref)

    def fetch_sync(self, handle: Mapping[str, Any]) -> Any:
        """:meth:`fetch` for plain ``def`` steps."""
        ref = RemoteRef.parse(handle)
        if ref.origin_node_id == self._ctx.node_id:
            return self.get_sync(ref.key)
        return self._directory(ref).fetch_blocking(ref)

    def _directory(self, ref: RemoteRef) -> Any:
        directory = self._ctx.peer_directory
        if directory is None:
            raise RefOriginError(
                f"node `{self._ctx.node_id}` has no peer directory, so its steps may fetch "
                f"from no other peer (asked for ref {ref.key} of node `{ref.origin_node_id}` "
                f"at {ref.origin_address}); give the server one: PeerServer(peers="
                f"{{{ref.origin_node_id!r}: PeerLink(address)}}) or `serve --peers FILE`",
                origin_node_id=ref.origin_node_id,
                origin_address=ref.origin_address,
            )
        return directory

    async def remove(self, key: uuid.UUID | str) -> bool:
        """Drops the value under ``key``; True when it was there."""
        return self.remove_sync(key)

    def insert_sync(
        self,
        value: Any,
        *,
        lifetime: RefLifetime = RefLifetime.UNTIL_CONTEXT_DROP,
        type_tag: str | None = None,
    ) -> uuid.UUID:
        """:meth:`insert` for plain ``def`` steps."""
        if not isinstance(lifetime, RefLifetime):
            raise ValidationError(f"lifetime must be a RefLifetime, got {lifetime!r}")
        payload, tag = encode_ref_value(value, type_tag)
        return uuid.UUID(self._ctx.insert_ref(value, payload, tag, lifetime.value))

    def get_sync(self, key: uuid.UUID | str | Mapping[str, Any], default: Any = _MISSING) -> Any:
        """:meth:`get` for plain ``def`` steps."""
        value = self._ctx.get_ref(_key_of(key))
        if value is not None:
            return _stored_value(value)
        if default is not _MISSING:
            return default
        raise RefNotFoundError(
            f"session ref {_key_of(key)} is not held by node `{self._ctx.node_id}` (released, "
            "expired, never created here, or made on another peer: fetch a RemoteRef of "
            "another peer with ctx.session_refs.fetch)"
        )

    def remove_sync(self, key: uuid.UUID | str) -> bool:
        """:meth:`remove` for plain ``def`` steps."""
        return self._ctx.remove_ref(str(key))
