"""Soak: many mixed calls against a peer in its own process, watching both for leaks.

What it does
  Starts benches/_soak_peer.py in its own process (the peer, and on a port of its own the
  origin whose refs the p2p kind fetches) and makes --calls calls (default 200,000) from one
  PeerClient in this process (and one to the origin, for p2p), --in-flight at a time
  (default 32). Every block of 100 calls has the same mix (shuffled once, see KINDS):
    ok, ok_sync              successful calls (async def / def step)
    stream                   a streaming call read to its end
    fail, fail_sync          the step raises (15% of calls with ref_fail) while a local holds
                             --ballast-kib KiB, so a leaked exception shows in RSS
    timeout, timeout_sync    timeout_secs=1 against a step that sleeps 30 s
    cancel, cancel_sync      the calling task is cancelled 0-20 ms after it starts
    stream_close(_sync)      a streaming call closed after a few events of 10,000
    ref_explicit             refs outside a parent run: fetched, released explicitly, and
                             every fourth one fetched again (the peer reports it gone)
    ref_parent               under `parent_run`: an UNTIL_PARENT_FINISH ref left to the parent,
                             an UNTIL_EXPLICIT_DROP one released explicitly, a default one
    ref_parent_release       under `parent_run`: the parent's ref released before it finishes
    ref_fail                 under `parent_run`: refs of every lifetime, then the step raises
    upload                   put_session_ref of 4 KiB (bytes or bytearray), under `parent_run`
                             or UNTIL_EXPLICIT_DROP then released; a step reads it with
                             ctx.session_refs.get and returns its size and SHA-256
    upload_quota             put_session_ref past the peer's max_upload_bytes (4 MiB):
                             QuotaExceededError, nothing stored
    p2p                      a ref made on the peer process's second server (the origin, its
                             own port) under `parent_run`; a step on the peer fetches it over
                             the network (ctx.session_refs.fetch) and returns its SHA-256
    policy                   steps with max_concurrency=2, timeout_secs=0.25 and one retry
                             (async def and def): a first attempt that fails and a retry that
                             succeeds, or (one in four) an attempt that times out (StepTimeout,
                             step_id)
    usage                    a step emits two UsageEvents; resp.usage's totals and by_model
                             are checked exactly (async def and def)
  Every call checks its outcome (answer, error type, events, ref values, digests, usage);
  anything else counts as unexpected.

What it measures
  Every --sample-every calls (default 10,000, at most a tenth of the run) it waits until no
  call is in flight, on either side, then samples both processes: RSS, open fds, OS threads,
  Python threads and GC-tracked Python objects (after gc.collect()); on the peer also its live
  session refs and uploaded bytes (through the soak::stats step). The first sample is taken
  before any call.

How to read it
  The table is the curve, one row per sample; the row marked `*` is the reference: the first
  sample at or after --warmup (20%) of the calls, once allocator arenas, caches, thread pools
  and connection windows have settled. The verdict compares the last sample with it; the
  thresholds (and why) are the *_LIMIT / *_SLACK constants below:
    RSS             under 10% growth on each side
    Python objects  growth at most max(250, 0.5% of the reference) on each side
    OS threads      at most 2 (client) / 8 (peer) above the reference
    fds             back to the first sample's count (before any call) on each side
    refs            0 live session refs on the peer (both servers) and 0 uploaded bytes held
                    or reserved at the end
    runs            nothing in flight on the peer at the end, no unexpected outcome,
                    and the peer exits with status 0 on SIGTERM
  A leak grows with the calls: it shows as a column rising row after row, and the slope
  (per 10,000 calls) says how much each call leaves behind. `--kinds fail,ok` and the like
  run a subset of the mix to find which kind of call leaks. The exit status is 1 when the
  verdict fails, 2 on bad arguments or a peer that does not start.

--quick is the bounded CI form: 3,000 calls sampled every 500 (well under a minute).

Run: python benches/soak.py [--calls N] [--in-flight N] [--sample-every N] [--json FILE]
     python benches/soak.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _procs import spawn
from _soak_shared import (
    MAX_UPLOAD_BYTES,
    STREAM_EVENT_TYPE,
    digest,
    proc_figures,
    python_figures,
    ref_value,
    upload_value,
)
from blazen_peer import (
    Event,
    GenericEvent,
    PeerClient,
    PeerError,
    PeerTimeoutError,
    QuotaExceededError,
    RefLifetime,
    RefNotFoundError,
    RemoteRef,
    RunUsage,
    StopEvent,
    WorkflowError,
)

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024

# --- the verdict's thresholds ---

# The target: a process that runs for months cannot grow with its calls. 10% leaves
# room for allocator noise (arenas, fragmentation) while a leak of even 1 KiB per failing
# call grows a 200,000-call run's peer by ~30 MiB, several times more than this.
RSS_GROWTH_LIMIT = 0.10
# gc.get_objects() of a healthy process moves by a few dozen objects between drained samples
# (free lists, caches, the soak's own ~4 objects per sample). A leak of one object per failing
# call is 1,500 per 10,000 calls; the client's ref bookkeeping (about 27 refs per 100 calls)
# passes 250 within the 2,000 calls --quick watches after its warm-up. The relative part keeps
# a large heap's noise fair.
OBJECT_GROWTH_ABS = 250
OBJECT_GROWTH_REL = 0.005
# OS threads: the client's runtime keeps a fixed set (slack for one short-lived helper);
# the peer's def steps run on tokio's blocking pool, which grows on demand (up to 64) and
# lets a thread go after 10 s idle, so its size at a sample depends on the last seconds'
# burst of def steps. Threads stuck for good (a def step that never sees its cancellation)
# pile up to the pool's cap and pass the slack within a few samples.
CLIENT_THREAD_SLACK = 2
PEER_THREAD_SLACK = 8
# fds are exact: a drained process holds its listener / connection and nothing per call.
FD_SLACK = 0

# --- the calls ---

TIMEOUT_SECS = 30  # of every call that should end by itself; the runs take milliseconds
CALL_GUARD_SECS = 60.0  # a call still going after this counts as unexpected (a hang)
SLEEP_SECS = 30  # the sleeping steps, far past the timeouts and cancellation delays
STREAM_EVENTS = 10_000  # written by the streaming steps of the calls that close early
DRAIN_SECS = 15.0  # how long a sample waits for the peer's runs to end
HANG_SECS = 5.0  # the policy calls made to time out: past the steps' POLICY_TIMEOUT_SECS
# A broken peer must fail the run, not hang it for hours: once this many calls of one segment
# (between two samples) ended unexpectedly, no new call starts and the verdict fails. Isolated
# failures (a dropped connection fails the calls in flight, ~32) let the run go on.
STOP_AFTER_UNEXPECTED = 100
STOP_AFTER_UNEXPECTED_SHARE = 0.10

WORKFLOW = "soak"


class Unexpected(Exception):
    """A call ended otherwise than its kind expects."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Unexpected(what)


