"""The latency, throughput, load, chain and deref figures in one run, each against its
baseline measured alongside.

Every server runs in its own process on loopback; the client is this process.
  latency     sequential calls, p50/p90/p99 of: a raw TCP 64-byte ping-pong (the floor),
              grpcio asyncio unary with the same trivial step and payload, Pyro5, the
              published Rust crate (blazen-peer 0.7.0) client -> its server with a Rust
              echo step, its client -> ours, ours -> its server, and ours -> ours
              (run_remote_workflow, one trivial async step)
  throughput  64 calls in flight from one client process for a few seconds: grpcio,
              Pyro5 (a thread and connection per call in flight), the Rust crate, ours
  load        ours against a peer holding 100,000 live session refs, and against one with
              1,000 more registered steps, next to the plain peer ("unchanged": within 10%)
  chain       one 10-step workflow (step i emits the event step i+1 accepts) next to
              10 one-step calls made one after another
  deref       (--deref, or a small value in --quick) a 1 GiB session ref fetched into a
              fresh process next to raw loopback TCP, and the receiver's peak RSS: see
              deref_throughput.py. Takes a while and needs about 3 GiB of RAM.
The latency targets take turns in slices (--rounds) so that noise on this machine lands
on all of them alike. Prints markdown tables and saves them to benches/results/<date>.md
with a chart, benches/results/latency_throughput.png (needs matplotlib: the bench extra),
keeps the figures as benches/results/records/<time>.json and prints how they changed
since the previous record, so a regression shows in the next run.

--quick is the CI smoke test: few calls, checks every path returns the right answers,
writes to a temporary directory, judges no timings; exits non-zero only when a call
returned a wrong answer or a helper failed.

Run: python benches/run_all.py [--deref] [--calls N]     |     python benches/run_all.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import _chart
import _records
import deref_throughput
from _measure import Call, CorrectnessError, Latency, latency, throughput
from _peer_calls import PeerCalls
from _procs import serving, serving_command
from _pyro_calls import PyroCalls
from _report import Row, Target, latency_table, markdown, micros, targets_table
from _rust_crate import OUR_ECHO, RUST_ECHO, RustClient
from _rust_crate import binary as rust_binary
from _tcp_floor import TcpFloor
from grpc_baseline import GrpcCalls

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024

FLOOR = "raw TCP floor"
GRPC = "grpcio asyncio"
OURS = "blazen-peer"
OURS_REFS = "blazen-peer, {refs:,} live refs"
OURS_STEPS = "blazen-peer, {steps:,} more steps"
CHAIN = "10-step workflow"
TEN_CALLS = "10 one-step calls"
PYRO = "Pyro5"
RUST = "Rust crate -> Rust crate"
RUST_TO_OURS = "Rust crate client -> ours"
OURS_TO_RUST = "ours -> Rust crate server"

RateOf = Callable[[float], Awaitable[float]]


@dataclass(frozen=True)
class Settings:
    quick: bool
    calls: int
    chain_calls: int
    rounds: int
    in_flight: int
    throughput_secs: float
    throughput_rounds: int
    refs: int
    extra_steps: int
    deref_mib: int | None
    deref_repeat: int
    out_dir: Path


@dataclass(frozen=True)
class Deref:
    size: int
    deref_seconds: float
    into_seconds: float
    tcp_seconds: float
    tcp_fresh_seconds: float
    receiver_peak: int


def progress(message: str) -> None:
    """Where the run is, on stderr: stdout carries only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke test (see above)")
    parser.add_argument("--calls", type=int, help="sequential calls per latency target")
    parser.add_argument("--rounds", type=int, default=10, help="slices the targets alternate in")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--throughput-secs", type=float, help="per throughput measurement")
    parser.add_argument("--throughput-rounds", type=int, help="alternations grpcio/ours")
    parser.add_argument("--refs", type=int, help="live session refs in the loaded peer")
    parser.add_argument("--extra-steps", type=int, help="more registered steps in the other")
    parser.add_argument("--deref", action="store_true", help="also the 1 GiB deref figures")
    parser.add_argument("--deref-mib", type=int, help="value size for the deref")
    parser.add_argument("--deref-repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where results go (default benches/results)")
    args = parser.parse_args()

    quick = args.quick

    def pick(value: int | float | None, full: int | float, smoke: int | float) -> float:
        return value if value is not None else (smoke if quick else full)

    calls = int(pick(args.calls, 3000, 50))
    deref_mib = None
    if args.deref or quick:
        # The quick mode always checks the deref path too, on a value small enough for CI.
        deref_mib = args.deref_mib or (16 if quick else 1024)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="blazen-bench-")) if quick else None)
    settings = Settings(
        quick=quick,
        calls=calls,
        chain_calls=max(10, calls // 5),  # each sample is ten calls' worth of work
        rounds=max(1, min(args.rounds, calls // 10)),
        in_flight=args.in_flight,
        throughput_secs=pick(args.throughput_secs, 3.0, 0.3),
        throughput_rounds=int(pick(args.throughput_rounds, 3, 1)),
        refs=int(pick(args.refs, 100_000, 1_000)),
        extra_steps=int(pick(args.extra_steps, 1_000, 50)),
        deref_mib=deref_mib,
        deref_repeat=1 if quick else args.deref_repeat,
        out_dir=out_dir or HERE / "results",
    )
    if min(settings.calls, settings.in_flight, settings.throughput_rounds) <= 0:
        parser.error("--calls, --in-flight and --throughput-rounds must be positive")
    return settings


async def measure_calls(settings: Settings) -> tuple[dict[str, Latency], dict[str, list[float]]]:
    """Latency of every target, then throughput of grpcio and ours, all servers up at once
    (idle ones cost nothing measurable) so the targets can alternate."""
    peer = str(HERE / "_noop_peer.py")
    progress("building the Rust baseline" if not settings.quick else "starting the servers")
    rust = str(rust_binary(settings.quick))
    progress("starting the servers")
    with contextlib.ExitStack() as servers:
        echo_port = servers.enter_context(serving(str(HERE / "_echo_server.py")))
        grpc_address = servers.enter_context(serving(str(HERE / "_grpc_server.py")))
        pyro_uri = servers.enter_context(serving(str(HERE / "_pyro_server.py")))
        rust_address = servers.enter_context(serving_command([rust, "serve"], "LISTENING "))
        plain = servers.enter_context(serving(peer))
        loaded_refs = servers.enter_context(serving(peer, "--refs", str(settings.refs)))
        loaded_steps = servers.enter_context(
            serving(peer, "--extra-steps", str(settings.extra_steps))
        )
        async with contextlib.AsyncExitStack() as clients:
            floor = TcpFloor(int(echo_port))
            clients.callback(floor.close)
            grpc = await GrpcCalls.connect(grpc_address)
            ours = await PeerCalls.connect(plain)
            with_refs = await PeerCalls.connect(loaded_refs)
            with_steps = await PeerCalls.connect(loaded_steps)
            to_rust = await PeerCalls.connect(rust_address, RUST_ECHO)
            pyro = PyroCalls(pyro_uri)
            for client in (grpc, ours, with_refs, with_steps, to_rust, pyro):
                clients.push_async_callback(client.close)
            rust_client = RustClient(Path(rust), rust_address, RUST_ECHO[0])
            rust_to_ours = RustClient(Path(rust), plain, OUR_ECHO)

            calls = settings.calls
            progress(f"latency: {calls:,} sequential calls per target")
            latencies = await latency(
                {
                    FLOOR: (floor.call, calls),
                    GRPC: (grpc.call, calls),
                    PYRO: (pyro.call, calls),
                    RUST: (rust_client, calls),
                    RUST_TO_OURS: (rust_to_ours, calls),
                    OURS_TO_RUST: (to_rust.call, calls),
                    OURS: (ours.call, calls),
                    OURS_REFS.format(refs=settings.refs): (with_refs.call, calls),
                    OURS_STEPS.format(steps=settings.extra_steps): (with_steps.call, calls),
                    CHAIN: (ours.chain, settings.chain_calls),
                    TEN_CALLS: (ours.ten_calls, settings.chain_calls),
                },
                settings.rounds,
            )
            progress(f"throughput: {settings.in_flight} calls in flight")
            n = settings.in_flight
            rates = await measure_throughput(
                settings,
                {
                    GRPC: in_flight_of(grpc.call, n),
                    PYRO: lambda secs: asyncio.to_thread(pyro.throughput, n, secs),
                    RUST: lambda secs: rust_client.throughput(n, secs),
                    RUST_TO_OURS: lambda secs: rust_to_ours.throughput(n, secs),
                    OURS: in_flight_of(ours.call, n),
                },
            )
    return latencies, rates


def in_flight_of(call: Call, in_flight: int) -> RateOf:
    return lambda seconds: throughput(call, in_flight, seconds)


async def measure_throughput(
    settings: Settings, rate_of: dict[str, RateOf]
) -> dict[str, list[float]]:
    """Calls/s of each, taking turns, after a warm-up that fills every connection's
    windows and the servers' task pools."""
    rates: dict[str, list[float]] = {name: [] for name in rate_of}
    for measure in rate_of.values():
        await measure(min(0.5, settings.throughput_secs))
    for _ in range(settings.throughput_rounds):
        for name, measure in rate_of.items():
            rates[name].append(await measure(settings.throughput_secs))
    return rates


def measure_deref(size_mib: int, repeat: int) -> Deref:
    """deref_throughput.py's two measurements (each checks every byte it receives)."""
    size = size_mib * MIB
    progress(f"deref: {size_mib:,} MiB, {repeat} repetitions")
    tcp = deref_throughput.tcp_floor(size, repeat)
    measured = deref_throughput.deref_runs(size, repeat)
    runs = measured["runs"]
    return Deref(
        size=size,
        deref_seconds=min(run["seconds"] for run in runs),
        into_seconds=min(measured["into"]),
        tcp_seconds=min(tcp["floor"]),
        tcp_fresh_seconds=min(tcp["fresh"]),
        receiver_peak=max(run["client_hwm"] for run in runs),
    )


def target_rows(
    settings: Settings,
    latencies: dict[str, Latency],
    rates: dict[str, list[float]],
    deref: Deref | None,
) -> list[Row]:
    floor, ours, rust, pyro = latencies[FLOOR], latencies[OURS], latencies[RUST], latencies[PYRO]
    rust_rate = statistics.median(rates[RUST])
    with_refs = latencies[OURS_REFS.format(refs=settings.refs)]
    with_steps = latencies[OURS_STEPS.format(steps=settings.extra_steps)]
    chain, ten_calls = latencies[CHAIN], latencies[TEN_CALLS]
    ours_rate, grpc_rate = statistics.median(rates[OURS]), statistics.median(rates[GRPC])
    rows = [
        Row("round trip p50 (vs raw TCP)", micros(ours.p50), micros(floor.p50),
            ours.p50 / floor.p50, Target("<=", 2)),
        Row("round trip p99 (vs raw TCP)", micros(ours.p99), micros(floor.p99),
            ours.p99 / floor.p99, Target("<=", 4)),
        Row("round trip p50 (vs the Rust crate)", micros(ours.p50), micros(rust.p50),
            ours.p50 / rust.p50, Target("<=", 1.0)),
        Row("round trip p99 (vs the Rust crate)", micros(ours.p99), micros(rust.p99),
            ours.p99 / rust.p99, Target("<=", 1.5)),
        Row("round trip p50 (vs Pyro5)", micros(ours.p50), micros(pyro.p50),
            ours.p50 / pyro.p50, Target("<", 1.0)),
        Row(f"throughput, {settings.in_flight} in flight (vs the Rust crate)",
            f"{ours_rate:,.0f}/s", f"{rust_rate:,.0f}/s", ours_rate / rust_rate,
            Target(">=", 1.5)),
        Row(f"throughput, {settings.in_flight} in flight (vs grpcio)", f"{ours_rate:,.0f}/s",
            f"{grpc_rate:,.0f}/s", ours_rate / grpc_rate, Target(">=", 5)),
        Row(f"p50 with {settings.refs:,} live refs (vs none)", micros(with_refs.p50),
            micros(ours.p50), with_refs.p50 / ours.p50, Target("<=", 1.1)),
        Row(f"p50 with {settings.extra_steps:,} more steps (vs none)", micros(with_steps.p50),
            micros(ours.p50), with_steps.p50 / ours.p50, Target("<=", 1.1)),
        Row("10-step workflow p50 (vs 10 one-step calls)", micros(chain.p50),
            micros(ten_calls.p50), chain.p50 / ten_calls.p50, Target("<", 1)),
    ]  # fmt: skip
    if deref is not None:
        mib = deref.size // MIB
        deref_rate, tcp_rate = deref.size / deref.deref_seconds, deref.size / deref.tcp_seconds
        into_rate = deref.size / deref.into_seconds
        fresh_rate = deref.size / deref.tcp_fresh_seconds
        rows += [
            Row(f"deref_into {mib:,} MiB, reused buffer, best MB/s (vs raw TCP recv_into reused)",
                f"{into_rate / 1e6:,.0f}", f"{tcp_rate / 1e6:,.0f}", into_rate / tcp_rate,
                Target(">=", 0.8)),
            Row(f"deref {mib:,} MiB into new bytes, best MB/s (vs raw TCP into fresh memory)",
                f"{deref_rate / 1e6:,.0f}", f"{fresh_rate / 1e6:,.0f}", deref_rate / fresh_rate,
                Target(">=", 1)),
            Row(f"receiver peak RSS, deref {mib:,} MiB (vs value)",
                f"{deref.receiver_peak / MIB:,.0f} MiB", f"{mib:,} MiB",
                deref.receiver_peak / deref.size, Target("<", 1.3)),
        ]  # fmt: skip
    return rows


def throughput_table(settings: Settings, rates: dict[str, list[float]]) -> str:
    return markdown(
        (f"throughput, {settings.in_flight} in flight", "median calls/s", "each round"),
        (
            (name, f"{statistics.median(values):,.0f}", ", ".join(f"{v:,.0f}" for v in values))
            for name, values in rates.items()
        ),
    )


def environment(settings: Settings, load_before: float, seconds: float) -> str:
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"- commit {commit or 'unknown'}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs; {platform.platform()}\n"
        f"- load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
        f"took {seconds:.0f} s\n"
        f"- {settings.calls:,} sequential calls per target in {settings.rounds} alternating "
        f"slices ({settings.chain_calls:,} for the 10-step rows); throughput "
        f"{settings.throughput_rounds} x {settings.throughput_secs:g} s each"
    )


def main() -> int:
    settings = parse_args()
    chart_problem = _chart.have_matplotlib()
    if chart_problem is not None and not settings.quick:
        print(f"error: {chart_problem} (only --quick runs without it)", file=sys.stderr)
        return 2
    load_before, started = os.getloadavg()[0], time.perf_counter()
    try:
        latencies, rates = asyncio.run(measure_calls(settings))
        deref = None
        if settings.deref_mib is not None:
            deref = measure_deref(settings.deref_mib, settings.deref_repeat)
    except CorrectnessError as exc:
        print(f"error: a measured call was wrong: {exc}", file=sys.stderr)
        return 1

    title = "quick smoke run: timings not meaningful" if settings.quick else "full run"
    report = "\n\n".join(
        (
            f"# blazen-peer benchmarks, {datetime.date.today()} ({title})",
            environment(settings, load_before, time.perf_counter() - started),
            targets_table(target_rows(settings, latencies, rates, deref), not settings.quick),
            latency_table(latencies),
            throughput_table(settings, rates),
        )
    )
    record = _records.Record.of(latencies, {n: statistics.median(v) for n, v in rates.items()})
    changes = _records.save_and_compare(settings.out_dir / "records", record)
    report += f"\n\n{changes}"
    print(report)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    saved = settings.out_dir / f"{datetime.date.today()}.md"
    chart = settings.out_dir / "latency_throughput.png"
    if chart_problem is None:
        # The chart leaves out the 10-step rows: ten calls' worth, they would squash the rest.
        shown = {n: m for n, m in latencies.items() if n not in (CHAIN, TEN_CALLS)}
        _chart.save(chart, shown, {n: statistics.median(v) for n, v in rates.items()})
        report += f"\n\n![latency and throughput]({chart.name})\n"
        print(f"\nchart: {chart}")
    else:
        print(f"\nno chart: {chart_problem}")
    saved.write_text(report + "\n")
    print(f"saved: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
