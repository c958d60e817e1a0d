"""The peer ("node-b") that the test suite talks to across a process boundary.

Importable as a module of steps (importing it registers them in this process's
step registry) and runnable as a server::

    python tests/peer_app.py [HOST:PORT]     # default 127.0.0.1:0 (a free port)
        [--lease-secs SECS]                  # SessionRefRegistry(lease_secs=...) of the server
        [--max-message-bytes N]              # PeerServer(max_message_bytes=...)
        [--tls-cert F --tls-key F [--tls-client-ca F]]   # PeerServer(tls=ServerTls.from_pem(...))
        [--token T] [--insecure]             # PeerServer(token=..., insecure=...)
        [--http-json]                        # PeerServer(http_json=True): the HTTP/JSON routes too
        [--max-concurrent-runs N] [--max-json-depth N] [--keepalive-interval SECS]
        [--default-timeout SECS]             # PeerServer(default_timeout_secs=...)
        [--grace SECS|none]                  # server.stop(grace=...) when told to stop
        [--print-stats]                      # print `STOPPED <stats JSON>` after stopping
        [--node-id ID]                       # PeerServer(node_id=...), default node-b
        [--extra-step ID ...]                # also register `pool::whoami` under ID

The script prints ``LISTENING HOST:PORT`` once ``PeerServer.start`` has returned,
then serves until its stdin reaches end-of-file or it receives SIGTERM, and
exits with status 0 after ``PeerServer.stop`` (``stop(grace=...)`` with ``--grace``).

The README example steps (``my_app::analyze`` and ``my_app::summarize``) are
imported from ``examples/peer_b.py`` itself, so the example code is what runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(_EXAMPLES) not in sys.path:
    sys.path.insert(0, str(_EXAMPLES))

import peer_b  # noqa: E402  (registers my_app::analyze and my_app::summarize)
import ref_support  # noqa: E402
from blazen_peer import (  # noqa: E402
    Context,
    Event,
    PeerServer,
    RefLifetime,
    ServerTls,
    SessionRefRegistry,
    StartEvent,
    StopEvent,
    event_type_name,
    register_ref_codec,
    register_step,
    register_workflow,
    step,
)
from stream_events import Blob, Progress  # noqa: E402

NODE_ID = "node-b"
README_STEP_IDS = [peer_b.analyze.id, peer_b.summarize.id]
SLOW_STEP_SECS = 0.5
SYNC_SLOW_STEP_SECS = 0.5


# --- events with fixed wire names (the module is `__main__` when run as a script) ---


class Item(Event, event_type="tests.Item"):
    """One piece of a fan-out."""

    index: int
    total: int


class Orphan(Event, event_type="tests.Orphan"):
    """Emitted by `test::orphan`; no step accepts it."""

    note: str


class Ping(Event, event_type="tests.Ping"):
    """Emitted by `test::emit_ping`, received by the step that accepts any Event."""

    value: int


class Base(Event, event_type="tests.Base"):
    """A base event; a step accepting it also receives `Child`."""

    value: str


class Child(Base, event_type="tests.Child"):
    """A subclass of `Base`."""

    extra: int = 0


# --- the README pipeline, runnable with empty step_ids ---

register_workflow("analyze-pipeline", README_STEP_IDS)


# --- test steps ---


@step("test::echo")
def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    """A sync step reporting what it received and where it ran."""
    return _echo(ctx, ev)


def _echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(
        result={
            "data": ev.data,
            "run_id": ctx.run_id,
            "node_id": ctx.node_id,
            "workflow_name": ctx.workflow_name,
            "on_main_thread": threading.current_thread() is threading.main_thread(),
        }
    )


@step("test::async_echo")
async def async_echo(ctx: Context, ev: StartEvent) -> StopEvent:
    """The async twin of `test::echo`."""
    await asyncio.sleep(0)
    return _echo(ctx, ev)


@step("test::boom")
async def boom(ctx: Context, ev: StartEvent) -> StopEvent:
    raise ValueError("boom")


@step("test::sleep")
async def sleep_long(ctx: Context, ev: StartEvent) -> StopEvent:
    """Sleeps far past any timeout the tests use."""
    await asyncio.sleep(30)
    return StopEvent(result="woke up")


@step("test::slow")
async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
    """Takes SLOW_STEP_SECS; concurrent calls must overlap."""
    await asyncio.sleep(SLOW_STEP_SECS)
    return StopEvent(result=ev.data)


@step("test::sync_slow")
def sync_slow(ctx: Context, ev: StartEvent) -> StopEvent:
    """Blocks its worker thread for SYNC_SLOW_STEP_SECS."""
    time.sleep(SYNC_SLOW_STEP_SECS)
    return StopEvent(result=ev.data)


@step("test::fan_out")
async def fan_out(ctx: Context, ev: StartEvent) -> list[Item]:
    """Emits `n` Items at once; `test::collect` handles them concurrently."""
    total = int(ev.n)
    # Shared, process-local progress of this run (a private key never leaves the peer).
    await ctx.set("_collect", {"seen": [], "all_arrived": asyncio.Event()})
    return [Item(index=i, total=total) for i in range(total)]


@step("test::collect")
async def collect(ctx: Context, ev: Item) -> StopEvent | None:
    """Each call waits until every Item of its run is being handled at the same time;
    if the calls ran one after another the first would wait forever (here: 10 s, then fail)."""
    progress = await ctx.get("_collect")
    progress["seen"].append(ev.index)
    if len(progress["seen"]) == ev.total:
        progress["all_arrived"].set()
    await asyncio.wait_for(progress["all_arrived"].wait(), timeout=10)
    if ev.index == 0:
        return StopEvent(result={"seen": sorted(progress["seen"]), "run_id": ctx.run_id})
    return None


@step("test::bad_result")
def bad_result(ctx: Context, ev: StartEvent) -> StopEvent:
    """A sync step whose StopEvent result is not JSON-serializable."""
    return StopEvent(result=object())


@step("test::bad_state")
async def bad_state(ctx: Context, ev: StartEvent) -> StopEvent:
    """Stores a non-JSON value under a public (exported) key."""
    await ctx.set("bad", object())
    return StopEvent(result="unreachable")


@step("test::state")
async def state(ctx: Context, ev: StartEvent) -> StopEvent:
    """Public keys are exported with the result; `_` keys stay in this process."""
    await ctx.set("count", 3)
    await ctx.set("nested", {"a": [1, 2, None], "ok": True})
    await ctx.set("_secret", object())
    return StopEvent(
        result={
            "count": await ctx.get("count"),
            "secret_kept": await ctx.get("_secret") is not None,
        }
    )


@step("test::emit_ping")
async def emit_ping(ctx: Context, ev: StartEvent) -> Ping:
    return Ping(value=int(ev.value))


@step("test::any_event")
async def any_event(ctx: Context, ev: Event) -> StopEvent | None:
    """Annotated `Event`: receives the StartEvent and the Ping."""
    seen = await ctx.get("_any_seen")
    if seen is None:
        seen = {"types": [], "start_seen": asyncio.Event()}
        await ctx.set("_any_seen", seen)
    seen["types"].append(event_type_name(type(ev)))
    if isinstance(ev, StartEvent):
        seen["start_seen"].set()
        if ev.data == "stop-on-start":
            return StopEvent(result={"types": seen["types"]})
        return None
    await asyncio.wait_for(seen["start_seen"].wait(), timeout=10)
    return StopEvent(result={"types": sorted(seen["types"]), "value": ev.value})


@step("test::emit_child")
async def emit_child(ctx: Context, ev: StartEvent) -> Child:
    return Child(value=ev.value, extra=7)


@step("test::on_base")
def on_base(ctx: Context, ev: Base) -> StopEvent:
    return StopEvent(
        result={
            "class": type(ev).__name__,
            "event_type": event_type_name(type(ev)),
            "is_base": isinstance(ev, Base),
            "value": ev.value,
            "extra": getattr(ev, "extra", None),
        }
    )


@step("test::base_sink")
async def base_sink(ctx: Context, ev: Base) -> None:
    """Accepts Base (so also Child) and returns nothing: the run ends without a StopEvent."""
    return None


@step("test::orphan")
async def orphan(ctx: Context, ev: StartEvent) -> Orphan:
    return Orphan(note="nobody listens")


@step("test::returns_none")
async def returns_none(ctx: Context, ev: StartEvent) -> None:
    return None


# --- session refs (tests/test_session_refs.py) ---

# The codec both sides register; the peer-only codec is registered in `main`, so a
# test process that imports this module still lacks it.
register_ref_codec(
    ref_support.POINT_TAG,
    ref_support.encode_point,
    ref_support.decode_point,
    type=ref_support.Point,
)

SERVER: PeerServer | None = None
"""The serving PeerServer once `main` created it (its registry is what `refs::registry` reports)."""

GATE_TIMEOUT_SECS = 20.0
_gates: dict[str, asyncio.Event] = {}
_recorded: dict[str, dict[str, str]] = {}
_recorded_events: dict[str, asyncio.Event] = {}
_barriers: dict[str, tuple[list[str], asyncio.Event]] = {}


def _event(table: dict[str, asyncio.Event], tag: str) -> asyncio.Event:
    return table.setdefault(tag, asyncio.Event())


def _server_refs() -> SessionRefRegistry:
    if SERVER is None:
        raise RuntimeError("refs::registry needs the peer_app server (run peer_app.py)")
    return SERVER.session_refs


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
    refs = _server_refs()
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
    return StopEvent(result=len(_server_refs()))


@step("refs::big_result")
async def big_result(ctx: Context, ev: StartEvent) -> StopEvent:
    """Returns a string of ``size`` characters; with ``explicit_ref`` first inserts an
    UNTIL_EXPLICIT_DROP ref whose key the caller will never see if the reply is refused."""
    if ev.data.get("explicit_ref"):
        await ctx.session_refs.insert(b"orphan?", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    return StopEvent(result="x" * int(ev.size))


# --- security: who called, and which calls reached a step ---

MARKS: dict[str, int] = {}


@step("security::mark")
async def mark(ctx: Context, ev: StartEvent) -> StopEvent:
    """Counts a call under ``tag`` and reports who made it."""
    MARKS[ev.tag] = MARKS.get(ev.tag, 0) + 1
    identity = ctx.peer_identity
    return StopEvent(
        result={
            "caller_node_id": ctx.caller_node_id,
            "peer_identity": None
            if identity is None
            else {
                "subject": identity.subject,
                "common_name": identity.common_name,
                "dns_names": list(identity.dns_names),
                "uris": list(identity.uris),
                "der_len": len(identity.certificate_der),
            },
        }
    )


@step("security::marks")
async def marks(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=MARKS)


@step("security::hold")
def hold(ctx: Context, ev: StartEvent) -> StopEvent:
    """Creates the file ``started``, then holds its run slot until the file ``release``
    exists (the test creates it)."""
    Path(ev.started).touch()
    release = Path(ev.release)
    while not release.exists():
        time.sleep(0.01)
    return StopEvent(result="released")


@step("security::silent")
async def silent(ctx: Context, ev: StartEvent) -> StopEvent:
    """Sends nothing for ``secs`` seconds, so only keepalive pings cross the connection."""
    await asyncio.sleep(float(ev.secs))
    return StopEvent(result="still connected")


# --- streaming (tests/test_streaming.py) ---
# `Progress` and `Blob` come from tests/stream_events.py, which the tests import too;
# `tests.PeerOnly` is defined only in the peer process (by `main`).

PEER_ONLY_EVENT: Any = None
"""`tests.PeerOnly`, created by `main` so that importing this module never defines it."""


def _define_peer_only() -> Any:
    class PeerOnly(Event, event_type="tests.PeerOnly"):
        """An event type the test process does not know."""

        note: str
        values: list[int]

    return PeerOnly


@step("stream::progress")
async def stream_progress(ctx: Context, ev: StartEvent) -> StopEvent:
    """Writes ``n`` Progress events (epochs 0..n-1), then stops with ``{"written": n}``."""
    total = int(ev.n)
    for epoch in range(total):
        ctx.write_event_to_stream(Progress(epoch=epoch))
    await ctx.set("epochs", total)
    return StopEvent(result={"written": total})


@step("stream::sync_progress")
def stream_sync_progress(ctx: Context, ev: StartEvent) -> StopEvent:
    """The sync twin of `stream::progress` (its writes block while the buffer is full)."""
    total = int(ev.n)
    for epoch in range(total):
        ctx.write_event_to_stream(Progress(epoch=epoch))
    return StopEvent(
        result={
            "written": total,
            "on_main_thread": threading.current_thread() is threading.main_thread(),
        }
    )


@step("stream::peer_only")
async def stream_peer_only(ctx: Context, ev: StartEvent) -> StopEvent:
    """Writes one event of a type only this process defines."""
    if PEER_ONLY_EVENT is None:
        raise RuntimeError("stream::peer_only needs the peer_app server (run peer_app.py)")
    ctx.write_event_to_stream(PEER_ONLY_EVENT(note="only the peer knows", values=[1, 2, 3]))
    return StopEvent(result="sent")


@step("stream::fail_after")
async def stream_fail_after(ctx: Context, ev: StartEvent) -> StopEvent:
    """Writes ``k`` Progress events, then raises (``then: "raise"``) or sleeps 60 s."""
    for epoch in range(int(ev.k)):
        ctx.write_event_to_stream(Progress(epoch=epoch))
    if ev.then == "raise":
        raise RuntimeError(f"failed after {ev.k} events")
    await asyncio.sleep(60)
    return StopEvent(result="woke up")


# --- probes: what happened to a run, seen from inside the peer ---

PROBES: dict[str, dict[str, Any]] = {}
"""By tag: ``state`` (started, then cancelled/stopped/finished), the ``ref`` key the run
inserted (default lifetime) and ``time.monotonic()`` stamps (comparable across processes)."""
PRODUCED: dict[str, int] = {}
"""By tag: how many events `stream::produce` has written so far."""
LONG_STEP_SECS = 60.0


async def _probe_start(ctx: Context, tag: str, kind: str) -> None:
    _probe_started(tag, kind, await ctx.session_refs.insert(b"held while the run lives"))


def _probe_started(tag: str, kind: str, key: object) -> None:
    PROBES[tag] = {
        "state": "started",
        "kind": kind,
        "ref": str(key),
        "started_at": time.monotonic(),
    }


def _probe_end(tag: str, state: str) -> None:
    PROBES[tag].update(state=state, ended_at=time.monotonic())


@step("probe::long_async")
async def probe_long_async(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts a ref, records "started", sleeps LONG_STEP_SECS; records "cancelled" when
    asyncio.CancelledError arrives (and re-raises it)."""
    await _probe_start(ctx, ev.tag, "async")
    try:
        await asyncio.sleep(LONG_STEP_SECS)
    except asyncio.CancelledError:
        _probe_end(ev.tag, "cancelled")
        raise
    _probe_end(ev.tag, "finished")
    return StopEvent(result="finished")


