"""One JSON record per benchmark run under benches/results/records/, and the change
since the previous one: a regression shows in the next run of the benchmark, not as a
timing assertion in the tests. Compare records of one machine only: absolute figures
differ between machines (which is why each row of the report is a ratio)."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from _measure import Latency
from _report import markdown

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Record:
    taken_at: str
    commit: str
    p50_us: dict[str, float]
    p99_us: dict[str, float]
    calls_per_s: dict[str, float]

    @staticmethod
    def of(latencies: Mapping[str, Latency], rates: Mapping[str, float]) -> Record:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
        return Record(
            taken_at=datetime.datetime.now().isoformat(timespec="seconds"),
            commit=commit or "unknown",
            p50_us={name: round(m.p50 * 1e6, 1) for name, m in latencies.items()},
            p99_us={name: round(m.p99 * 1e6, 1) for name, m in latencies.items()},
            calls_per_s={name: round(rate) for name, rate in rates.items()},
        )


def save_and_compare(directory: Path, record: Record) -> str:
    """Saves ``record`` next to the earlier ones; returns a markdown table of what
    changed since the latest of those."""
    directory.mkdir(parents=True, exist_ok=True)
    earlier = sorted(directory.glob("*.json"))
    path = directory / f"{record.taken_at.replace(':', '')}.json"
    path.write_text(json.dumps(asdict(record), indent=1) + "\n")
    if not earlier:
        return f"First record: {path.name} (the next run shows the change from it)."
    previous = Record(**json.loads(earlier[-1].read_text()))
    rows = [
        (f"{name}, {figure}", _fmt(before), _fmt(now), _change(before, now))
        for figure, new, old in (
            ("p50 µs", record.p50_us, previous.p50_us),
            ("p99 µs", record.p99_us, previous.p99_us),
            ("calls/s", record.calls_per_s, previous.calls_per_s),
        )
        for name, now in new.items()
        if (before := old.get(name)) is not None
    ]
    title = (
        f"Change since the previous record ({earlier[-1].name}, {previous.commit}; "
        f"this one {path.name}, {record.commit})"
    )
    return title + "\n\n" + markdown(("figure", "before", "now", "change"), rows)


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def _change(before: float, now: float) -> str:
    return "n/a" if before == 0 else f"{(now - before) / before:+.1%}"