class Calls:
    """One method per kind of call; each raises Unexpected (or whatever the call raised)
    unless the call ended as expected."""

    def __init__(
        self, client: PeerClient, origin: PeerClient | None, ballast: int, seed: int
    ) -> None:
        self.client = client
        self.origin = origin  # to the peer process's second server (p2p); None without p2p
        self.ballast = ballast
        self.rng = random.Random(seed)
        # A kind's calls sit at fixed places of every block of 100, so a kind that varies
        # takes turns by how many calls of its kind came before, not by seq.
        self.turns: Counter[str] = Counter()
        # Past the peer's max_upload_bytes by itself; allocated once (it is never sent).
        self.over_quota = bytes(MAX_UPLOAD_BYTES + 1)

    def _turn(self, kind: str) -> int:
        self.turns[kind] += 1
        return self.turns[kind] - 1

    async def _run(
        self, step_id: str, data: dict[str, Any], timeout_secs: int = TIMEOUT_SECS
    ) -> Any:
        return await self.client.run_remote_workflow(WORKFLOW, [step_id], data, timeout_secs)

    async def ok(self, seq: int) -> None:
        got = await self._run("soak::ok", {"seq": seq})
        expect(got == {"seq": seq}, f"echoed {got!r}")

    async def ok_sync(self, seq: int) -> None:
        got = await self._run("soak::ok_sync", {"seq": seq})
        expect(got == {"seq": seq}, f"echoed {got!r}")

    async def stream(self, seq: int) -> None:
        events: list[Event] = []
        stream = self.client.stream_sub_workflow(WORKFLOW, ["soak::stream"], {"n": 3}, TIMEOUT_SECS)
        async for event in stream:
            events.append(event)
        expect(len(events) == 4, f"{len(events)} events instead of 3 and the StopEvent")
        for n, event in enumerate(events[:3]):
            expect(_is_tick(event, n), f"event {n} is {event!r}")
        last = events[-1]
        expect(isinstance(last, StopEvent) and last.result == {"written": 3}, f"ended {last!r}")

    async def _fail(self, step_id: str, seq: int) -> None:
        try:
            got = await self._run(step_id, {"seq": seq, "ballast": self.ballast})
        except PeerTimeoutError:
            raise
        except WorkflowError as exc:
            expect("planned failure" in str(exc), f"failed otherwise: {exc}")
        else:
            raise Unexpected(f"succeeded with {got!r}")

    async def fail(self, seq: int) -> None:
        await self._fail("soak::fail", seq)

    async def fail_sync(self, seq: int) -> None:
        await self._fail("soak::fail_sync", seq)

    async def _timeout(self, step_id: str) -> None:
        try:
            got = await self._run(step_id, {"secs": SLEEP_SECS}, timeout_secs=1)
        except PeerTimeoutError:
            return
        raise Unexpected(f"did not time out: {got!r}")

    async def timeout(self, seq: int) -> None:
        await self._timeout("soak::sleep")

    async def timeout_sync(self, seq: int) -> None:
        await self._timeout("soak::sleep_sync")

    async def _cancel(self, step_id: str) -> None:
        task = asyncio.create_task(self._run(step_id, {"secs": SLEEP_SECS}))
        # 0 cancels before the request leaves; a few ms, once the run started on the peer.
        await asyncio.sleep(self.rng.choice((0.0, 0.001, 0.005, 0.02)))
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            raise Unexpected(f"not cancelled: {task.exception() or task.result()!r}")

    async def cancel(self, seq: int) -> None:
        await self._cancel("soak::sleep")

    async def cancel_sync(self, seq: int) -> None:
        await self._cancel("soak::sleep_sync")

    async def _stream_close(self, step_id: str) -> None:
        wanted = self.rng.randint(1, 5)
        read = 0
        stream = self.client.stream_sub_workflow(
            WORKFLOW, [step_id], {"n": STREAM_EVENTS}, TIMEOUT_SECS
        )
        async with stream:
            async for event in stream:
                expect(_is_tick(event, read), f"event {read} is {event!r}")
                read += 1
                if read == wanted:
                    break
        expect(read == wanted, f"the stream ended after {read} of {wanted} events")

    async def stream_close(self, seq: int) -> None:
        await self._stream_close("soak::stream")

    async def stream_close_sync(self, seq: int) -> None:
        await self._stream_close("soak::stream_sync")

    async def _make_refs(self, seq: int, lifetimes: list[str]) -> dict[str, str]:
        """soak::refs with these lifetimes; checks that exactly the ones that outlive the run
        came back in remote_refs; returns {lifetime: key}."""
        response = await self.client.invoke_sub_workflow(
            WORKFLOW, ["soak::refs"], {"seq": seq, "seed": seq, "lifetimes": lifetimes},
            TIMEOUT_SECS,
        )  # fmt: skip
        expect(response.error is None, f"failed: {response.error}")
        keys: dict[str, str] = response.result
        listed = {str(key) for key in response.remote_refs}
        outliving = {keys[name] for name in lifetimes if name != "UNTIL_CONTEXT_DROP"}
        expect(listed == outliving, f"remote_refs {sorted(listed)}, expected {sorted(outliving)}")
        return keys

    async def _check_value(self, key: str, seq: int) -> None:
        value = await self.client.fetch_session_ref(key)
        expect(value == ref_value(seq), f"ref {key} holds {value!r:.60}")

    async def _release(self, key: str) -> None:
        released = await self.client.release_session_ref(key)
        expect(released, f"ref {key} was already gone when released")

    async def ref_explicit(self, seq: int) -> None:
        keys = await self._make_refs(seq, ["UNTIL_EXPLICIT_DROP", "UNTIL_CONTEXT_DROP"])
        key = keys["UNTIL_EXPLICIT_DROP"]
        await self._check_value(key, seq)
        await self._release(key)
        if seq % 4 == 0:
            try:
                await self.client.deref_session_ref(key)
            except RefNotFoundError:
                return
            raise Unexpected(f"ref {key} still there after its release")

    async def ref_parent(self, seq: int) -> None:
        lifetimes = ["UNTIL_PARENT_FINISH", "UNTIL_EXPLICIT_DROP", "UNTIL_CONTEXT_DROP"]
        async with self.client.parent_run():
            keys = await self._make_refs(seq, lifetimes)
            await self._check_value(keys["UNTIL_PARENT_FINISH"], seq)
            await self._release(keys["UNTIL_EXPLICIT_DROP"])
        # Leaving the block released UNTIL_PARENT_FINISH.

    async def ref_parent_release(self, seq: int) -> None:
        async with self.client.parent_run() as run:
            keys = await self._make_refs(seq, ["UNTIL_PARENT_FINISH"])
            await self._check_value(keys["UNTIL_PARENT_FINISH"], seq)
            await self._release(keys["UNTIL_PARENT_FINISH"])
        released = await self.client.finish_parent(run.id)
        expect(released == 0, f"finishing the parent again released {released} refs")

    async def ref_fail(self, seq: int) -> None:
        lifetimes = ["UNTIL_PARENT_FINISH", "UNTIL_EXPLICIT_DROP", "UNTIL_CONTEXT_DROP"]
        data = {"seq": seq, "seed": seq, "lifetimes": lifetimes, "fail": True}
        async with self.client.parent_run():
            response = await self.client.invoke_sub_workflow(
                WORKFLOW, ["soak::refs"], {**data, "ballast": self.ballast}, TIMEOUT_SECS
            )
        expect(response.error is not None, "succeeded")
        expect("planned failure" in str(response.error), f"failed otherwise: {response.error}")
        expect(not response.remote_refs, f"a failed run left refs {list(response.remote_refs)}")

    async def _upload_and_read(self, value: bytes | bytearray, **how: Any) -> RemoteRef:
        ref = await self.client.put_session_ref(value, **how)
        seen = await self._run("soak::digest", {"key": str(ref)})
        expect(seen == digest(value), f"upload {ref} read as {seen!r}, sent {digest(value)!r}")
        return ref

    async def upload(self, seq: int) -> None:
        turn = self._turn("upload")
        value = upload_value(seq) if turn % 2 else bytearray(upload_value(seq))
        if turn % 4 < 2:
            async with self.client.parent_run():
                await self._upload_and_read(value)
            # Leaving the block freed the upload.
            return
        ref = await self._upload_and_read(value, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        await self._release(str(ref))

    async def upload_quota(self, seq: int) -> None:
        try:
            if self._turn("upload_quota") % 2:
                ref = await self.client.put_session_ref(
                    self.over_quota, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP
                )
            else:
                async with self.client.parent_run():
                    ref = await self.client.put_session_ref(self.over_quota)
        except QuotaExceededError as exc:
            expect("max_upload_bytes" in str(exc), f"refused otherwise: {exc}")
            return
        await self.client.release_session_ref(ref.key)
        raise Unexpected(f"stored {len(self.over_quota):,} bytes past max_upload_bytes")

    async def p2p(self, seq: int) -> None:
        assert self.origin is not None, "p2p needs a client of the origin"
        async with self.origin.parent_run():
            response = await self.origin.invoke_sub_workflow(
                WORKFLOW, ["soak::refs"], {"seed": seq, "lifetimes": ["UNTIL_PARENT_FINISH"]},
                TIMEOUT_SECS,
            )  # fmt: skip
            expect(response.error is None, f"the origin failed: {response.error}")
            handle = response.remote_ref("UNTIL_PARENT_FINISH")
            seen = await self._run("soak::p2p", {"ref": handle})
        expect(seen == digest(ref_value(seq)), f"fetched {seen!r}")

    async def policy(self, seq: int) -> None:
        turn = self._turn("policy")
        step_id = "soak::policy_sync" if turn % 2 else "soak::policy"
        if turn % 8 < 6:
            # Fails its first attempt (Hiccup), retried once, succeeds.
            got = await self._run(step_id, {"seq": seq})
            expect(got == {"seq": seq}, f"echoed {got!r}")
            return
        # One in four times out, holding a slot for POLICY_TIMEOUT_SECS (limits the pace).
        try:
            got = await self._run(step_id, {"seq": seq, "hang": HANG_SECS})
        except WorkflowError as exc:
            expect(
                exc.failure_kind == "StepTimeout" and exc.step_id == step_id,
                f"failed otherwise: {exc.failure_kind} in {exc.step_id}: {exc}",
            )
            return
        raise Unexpected(f"did not time out: {got!r}")

    async def usage(self, seq: int) -> None:
        step_id = "soak::usage_sync" if self._turn("usage") % 2 else "soak::usage"
        n = seq % 1000 + 1
        # Costs in 1/1024 dollars add up exactly in floating point.
        records = [
            {
                "model": "soak-llm",
                "prompt_tokens": n,
                "completion_tokens": 2 * n,
                "total_tokens": 3 * n,
                "cost_usd": n / 1024,
            },
            {
                "model": "soak-embed",
                "modality": "Embedding",
                "prompt_tokens": 7,
                "total_tokens": 7,
                "cost_usd": 1 / 1024,
            },
        ]
        response = await self.client.invoke_sub_workflow(
            WORKFLOW, [step_id], {"usage": records}, TIMEOUT_SECS
        )
        expect(response.error is None and response.result == "used", f"ended {response!r:.200}")
        got: RunUsage = response.usage
        totals = (got.input_tokens, got.output_tokens, got.cost_usd)
        expect(totals == (n + 7, 2 * n, (n + 1) / 1024), f"usage totals {totals}")
        models = {
            (m.provider, m.model): (
                m.input_tokens,
                m.output_tokens,
                m.total_tokens,
                m.cost_usd,
                m.calls,
            )
            for m in got.by_model
        }
        wanted = {
            ("soak", "soak-llm"): (n, 2 * n, 3 * n, n / 1024, 1),
            ("soak", "soak-embed"): (7, 0, 7, 1 / 1024, 1),
        }
        expect(models == wanted, f"usage by model {models}")


def _is_tick(event: Event, n: int) -> bool:
    return (
        isinstance(event, GenericEvent)
        and event.event_type == STREAM_EVENT_TYPE
        and event.data == {"n": n}
    )


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    """Calls of this kind in every block of 100."""
    call: Callable[[Calls, int], Awaitable[None]]


KINDS = [
    Kind("ok", 30, Calls.ok),
    Kind("ok_sync", 9, Calls.ok_sync),
    Kind("stream", 2, Calls.stream),
    Kind("fail", 7, Calls.fail),
    Kind("fail_sync", 6, Calls.fail_sync),
    Kind("timeout", 1, Calls.timeout),
    Kind("timeout_sync", 1, Calls.timeout_sync),
    Kind("cancel", 3, Calls.cancel),
    Kind("cancel_sync", 2, Calls.cancel_sync),
    Kind("stream_close", 3, Calls.stream_close),
    Kind("stream_close_sync", 2, Calls.stream_close_sync),
    Kind("ref_explicit", 6, Calls.ref_explicit),
    Kind("ref_parent", 8, Calls.ref_parent),
    Kind("ref_parent_release", 5, Calls.ref_parent_release),
    Kind("ref_fail", 2, Calls.ref_fail),
    Kind("upload", 4, Calls.upload),
    Kind("upload_quota", 1, Calls.upload_quota),
    Kind("p2p", 3, Calls.p2p),
    Kind("policy", 2, Calls.policy),
    Kind("usage", 3, Calls.usage),
]
assert sum(kind.weight for kind in KINDS) == 100


# --- samples and the verdict ---


@dataclass(frozen=True)
class Figures:
    """One process at one moment."""

    rss: int
    fds: int
    threads: int
    py_threads: int
    objects: int

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Figures:
        return cls(raw["rss"], raw["fds"], raw["threads"], raw["py_threads"], raw["objects"])


@dataclass(frozen=True)
class Sample:
    calls: int
    seconds: float
    client: Figures
    peer: Figures
    refs: int
    """Live session refs on the peer (both of its servers)."""
    ref_bytes: int
    uploads: int
    """Bytes the peer holds or reserves for uploads, and uploads still arriving."""
    in_flight: int
    """Runs still going on the peer after DRAIN_SECS of waiting (should be 0)."""
    unexpected: int
    """Calls so far that ended otherwise than expected."""
    runs: dict[str, int]
    """The peer's ServerStats."""


@dataclass(frozen=True)
class Check:
    what: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Settings:
    calls: int
    in_flight: int
    sample_every: int
    warmup: float
    ballast_kib: int
    kinds: list[str]
    seed: int
    json_path: Path | None


class Soak:
    def __init__(self, client: PeerClient, origin: PeerClient | None, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.calls = Calls(client, origin, settings.ballast_kib * 1024, settings.seed)
        chosen = [kind for kind in KINDS if kind.name in settings.kinds]
        schedule = [kind for kind in chosen for _ in range(kind.weight)]
        random.Random(settings.seed).shuffle(schedule)
        self.schedule = schedule
        self.done: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.examples: list[str] = []  # the first few unexpected outcomes, word for word
        self.samples: list[Sample] = []
        self.started = time.perf_counter()
        self.stopped_early: str | None = None  # why the run ended before its last call
        self.segment_unexpected = 0

    def calls_made(self) -> int:
        return sum(self.done.values()) + sum(self.unexpected.values())

    async def run(self) -> None:
        """The calls, segment by segment, and a sample after each; a peer that cannot be
        reached for a sample, or too many unexpected outcomes, end the run early."""
        try:
            await self._run()
        except PeerError as exc:
            self.stopped_early = f"sampling failed: {type(exc).__name__}: {exc}"

    async def _run(self) -> None:
        total, every = self.settings.calls, self.settings.sample_every
        await self.sample(0)
        for start in range(0, total, every):
            end = min(start + every, total)
            seqs = iter(range(start, end))
            self.segment_unexpected = 0
            stop_at = max(STOP_AFTER_UNEXPECTED, int(STOP_AFTER_UNEXPECTED_SHARE * (end - start)))
            workers = (self.worker(seqs, stop_at) for _ in range(self.settings.in_flight))
            await asyncio.gather(*workers)
            sample = await self.sample(self.calls_made())
            rate = (end - start) / max(sample.seconds - self.samples[-2].seconds, 1e-9)
            progress(
                f"{end:,}/{total:,} calls ({rate:,.0f}/s incl. sampling), peer RSS "
                f"{sample.peer.rss / MIB:.1f} MiB, client RSS {sample.client.rss / MIB:.1f} MiB, "
                f"unexpected {sample.unexpected}"
            )
            if self.segment_unexpected >= stop_at:
                self.stopped_early = (
                    f"stopped: {self.segment_unexpected} unexpected outcomes since the last sample"
                )
                return

    async def worker(self, seqs: Iterator[int], stop_at: int) -> None:
        for seq in seqs:
            if self.segment_unexpected >= stop_at:
                return
            kind = self.schedule[seq % len(self.schedule)]
            try:
                async with asyncio.timeout(CALL_GUARD_SECS):
                    await kind.call(self.calls, seq)
            except Exception as exc:
                self.unexpected[kind.name] += 1
                self.segment_unexpected += 1
                if len(self.examples) < 10:
                    self.examples.append(f"call {seq} ({kind.name}): {type(exc).__name__}: {exc}")
            else:
                self.done[kind.name] += 1

    async def sample(self, calls: int) -> Sample:
        peer = await self.peer_figures()
        sample = Sample(
            calls=calls,
            seconds=time.perf_counter() - self.started,
            client=Figures.of({**proc_figures(), **python_figures()}),
            peer=Figures.of(peer),
            refs=peer["refs"],
            ref_bytes=peer["ref_bytes"],
            uploads=peer["upload_bytes"] + peer["uploads_in_progress"],
            in_flight=_in_flight(peer),
            unexpected=sum(self.unexpected.values()),
            runs=peer["runs"],
        )
        self.samples.append(sample)
        return sample

    async def peer_figures(self) -> dict[str, Any]:
        """soak::stats once the peer's runs have ended (cancelled and timed-out runs may
        still be winding down just after their callers gave up), or after DRAIN_SECS."""
        deadline = time.monotonic() + DRAIN_SECS
        while True:
            figures: dict[str, Any] = await self.client.run_remote_workflow(
                WORKFLOW, ["soak::stats"], {}, TIMEOUT_SECS
            )
            if _in_flight(figures) == 0 or time.monotonic() > deadline:
                return figures
            await asyncio.sleep(0.05)


def _in_flight(figures: dict[str, Any]) -> int:
    """Runs going on in the peer process, both servers, besides soak::stats itself."""
    return int(figures["runs"]["runs_in_flight"] - 1 + figures["origin_runs_in_flight"])


def reference_index(samples: list[Sample], settings: Settings) -> int:
    """The first sample at or after the warm-up (the last one, of a run that stopped early)."""
    warm = settings.warmup * settings.calls
    return next((i for i, s in enumerate(samples) if s.calls >= warm), len(samples) - 1)


def verdict(run: Soak, ref: int, peer_status: int | None) -> list[Check]:
    samples = run.samples
    first, warm, last = samples[0], samples[ref], samples[-1]
    unexpected = sum(run.unexpected.values())
    checks = [
        Check(
            f"all {run.settings.calls:,} calls made",
            run.stopped_early is None,
            f"{run.calls_made():,} made" + (f"; {run.stopped_early}" if run.stopped_early else ""),
        )
    ]
    for side in ("peer", "client"):
        f0: Figures = getattr(first, side)
        fw: Figures = getattr(warm, side)
        fl: Figures = getattr(last, side)
        growth = (fl.rss - fw.rss) / fw.rss
        checks.append(
            Check(
                f"{side} RSS growth after warm-up < {RSS_GROWTH_LIMIT:.0%}",
                growth < RSS_GROWTH_LIMIT,
                f"{fw.rss / MIB:.1f} -> {fl.rss / MIB:.1f} MiB ({growth:+.1%})",
            )
        )
        limit = max(OBJECT_GROWTH_ABS, int(OBJECT_GROWTH_REL * fw.objects))
        checks.append(
            Check(
                f"{side} Python objects flat (growth <= {limit:,})",
                fl.objects - fw.objects <= limit,
                f"{fw.objects:,} -> {fl.objects:,} ({fl.objects - fw.objects:+,})",
            )
        )
        slack = PEER_THREAD_SLACK if side == "peer" else CLIENT_THREAD_SLACK
        checks.append(
            Check(
                f"{side} OS threads flat (at most +{slack})",
                fl.threads <= fw.threads + slack,
                f"{fw.threads} -> {fl.threads} (Python threads {fw.py_threads} -> {fl.py_threads})",
            )
        )
        checks.append(
            Check(
                f"{side} fds back to baseline",
                fl.fds <= f0.fds + FD_SLACK,
                f"{f0.fds} before any call, {fw.fds} after warm-up, {fl.fds} at the end",
            )
        )
    checks += [
        Check(
            "0 live refs on the peer at the end",
            last.refs == 0,
            f"{last.refs:,} refs, {last.ref_bytes:,} bytes (most at a sample: "
            f"{max(s.refs for s in samples):,})",
        ),
        Check(
            "0 uploaded bytes held on the peer at the end",
            last.uploads == 0,
            f"{last.uploads:,} (most at a sample: {max(s.uploads for s in samples):,})",
        ),
        Check("0 runs in flight on the peer at the end", last.in_flight == 0, f"{last.in_flight}"),
        Check("every call ended as expected", not unexpected, f"{unexpected:,} did not"),
        Check(
            "the peer exits with status 0 on SIGTERM",
            peer_status == 0,
            "did not exit in time" if peer_status is None else f"status {peer_status}",
        ),
    ]
    return checks


# --- output ---


def progress(message: str) -> None:
    """Where the run is, on stderr: stdout carries only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(samples: list[Sample], ref: int) -> str:
    head = (
        "calls", "s", "client MiB", "fds", "thr", "objects",
        "peer MiB", "fds", "thr", "objects", "refs", "in flight", "unexpected",
    )  # fmt: skip
    rows = [
        (
            f"{s.calls:,}{' *' if i == ref else ''}",
            f"{s.seconds:.0f}",
            f"{s.client.rss / MIB:.1f}",
            str(s.client.fds),
            str(s.client.threads),
            f"{s.client.objects:,}",
            f"{s.peer.rss / MIB:.1f}",
            str(s.peer.fds),
            str(s.peer.threads),
            f"{s.peer.objects:,}",
            f"{s.refs:,}",
            str(s.in_flight),
            f"{s.unexpected:,}",
        )
        for i, s in enumerate(samples)
    ]
    widths = [max(len(row[c]) for row in (head, *rows)) for c in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))

    # Columns 2-5 are the client's, 6-9 the peer's.
    client_at = sum(widths[:2]) + 2 * 3
    peer_at = sum(widths[:6]) + 6 * 3
    over = " " * client_at + "client".ljust(peer_at - client_at) + "peer"
    return "\n".join(
        [over, line(head), "-+-".join("-" * width for width in widths), *map(line, rows)]
    )


def slopes(samples: list[Sample], ref: int) -> str:
    """Growth per 10,000 calls from the reference sample to the last one."""
    warm, last = samples[ref], samples[-1]
    per = 10_000 / max(last.calls - warm.calls, 1)
    parts = []
    for side in ("client", "peer"):
        fw: Figures = getattr(warm, side)
        fl: Figures = getattr(last, side)
        parts.append(
            f"{side} {(fl.rss - fw.rss) * per / MIB:+.2f} MiB, "
            f"{(fl.objects - fw.objects) * per:+,.0f} objects"
        )
    return "growth per 10,000 calls after warm-up: " + "; ".join(parts)


def outcomes(soak: Soak) -> str:
    names = [kind.name for kind in KINDS if kind.name in soak.settings.kinds]
    counted = ", ".join(
        f"{name} {soak.done[name]:,}" + (f" (+{soak.unexpected[name]:,} unexpected)"
                                          if soak.unexpected[name] else "")
        for name in names
    )  # fmt: skip
    lines = [f"calls as expected: {counted}"]
    lines += [f"  unexpected: {example}" for example in soak.examples]
    return "\n".join(lines)


# --- running it ---


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI form: 3,000 calls, every 500")
    parser.add_argument("--calls", type=int, help="calls in all (default 200,000)")
    parser.add_argument("--in-flight", type=int, default=32, help="calls at once (default 32)")
    parser.add_argument("--sample-every", type=int, help="calls between samples")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction before the reference")
    parser.add_argument("--ballast-kib", type=int, default=64, help="held by each failing step")
    parser.add_argument("--kinds", help="comma-separated subset of the mix: " + ", ".join(
        kind.name for kind in KINDS))  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the samples and verdict here")
    args = parser.parse_args()

    calls = args.calls if args.calls is not None else (3_000 if args.quick else 200_000)
    every = args.sample_every or (500 if args.quick else min(10_000, max(1, calls // 10)))
    names = [kind.name for kind in KINDS]
    kinds = names if args.kinds is None else [k.strip() for k in args.kinds.split(",")]
    unknown = sorted(set(kinds) - set(names))
    if unknown:
        parser.error(f"unknown kinds {unknown}; the mix has {', '.join(names)}")
    if min(calls, args.in_flight, every) <= 0 or args.ballast_kib < 0:
        parser.error("--calls, --in-flight and --sample-every must be positive")
    if not 0 <= args.warmup < 1:
        parser.error("--warmup is a fraction of the calls, from 0 up to (not including) 1")
    settings = Settings(
        calls, args.in_flight, every, args.warmup, args.ballast_kib, kinds, args.seed, args.json
    )
    checkpoints = [*range(0, calls, every), calls]
    if sum(1 for c in checkpoints if c >= args.warmup * calls) < 2:
        parser.error("no sample after the warm-up's: raise --calls or lower --sample-every")
    return settings


def stop_peer(proc: subprocess.Popen[str]) -> int | None:
    """SIGTERM (a graceful stop), then its exit status; None if it had to be killed."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


async def soak(settings: Settings, address: str, origin_address: str) -> Soak:
    client = await PeerClient.connect(f"http://{address}", node_id="soak-client")
    origin = None
    try:
        if "p2p" in settings.kinds:
            origin = await PeerClient.connect(f"http://{origin_address}", node_id="soak-client")
        run = Soak(client, origin, settings)
        await run.run()
    finally:
        await client.close()
        if origin is not None:
            await origin.close()
    return run


def main() -> int:
    settings = parse_args()
    progress(
        f"soak: {settings.calls:,} calls, {settings.in_flight} in flight, sampled every "
        f"{settings.sample_every:,}; mix: {', '.join(settings.kinds)}"
    )
    proc, addresses = spawn(str(HERE / "_soak_peer.py"))
    address, origin_address = addresses.split()
    try:
        run = asyncio.run(soak(settings, address, origin_address))
    finally:
        status = stop_peer(proc)

    samples = run.samples
    if not samples:
        print(f"soak FAILED: no sample taken; {run.stopped_early}")
        return 1
    ref = reference_index(samples, settings)
    checks = verdict(run, ref, status)
    passed = all(check.passed for check in checks)
    last = samples[-1].runs
    print(table(samples, ref))
    print(f"\n* reference sample (first at or after {settings.warmup:.0%} of the calls)")
    print(slopes(samples, ref))
    print(outcomes(run))
    print("peer runs: " + ", ".join(f"{k.removeprefix('runs_')} {v:,}" for k, v in last.items()))
    print("\nverdict:")
    for check in checks:
        print(f"  {'ok  ' if check.passed else 'FAIL'} {check.what}: {check.detail}")
    print(f"\nsoak {'PASSED' if passed else 'FAILED'}")
    if settings.json_path is not None:
        report = {
            "settings": {**asdict(settings), "json_path": str(settings.json_path)},
            "reference_sample": ref,
            "samples": [asdict(sample) for sample in samples],
            "done": dict(run.done),
            "unexpected": dict(run.unexpected),
            "unexpected_examples": run.examples,
            "checks": [asdict(check) for check in checks],
            "passed": passed,
        }
        settings.json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"saved: {settings.json_path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