@step("probe::long_sync")
def probe_long_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts a ref, records "started", then loops until ``ctx.cancelled`` (records
    "stopped") or LONG_STEP_SECS pass (records "finished")."""
    _probe_started(ev.tag, "sync", ctx.session_refs.insert_sync(b"held while the run lives"))
    deadline = time.monotonic() + LONG_STEP_SECS
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.005)
    _probe_end(ev.tag, "stopped" if ctx.cancelled else "finished")
    return StopEvent(result="finished")


@step("stream::produce")
async def stream_produce(ctx: Context, ev: StartEvent) -> StopEvent:
    """Inserts a ref, records "started", then writes ``count`` Blob events of ``size``
    characters, counting them in PRODUCED[tag]; records "cancelled" when cancelled."""
    await _probe_start(ctx, ev.tag, "stream")
    PRODUCED[ev.tag] = 0
    size = int(ev.size)
    try:
        for index in range(int(ev.count)):
            payload = f"{index:08d}".ljust(size, "x")
            ctx.write_event_to_stream(Blob(index=index, payload=payload))
            PRODUCED[ev.tag] = index + 1
            await asyncio.sleep(0)  # where a full stream buffer pauses this step
    except asyncio.CancelledError:
        _probe_end(ev.tag, "cancelled")
        raise
    _probe_end(ev.tag, "finished")
    return StopEvent(result={"written": PRODUCED[ev.tag]})


@step("stream::produce_sync")
def stream_produce_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    """The sync twin of `stream::produce` (its writes block while the buffer is full);
    records "stopped" when it sees ``ctx.cancelled``."""
    _probe_started(ev.tag, "sync-stream", ctx.session_refs.insert_sync(b"held while it runs"))
    PRODUCED[ev.tag] = 0
    size = int(ev.size)
    try:
        for index in range(int(ev.count)):
            if ctx.cancelled:
                break
            payload = f"{index:08d}".ljust(size, "x")
            ctx.write_event_to_stream(Blob(index=index, payload=payload))
            PRODUCED[ev.tag] = index + 1
    finally:
        _probe_end(ev.tag, "stopped" if ctx.cancelled else "finished")
    return StopEvent(result={"written": PRODUCED[ev.tag]})


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@step("probe::status")
async def probe_status(ctx: Context, ev: StartEvent) -> StopEvent:
    """What the probes recorded under ``tag``, whether the probe's ref is still in the
    server's registry, PRODUCED[tag], this process's RSS and the server's stats."""
    entry = PROBES.get(ev.tag)
    held = None
    if entry is not None:
        held = entry["ref"] in {str(info.key) for info in _server_refs().list()}
    stats = dataclasses.asdict(SERVER.stats()) if SERVER is not None else None
    return StopEvent(
        result={
            "entry": entry,
            "ref_held": held,
            "produced": PRODUCED.get(ev.tag),
            "rss_bytes": _rss_bytes(),
            "stats": stats,
            "now": time.monotonic(),
        }
    )


