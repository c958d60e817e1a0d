"""Timing loops shared by the benchmarks: sequential latency and calls in flight.

A call is an async function of a sequence number that makes one request and checks its
answer (raising CorrectnessError on a wrong one), so every sample is of a correct call.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

Call = Callable[[int], Awaitable[None]]


class Slices(Protocol):
    """A target timed by another process (the Rust crate's client): it times a slice
    of sequential calls after its own warm-up and returns the seconds of each."""

    async def samples(self, calls: int) -> list[float]: ...


class CorrectnessError(RuntimeError):
    """A measured call returned something other than what it should have."""


def payload(seq: int) -> dict[str, Any]:
    """The input of every echo call: small (about 60 bytes of JSON, near the TCP
    floor's 64 bytes) and different per call, so a stale or crossed answer shows."""
    return {"i": seq, "pad": "x" * 40}


def check_echo(seq: int, got: Any) -> None:
    if got != payload(seq):
        raise CorrectnessError(f"call {seq} echoed {got!r}, expected {payload(seq)!r}")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Latency:
    """Seconds per call, in the order measured."""

    samples: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples, 0.50)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 0.90)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


async def latency(targets: dict[str, tuple[Call | Slices, int]], rounds: int) -> dict[str, Latency]:
    """Times each target's calls one after another (``count`` of them, after a warm-up of a
    tenth as many). The targets take turns in ``rounds`` slices, so a noisy neighbour or a
    CPU clock change spreads over all of them instead of skewing whichever ran then."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    seq = 0
    for call, count in targets.values():
        if callable(call):
            for _ in range(max(10, count // 10)):
                await call(seq)
                seq += 1
    for round_index in range(rounds):
        for name, (call, count) in targets.items():
            # Slices of (nearly) equal size adding up to exactly count.
            size = count * (round_index + 1) // rounds - count * round_index // rounds
            if not callable(call):
                samples[name] += await call.samples(size)
                continue
            for _ in range(size):
                start = time.perf_counter()
                await call(seq)
                samples[name].append(time.perf_counter() - start)
                seq += 1
    return {name: Latency(values) for name, values in samples.items()}


async def throughput(call: Call, in_flight: int, seconds: float) -> float:
    """Calls per second with ``in_flight`` calls outstanding at all times (one task each,
    each starting its next call as soon as its last returns), over ``seconds``."""
    completed = 0
    next_seq = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal completed, next_seq
        while time.perf_counter() < deadline:
            seq, next_seq = next_seq, next_seq + 1
            await call(seq)
            completed += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    # The last calls finish after the deadline: divide by the time they really took.
    return completed / (time.perf_counter() - start)
