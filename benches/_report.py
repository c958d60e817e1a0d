"""The markdown tables run_all.py prints and saves."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from _measure import Latency

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Target:
    """A bound on a ratio (ours / baseline): one of the performance targets."""

    op: str
    bound: float

    def met(self, ratio: float) -> bool:
        return _COMPARISONS[self.op](ratio, self.bound)

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}x"


@dataclass(frozen=True)
class Row:
    metric: str
    ours: str
    baseline: str
    ratio: float
    target: Target


def markdown(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(rows: list[Row], judged: bool) -> str:
    """One line per target figure; with ``judged`` False (quick mode: too few calls to
    mean anything) the verdict column says so instead of met/missed."""

    def verdict(row: Row) -> str:
        if not judged:
            return "not judged (quick)"
        return "met" if row.target.met(row.ratio) else "**missed**"

    return markdown(
        ("metric", "ours", "baseline", "ratio", "target", "met/missed"),
        (
            (r.metric, r.ours, r.baseline, f"{r.ratio:.2f}x", str(r.target), verdict(r))
            for r in rows
        ),
    )


def latency_table(results: dict[str, Latency]) -> str:
    return markdown(
        ("round trip", "p50 µs", "p90 µs", "p99 µs", "mean µs", "calls"),
        (
            (
                name,
                *(f"{value * 1e6:.1f}" for value in (m.p50, m.p90, m.p99, m.mean)),
                str(len(m.samples)),
            )
            for name, m in results.items()
        ),
    )


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"