# --- pools (tests/test_pool.py, tests/test_multihost.py): where did a call run? ---


@step("pool::whoami")
async def whoami(ctx: Context, ev: StartEvent) -> StopEvent:
    """Reports the node that ran the call (``--node-id``) and echoes ``ev.data``."""
    return StopEvent(result={"node_id": ctx.node_id, "data": ev.data})


@step("pool::hold")
async def pool_hold(ctx: Context, ev: StartEvent) -> StopEvent:
    """Creates the file ``<started_dir>/<node id>.<run id>`` holding ``ev.tag`` (the test
    reads them to see which node runs which call), inserts ``ref_value`` (if given, as
    UTF-8 bytes, UNTIL_EXPLICIT_DROP), then waits until one of the files in ``release``
    (a list of paths) exists, up to GATE_TIMEOUT_SECS. Returns the node id, the tag and
    the ref's key (or None)."""
    marker = Path(ev.started_dir) / f"{ctx.node_id}.{ctx.run_id}"
    key = None
    ref_value = ev.data.get("ref_value")
    if ref_value is not None:
        explicit = RefLifetime.UNTIL_EXPLICIT_DROP
        key = str(await ctx.session_refs.insert(str(ref_value).encode(), lifetime=explicit))
    marker.write_text(str(ev.tag))
    releases = [Path(path) for path in ev.release]
    deadline = time.monotonic() + GATE_TIMEOUT_SECS
    while not any(path.exists() for path in releases):
        if time.monotonic() > deadline:
            raise TimeoutError(f"none of {releases} appeared within {GATE_TIMEOUT_SECS}s")
        await asyncio.sleep(0.01)
    return StopEvent(result={"node_id": ctx.node_id, "tag": ev.tag, "key": key})


