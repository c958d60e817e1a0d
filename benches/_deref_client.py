"""The receiving side of deref_throughput.py, in a fresh process so that its
peak RSS shows only what a deref costs.

Run by deref_throughput.py: python benches/_deref_client.py HOST:PORT SIZE REPEAT
Prints one JSON line: per deref, the seconds taken and both processes' RSS and CPU.
"""

import asyncio
import json
import os
import sys
import time
from typing import Any

from blazen_peer import PeerClient

# Same as _ref_peer.py: period 251, so a piece at the wrong offset never matches.
PATTERN = bytes(range(251)) * 4177


def proc_status() -> dict[str, int]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def reset_hwm() -> bool:
    """Resets VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def verify(raw: bytes | bytearray, size: int) -> None:
    """Checks the length and every byte against PATTERN (memcmp speed, no copies)."""
    if len(raw) != size:
        raise SystemExit(f"deref returned {len(raw)} bytes, expected {size}")
    for offset in range(0, size, len(PATTERN)):
        if not raw.startswith(PATTERN[: size - offset], offset):
            raise SystemExit(f"deref returned wrong bytes in the piece at offset {offset}")


async def main() -> None:
    address, size, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = await PeerClient.connect(f"http://{address}", node_id="bench-client")

    async def call(step_id: str, data: dict[str, Any]) -> Any:
        return await client.run_remote_workflow(step_id, [step_id], data, timeout_secs=120)

    small = await call("bench::make_ref", {"size": 64 * 1024})
    big = await call("bench::make_ref", {"size": size})
    verify(await client.deref_session_ref(small), 64 * 1024)  # warm-up
    await client.release_session_ref(small)

    baseline = proc_status()["VmRSS"]
    runs = []
    for _ in range(repeat):
        peer_before = await call("bench::rss", {"reset": True})
        hwm_reset = reset_hwm()
        cpu_before = cpu_seconds()
        start = time.perf_counter()
        raw = await client.deref_session_ref(big)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_before
        status = proc_status()
        peer_after = await call("bench::rss", {"reset": False})
        verify(raw, size)
        del raw
        runs.append(
            {
                "seconds": seconds,
                "client_cpu": cpu,
                "client_hwm": status["VmHWM"],
                "client_hwm_reset": hwm_reset,
                "peer_rss_before": peer_before["rss"],
                "peer_hwm": peer_after["hwm"],
                "peer_hwm_reset": peer_before["hwm_reset"],
                "peer_cpu": peer_after["cpu"] - peer_before["cpu"],
            }
        )
    # The same value into one reused buffer: what a caller that fetches repeatedly
    # (or into memory it already has, e.g. a numpy array) pays.
    buffer = bytearray(size)
    into = []
    for _ in range(repeat):
        start = time.perf_counter()
        got = await client.deref_session_ref_into(big, buffer)
        into.append(time.perf_counter() - start)
        if got != size:
            raise SystemExit(f"deref_session_ref_into returned {got}, expected {size}")
        verify(buffer, size)
    await client.release_session_ref(big)
    await client.close()
    print(json.dumps({"client_baseline": baseline, "runs": runs, "into": into}))


asyncio.run(main())
