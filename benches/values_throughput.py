"""Values both ways: an upload next to raw TCP, and peer-to-peer against through-the-parent.

Measured in this one run, between processes on loopback:
  floor:    raw TCP bulk transfer of the same size (deref_throughput.tcp_floor: a
            1 MiB buffer sent again and again, and the whole value into fresh memory,
            whose first-touch page faults the receiving peer pays too)
  upload:   client.put_session_ref of a --size-mib bytearray from this process to a
            peer, with the peer's peak RSS during each upload
  p2p:      peer B's step fetches a --size-mib ref held by peer A from A directly
            (ctx.session_refs.fetch), the parent sending only the handle
  parent:   the same value through the parent: deref from A, upload to B, B's step
            reads it (what one does without peer-to-peer refs)

Targets (issue 19): upload at least 0.8x the raw TCP floor, and at least as fast as raw TCP
into fresh memory (what the peer receives into); receiver peak RSS under 1.3x the value;
peer-to-peer faster than through the parent. --quick judges none of them.

Run: python benches/values_throughput.py [--size-mib N] [--repeat N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import deref_throughput
from _procs import spawn, stop
from _ref_peer_common import filled
from blazen_peer import PeerClient, RefLifetime

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
EXPLICIT = RefLifetime.UNTIL_EXPLICIT_DROP


@dataclass
class Values:
    """Best seconds of each path, and the receiver's peak RSS in an upload."""

    size: int
    tcp_floor: float
    tcp_fresh: float
    upload: float
    upload_median: float
    receiver_peak: int
    p2p: float
    through_parent: float


async def uploads(address: str, size: int, repeat: int) -> tuple[list[float], int]:
    """Seconds per upload of ``size`` bytes, and the peer's peak RSS over them."""
    value = filled(size)
    seconds, peak = [], 0
    async with await PeerClient.connect(address, node_id="bench") as client:
        for _ in range(repeat):
            await client.run_remote_workflow("b", ["values::hwm"], {"reset": True})
            start = time.perf_counter()
            ref = await client.put_session_ref(value, lifetime=EXPLICIT)
            seconds.append(time.perf_counter() - start)
            measured = await client.run_remote_workflow("b", ["values::hwm"], {})
            peak = max(peak, int(measured["hwm"]))
            if await client.run_remote_workflow("b", ["values::get"], {"key": str(ref)}) != size:
                raise SystemExit("the peer read an upload of the wrong size")
            await client.release_session_ref(ref.key)
    return seconds, peak


async def between_peers(a: str, b: str, size: int, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds for B's step to hold A's value: fetched from A, or sent through the parent."""
    p2p, through_parent = [], []
    async with (
        await PeerClient.connect(a, node_id="bench") as client_a,
        await PeerClient.connect(b, node_id="bench") as client_b,
    ):
        response = await client_a.invoke_sub_workflow("a", ["values::make"], {"size": size})
        ref = response.remote_ref(response.result)
        for _ in range(repeat):
            start = time.perf_counter()
            got = await client_b.run_remote_workflow("b", ["values::fetch"], {"ref": ref})
            p2p.append(time.perf_counter() - start)
            start = time.perf_counter()
            raw = await client_a.deref_session_ref(ref.key)
            uploaded = await client_b.put_session_ref(raw, lifetime=EXPLICIT)
            del raw
            held = await client_b.run_remote_workflow("b", ["values::get"], {"key": str(uploaded)})
            through_parent.append(time.perf_counter() - start)
            await client_b.release_session_ref(uploaded.key)
            if got != size or held != size:
                raise SystemExit(f"B held {got} / {held} bytes, not {size}")
        await client_a.release_session_ref(ref.key)
    return p2p, through_parent


def measure(size: int, repeat: int) -> Values:
    tcp = deref_throughput.tcp_floor(size, repeat)
    peer_a, address_a = spawn(str(HERE / "_values_peer.py"), "bench-a")
    peer_b, address_b = spawn(
        str(HERE / "_values_peer.py"), "bench-b", json.dumps({"bench-a": f"http://{address_a}"})
    )
    try:
        upload, peak = asyncio.run(uploads(address_b, size, repeat))
        p2p, through_parent = asyncio.run(between_peers(address_a, address_b, size, repeat))
    finally:
        stop(peer_b)
        stop(peer_a)
    return Values(
        size=size,
        tcp_floor=min(tcp["floor"]),
        tcp_fresh=min(tcp["fresh"]),
        upload=min(upload),
        upload_median=statistics.median(upload),
        receiver_peak=peak,
        p2p=min(p2p),
        through_parent=min(through_parent),
    )


def report(values: Values, judged: bool = True) -> str:
    mib = values.size // MIB

    def rate(seconds: float) -> str:
        return f"{values.size / seconds / 1e6:,.0f} MB/s"

    rows = [
        (
            f"upload {mib:,} MiB, best (vs raw TCP)",
            rate(values.upload),
            rate(values.tcp_floor),
            values.tcp_floor / values.upload,
            ">= 0.8x",
        ),
        (
            f"upload {mib:,} MiB, best (vs raw TCP into fresh memory, as the peer receives)",
            rate(values.upload),
            rate(values.tcp_fresh),
            values.tcp_fresh / values.upload,
            ">= 1x",
        ),
        (
            f"receiver peak RSS, upload {mib:,} MiB (vs value)",
            f"{values.receiver_peak / MIB:,.0f} MiB",
            f"{mib:,} MiB",
            values.receiver_peak / values.size,
            "< 1.3x",
        ),
        (
            f"B's step holds A's {mib:,} MiB: peer-to-peer (vs through the parent)",
            f"{values.p2p * 1e3:,.0f} ms",
            f"{values.through_parent * 1e3:,.0f} ms",
            values.p2p / values.through_parent,
            "< 1x",
        ),
    ]
    lines = ["| metric | ours | baseline | ratio | target | |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {m} | {o} | {b} | {r:.2f}x | {t} | {verdict(r, t) if judged else 'not judged'} |"
        for m, o, b, r, t in rows
    ]
    return "\n".join(lines)


def verdict(ratio: float, target: str) -> str:
    """``met`` or ``MISSED`` for a target written as ``>= 0.8x`` or ``< 1x``."""
    op, bound = target.split()
    limit = float(bound.rstrip("x"))
    return "met" if (ratio >= limit if op == ">=" else ratio < limit) else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 16 MiB, once; judges no timing"
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    size_mib = args.size_mib or (16 if args.quick else 1024)
    repeat = args.repeat or (1 if args.quick else 3)
    if size_mib <= 0 or repeat <= 0:
        parser.error("--size-mib and --repeat must be positive")
    table = report(measure(size_mib * MIB, repeat), judged=not args.quick)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