# --- serving ---


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Runs in a daemon thread: reads stdin to its end, then asks the loop to stop.

    Reads the file descriptor, not ``sys.stdin.buffer``: a daemon thread blocked inside
    the buffered reader holds its lock, and the interpreter aborts at exit ("could not
    acquire lock ... at interpreter shutdown") when the peer stops on SIGTERM."""
    with contextlib.suppress(OSError, ValueError):
        while os.read(sys.stdin.fileno(), 4096):
            pass
    with contextlib.suppress(RuntimeError):  # the loop may already be closed
        loop.call_soon_threadsafe(stop.set)


async def main(args: argparse.Namespace) -> None:
    global SERVER, PEER_ONLY_EVENT
    PEER_ONLY_EVENT = _define_peer_only()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    register_ref_codec(
        ref_support.PEER_ONLY_TAG, ref_support.encode_peer_only, ref_support.decode_peer_only
    )
    session_refs = None if args.lease_secs is None else SessionRefRegistry(args.lease_secs)
    tls = (
        ServerTls.from_pem(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
        if args.tls_cert
        else None
    )
    for step_id in args.extra_step:
        register_step(step_id, whoami.fn)
    SERVER = server = PeerServer(
        args.node_id,
        session_refs=session_refs,
        max_message_bytes=args.max_message_bytes,
        tls=tls,
        token=args.token,
        insecure=args.insecure,
        max_concurrent_runs=args.max_concurrent_runs,
        max_json_depth=args.max_json_depth,
        keepalive_interval_secs=args.keepalive_interval,
        default_timeout_secs=args.default_timeout,
        http_json=args.http_json,
    )
    bound = await server.start(args.address)
    print(f"LISTENING {bound}", flush=True)
    threading.Thread(target=_stop_on_stdin_eof, args=(loop, stop), daemon=True).start()
    try:
        await stop.wait()
    finally:
        if args.grace is None:
            await server.stop()
        else:
            await server.stop(grace=None if args.grace == "none" else float(args.grace))
    if args.print_stats:
        print(f"STOPPED {json.dumps(dataclasses.asdict(server.stats()))}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The test suite's peer, node-b.")
    parser.add_argument("address", nargs="?", default="127.0.0.1:0")
    parser.add_argument("--lease-secs", type=float, default=None)
    parser.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    parser.add_argument("--token")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--http-json", action="store_true")
    parser.add_argument("--max-concurrent-runs", type=int, default=1024)
    parser.add_argument("--max-json-depth", type=int, default=100)
    parser.add_argument("--keepalive-interval", type=float, default=30.0)
    parser.add_argument("--default-timeout", type=float, default=300.0)
    parser.add_argument("--grace", default=None, help="seconds, or 'none' for no limit")
    parser.add_argument("--print-stats", action="store_true")
    parser.add_argument("--node-id", default=NODE_ID)
    parser.add_argument("--extra-step", action="append", default=[], metavar="STEP_ID")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
