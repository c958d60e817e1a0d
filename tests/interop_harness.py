"""The `interop/` harness: the published Rust crate `blazen-peer` 0.7.0 as a
server (`blazen-interop serve`) and as a client (`blazen-interop client`).

Built by tests/run_all.sh before pytest; a test that needs it and finds no
binary fails and says how to build it (never skips: CI must run it).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, STARTUP_TIMEOUT_SECS, read_line

MANIFEST = REPO_ROOT / "interop" / "Cargo.toml"
BINARY = REPO_ROOT / "interop" / "target" / "release" / "blazen-interop"
BUILD_COMMAND = f"cargo build --release --locked --manifest-path {MANIFEST.relative_to(REPO_ROOT)}"

# Ids of the Rust steps the harness server registers (interop/src/steps.rs).
ECHO = "interop::echo"
STATE = "interop::state"
FAILING = "interop::failing"
SLOW = "interop::slow"
MAKE_REF = "interop::make_ref"
RUST_NODE_ID = "rust-node"
BYTES_TAG = "interop.bytes"

# Bounds a hung harness client; the cases themselves take a few seconds.
CLIENT_TIMEOUT_SECS = 45.0


def binary() -> Path:
    if not BINARY.is_file():
        pytest.fail(
            f"the interop harness is not built ({BINARY} is missing); build it with "
            f"`{BUILD_COMMAND}` from the repository root (it needs protoc: "
            "`apt-get install -y protobuf-compiler`); tests/run_all.sh does both"
        )
    return BINARY


@dataclass
class RustPeer:
    """A running `blazen-interop serve`."""

    proc: subprocess.Popen[bytes]
    address: str
    stderr_path: Path

    def stop(self) -> int:
        """Closes stdin (its signal to stop) and waits for it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            status = self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
        self.proc.stdout.close()
        return status


def start_rust_peer(stderr_path: Path) -> RustPeer:
    """Starts the crate's server and waits for its `LISTENING HOST:PORT` line."""
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(binary()), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
    line = read_line(proc, STARTUP_TIMEOUT_SECS)
    if not line.startswith("LISTENING "):
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_SECS)
        pytest.fail(
            f"blazen-interop serve did not report its address (stdout: {line!r}); "
            f"its stderr:\n{stderr_path.read_text(errors='replace')}"
        )
    return RustPeer(proc, f"http://{line.split()[1]}", stderr_path)


def run_rust_client(
    address: str, *, http: bool = False, token: str | None = None
) -> dict[str, dict[str, Any]]:
    """Runs every case of the crate's client against `address`; by case name.
    With `http`, its HTTP/JSON client (`HttpPeerClient`) against the peer's
    HTTP/JSON routes, sending `token` as a bearer token when given."""
    env = {k: v for k, v in os.environ.items() if k != "BLAZEN_PEER_TOKEN"}
    if token is not None:
        env["BLAZEN_PEER_TOKEN"] = token
    done = subprocess.run(
        [str(binary()), "http-client" if http else "client", address],
        capture_output=True,
        timeout=CLIENT_TIMEOUT_SECS,
        check=False,
        env=env,
    )
    results: dict[str, dict[str, Any]] = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        outcome = json.loads(line)
        results[outcome["case"]] = outcome
    if not results:
        pytest.fail(
            f"blazen-interop client printed no cases (status {done.returncode}); "
            f"stderr:\n{done.stderr.decode(errors='replace')}"
        )
    return results
