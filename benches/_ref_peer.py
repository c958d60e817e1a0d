"""A peer that makes session refs to be fetched; prints READY HOST:PORT.

Steps:
  bench::make_ref {"size": N}   stores an N-byte bytearray (UNTIL_EXPLICIT_DROP), returns its key
  bench::rss {"reset": bool}    this process's VmRSS, VmHWM (bytes) and CPU seconds; with
                                reset, VmHWM is first reset to the current RSS
"""

import asyncio
import os

from _ref_peer_common import filled
from blazen_peer import Context, PeerServer, RefLifetime, StartEvent, StopEvent, step


def proc_status() -> dict[str, int]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


@step("bench::make_ref")
async def make_ref(ctx: Context, ev: StartEvent) -> StopEvent:
    value = filled(int(ev.data["size"]))
    key = await ctx.session_refs.insert(value, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    return StopEvent(result=str(key))


@step("bench::rss")
def rss(ctx: Context, ev: StartEvent) -> StopEvent:
    reset = False
    if ev.data.get("reset"):
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            reset = True
        except OSError:
            pass
    times = os.times()
    status = proc_status()
    return StopEvent(
        result={
            "rss": status["VmRSS"],
            "hwm": status["VmHWM"],
            "cpu": times.user + times.system,
            "hwm_reset": reset,
        }
    )


async def main() -> None:
    server = PeerServer("bench-ref-peer")
    print(f"READY {await server.start('127.0.0.1:0')}", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
