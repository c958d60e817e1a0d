"""The published Rust implementation (crate `blazen-peer` 0.7.0, built in
`interop/`) as a benchmark baseline: its server with a Rust echo step, and its
client timing calls (`blazen-interop bench`, interop/src/bench.rs).

A full run builds the harness with the `measured` profile (optimised as our own
library is); --quick uses the test build that tests/run_all.sh makes."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "interop" / "Cargo.toml"
#: The Rust server's echo step (interop/src/steps.rs).
RUST_ECHO = ["interop::echo"]
#: The step of ours that the Rust client calls (_noop_peer.py).
OUR_ECHO = "bench::noop"


def binary(quick: bool) -> Path:
    """The harness binary, built first when a full run measures it."""
    profile = "release" if quick else "measured"
    built = REPO_ROOT / "interop" / "target" / profile / "blazen-interop"
    if not quick:
        command = ["cargo", "build", "--profile", profile, "--locked", "--manifest-path"]
        done = subprocess.run([*command, str(MANIFEST)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"cannot build the Rust baseline ({' '.join(command)} interop/Cargo.toml); "
                f"it needs protoc (apt-get install -y protobuf-compiler):\n{done.stderr[-2000:]}"
            )
    if not built.is_file():
        raise SystemExit(
            f"{built} is missing: build it with `cargo build --release --locked "
            "--manifest-path interop/Cargo.toml` (tests/run_all.sh does)"
        )
    return built


class RustClient:
    """The crate's client, run as a process per measurement."""

    def __init__(self, program: Path, address: str, step_id: str) -> None:
        self._program = program
        self._address = address if "://" in address else f"http://{address}"
        self._step_id = step_id

    async def samples(self, calls: int) -> list[float]:
        """Seconds per call of ``calls`` sequential calls (after its own warm-up)."""
        return list((await self._run(calls, 1, 0.0))["samples_s"])

    async def throughput(self, in_flight: int, seconds: float) -> float:
        """Calls per second with ``in_flight`` calls outstanding for ``seconds``."""
        return float((await self._run(0, in_flight, seconds))["calls_per_s"])

    async def _run(self, calls: int, in_flight: int, seconds: float) -> dict[str, object]:
        argv = [self._address, self._step_id, str(calls), str(in_flight), str(seconds)]
        proc = await asyncio.create_subprocess_exec(
            self._program,
            "bench",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"blazen-interop bench {' '.join(argv)} failed: {err.decode()}")
        return dict(json.loads(out))
