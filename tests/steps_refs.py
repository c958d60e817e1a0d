"""Session-ref steps (``refs::*``) for tests/test_session_refs.py."""

from __future__ import annotations

import asyncio
import hashlib

import ref_support
from blazen_peer import Context, RefLifetime, StartEvent, StopEvent, register_ref_codec, step
from peer_state import GATE_TIMEOUT_SECS, server_refs

# The codec both sides register; the peer-only codec is registered in `peer_app.main`, so a
# test process that imports this module still lacks it.
register_ref_codec(
    ref_support.POINT_TAG,
    ref_support.encode_point,
    ref_support.decode_point,
    type=ref_support.Point,
)
_gates: dict[str, asyncio.Event] = {}
_recorded: dict[str, dict[str, str]] = {}
_recorded_events: dict[str, asyncio.Event] = {}
_barriers: dict[str, tuple[list[str], asyncio.Event]] = {}


def _event(table: dict[str, asyncio.Event], tag: str) -> asyncio.Event:
    return table.setdefault(tag, asyncio.Event())


async def _insert(ctx: Context, value: object, lifetime: str) -> str:
    """Inserts with the named lifetime; "DEFAULT" passes none (so the default applies)."""
    if lifetime == "DEFAULT":
        key = await ctx.session_refs.insert(value)
    else:
        key = await ctx.session_refs.insert(value, lifetime=RefLifetime[lifetime])
    return str(key)


@step("refs::make")
async def make_refs(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts one ref per item ``{"seed", "size", "lifetime"}`` (built by
    ``ref_support.pattern_bytes``). With ``barrier: {"name", "parties"}`` the run
    waits until that many runs have inserted theirs, so their lifetimes overlap."""
    refs = []
    for item in ev.items:
        value = ref_support.pattern_bytes(int(item["seed"]), int(item["size"]))
        key = await _insert(ctx, value, item.get("lifetime", "DEFAULT"))
        refs.append({"key": key, "size": len(value), "sha256": hashlib.sha256(value).hexdigest()})
    barrier = ev.data.get("barrier")
    if barrier is not None:
        arrived, all_arrived = _barriers.setdefault(barrier["name"], ([], asyncio.Event()))
        arrived.append(ctx.run_id)
        if len(arrived) == int(barrier["parties"]):
            all_arrived.set()
        await asyncio.wait_for(all_arrived.wait(), timeout=GATE_TIMEOUT_SECS)
    return StopEvent(result={"refs": refs, "run_id": ctx.run_id})


class Opaque:
    """Neither bytes-like nor JSON, and no codec is registered for it."""


@step("refs::make_value")
async def make_value(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts one UNTIL_EXPLICIT_DROP value of ``kind``: json (``value``), point,
    peer_only, bytearray or unencodable."""
    explicit = RefLifetime.UNTIL_EXPLICIT_DROP
    refs = ctx.session_refs
    if ev.kind == "json":
        key = await refs.insert(ev.value, lifetime=explicit)
    elif ev.kind == "point":
        key = await refs.insert(ref_support.Point(3, -4, "pointé"), lifetime=explicit)
    elif ev.kind == "peer_only":
        key = await refs.insert("kept here", lifetime=explicit, type_tag=ref_support.PEER_ONLY_TAG)
    elif ev.kind == "bytearray":
        key = await refs.insert(bytearray(b"a mutable buffer"), lifetime=explicit)
    elif ev.kind == "unencodable":
        key = await refs.insert(Opaque(), lifetime=explicit)
    else:
        raise ValueError(f"unknown kind {ev.kind!r}")
    return StopEvent(result=str(key))


@step("refs::gated")
async def gated(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts one small ref per name in ``lifetimes`` (see `_insert`), publishes
    their keys for `refs::recorded` under ``tag``, waits for `refs::open_gate`,
    then returns the keys (``then: "return"``) or raises (``then: "raise"``)."""
    keys = {}
    for seed, lifetime in enumerate(ev.lifetimes):
        keys[lifetime] = await _insert(ctx, ref_support.pattern_bytes(seed, 64), lifetime)
    _recorded[ev.tag] = keys
    _event(_recorded_events, ev.tag).set()
    try:
        await asyncio.wait_for(_event(_gates, ev.tag).wait(), timeout=GATE_TIMEOUT_SECS)
    finally:
        _gates.pop(ev.tag, None)
    if ev.then == "raise":
        raise RuntimeError(f"gated run {ev.tag} fails on purpose")
    return StopEvent(result=keys)


@step("refs::open_gate")
async def open_gate(ctx: Context, ev: StartEvent) -> StopEvent:
    _event(_gates, ev.tag).set()
    return StopEvent(result=True)


@step("refs::recorded")
async def recorded(ctx: Context, ev: StartEvent) -> StopEvent:
    """The keys `refs::gated` inserted under ``tag``, once it has (waits up to 10 s)."""
    await asyncio.wait_for(_event(_recorded_events, ev.tag).wait(), timeout=10)
    _recorded_events.pop(ev.tag, None)
    return StopEvent(result=_recorded.pop(ev.tag))


@step("refs::registry")
def registry(ctx: Context, ev: StartEvent) -> StopEvent:
    """What the server's registry holds (reading it renews no lease)."""
    refs = server_refs()
    return StopEvent(
        result={
            "count": len(refs),
            "total_bytes": refs.total_bytes,
            "keys": [str(info.key) for info in refs.list()],
            "lease_secs": refs.lease_secs,
        }
    )


@step("refs::insert_default")
async def insert_default(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts 16 bytes with the default lifetime; returns how many refs the server holds."""
    await ctx.session_refs.insert(b"sixteen bytes!!!")
    return StopEvent(result=len(server_refs()))


@step("refs::big_result")
async def big_result(ctx: Context, ev: StartEvent) -> StopEvent:
    """Returns a string of ``size`` characters; with ``explicit_ref`` first inserts an
    UNTIL_EXPLICIT_DROP ref whose key the caller will never see if the reply is refused."""
    if ev.data.get("explicit_ref"):
        await ctx.session_refs.insert(b"orphan?", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    return StopEvent(result="x" * int(ev.size))
