"""An application that runs `PeerServer.serve()` inside itself, for tests/test_embedding.py.

    python tests/embedding_app.py MODE

Serves step `embed::echo` on a free port (port 0) with ``grace=1.0`` and prints
`READY HOST:PORT SIGTERM=<handler> SIGINT=<handler>` once serve() is serving (its
signal handlers decided), where <handler> names what `signal.getsignal` returns:
SIG_DFL, SIG_IGN, default_int_handler, asyncio.run (asyncio.run's Ctrl-C handler),
loop (a handler on the event loop: serve()'s, or the application's), app (the
application's `signal.signal` handler) or other. Then, by MODE:

- `app-loop` / `app-signal`: the application installs its own SIGTERM and SIGINT
  handlers (`loop.add_signal_handler` / `signal.signal`) before starting serve()
  in a task. On a signal the handler prints `APP HANDLER <SIGNAL>`, the application
  cancels serve()'s task (`SERVE CANCELLED`, `PEER STOPPED <bool>`), then raises
  each signal at itself once more and prints `APP HANDLER STILL IN PLACE <SIGNAL>`
  when its handler ran again, and `APP STOPPED` (exit 0). If serve() returned before
  the application's handler ran, it prints `SERVE RETURNED BEFORE THE APP'S HANDLER`
  and exits 1.
- `default` / `default-ignore-sigint`: `asyncio.run(server.serve(...))` in a process
  that handles no signal (the second one ignores SIGINT first); when serve() returns
  it prints `SERVE RETURNED`, `RESTORED <bool>` (each handler is the very object it
  was before serve()) and `LOOP HANDLERS <bool>` (the loop still has any), then,
  after asyncio.run(), `AFTER SIGTERM=<handler> SIGINT=<handler>` (exit 0).
- `blocking`: the same with `server.serve_blocking(...)` (another thread waits for
  the address and runs `embed::echo` on the peer before printing READY: a step runs
  on serve()'s loop only once serve() has decided on signals).
- `side-task`: serve() in a task of `asyncio.run(main())`, where asyncio.run() owns
  Ctrl-C; prints `PEER STOPPED <bool>` when serve() ends and `KEYBOARD INTERRUPT`
  if asyncio.run() raised it (exit 0).
- `cancel-replaced`: no handlers, no asyncio.run (a loop of its own, so SIGINT is
  Python's default); after READY the application installs its own SIGTERM handler
  on the loop (over serve()'s), cancels serve()'s task, prints `SERVE CANCELLED`,
  `SIGINT RESTORED <bool>`, then raises SIGTERM at itself and prints
  `APP HANDLER STILL IN PLACE SIGTERM` when its handler ran (exit 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from blazen_peer import Context, PeerClient, PeerServer, StartEvent, StopEvent, step

SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLER_WAIT_SECS = 10.0


@step("embed::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)


def describe(handler: object) -> str:
    if handler is signal.SIG_DFL:
        return "SIG_DFL"
    if handler is signal.SIG_IGN:
        return "SIG_IGN"
    if handler is signal.default_int_handler:
        return "default_int_handler"
    if isinstance(handler, functools.partial) and handler.func.__name__ == "_on_sigint":
        return "asyncio.run"
    name = getattr(handler, "__name__", "")
    if name == "_sighandler_noop":
        return "loop"  # a handler on the event loop (add_signal_handler)
    if name == "on_python_signal":
        return "app"  # this application's own signal.signal() handler
    return "other"


def handlers() -> dict[signal.Signals, Any]:
    return {signum: signal.getsignal(signum) for signum in SIGNALS}


def describe_all(prefix: str) -> str:
    now = handlers()
    return f"{prefix} " + " ".join(f"{s.name}={describe(now[s])}" for s in SIGNALS)


def say(line: str) -> None:
    print(line, flush=True)


class Server(PeerServer):
    """A PeerServer that tells when serve() has started: serve() calls start(), and
    decides on signals in the same step in which start() returns, so whoever waits
    on ``started`` runs only after that."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.started = asyncio.Event()
        self.started_in_thread = threading.Event()

    async def start(self, address: str = "127.0.0.1:0") -> str:
        bound = await super().start(address)
        self.started.set()
        self.started_in_thread.set()
        return bound


async def report_ready(server: Server) -> None:
    await server.started.wait()
    say(describe_all(f"READY {server.address}"))


# --- an application with its own handlers ---


async def app(mode: str) -> int:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[signal.Signals] = asyncio.Queue()

    def on_signal(signum: signal.Signals) -> None:
        say(f"APP HANDLER {signum.name}")
        got.put_nowait(signum)

    def on_python_signal(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(on_signal, signal.Signals(signum))

    for signum in SIGNALS:
        if mode == "app-loop":
            loop.add_signal_handler(signum, on_signal, signum)
        else:
            signal.signal(signum, on_python_signal)

    server = Server("node-embedded")
    serve_task = asyncio.create_task(server.serve("127.0.0.1:0", grace=1.0))
    await report_ready(server)

    first_signal = asyncio.create_task(got.get())
    await asyncio.wait({first_signal, serve_task}, return_when=asyncio.FIRST_COMPLETED)
    if not first_signal.done():
        say("SERVE RETURNED BEFORE THE APP'S HANDLER")
        first_signal.cancel()
        return 1

    # The application's shutdown: it stops the peer by cancelling serve().
    serve_task.cancel()
    try:
        await serve_task
    except asyncio.CancelledError:
        say("SERVE CANCELLED")
    say(f"PEER STOPPED {server.address is None}")

    for signum in SIGNALS:
        signal.raise_signal(signum)
        again = await asyncio.wait_for(got.get(), HANDLER_WAIT_SECS)
        if again is signum:
            say(f"APP HANDLER STILL IN PLACE {signum.name}")
    say("APP STOPPED")
    return 0


# --- a process that handles no signal ---


async def serve_alone() -> None:
    before = handlers()
    server = Server("node-alone")
    ready = asyncio.create_task(report_ready(server))
    await server.serve("127.0.0.1:0", grace=1.0)
    await ready
    say("SERVE RETURNED")
    after = handlers()
    say(f"RESTORED {all(after[s] is before[s] for s in SIGNALS)}")
    say(f"LOOP HANDLERS {loop_has_handlers()}")


def loop_has_handlers() -> bool:
    """Whether the running loop handles a signal (`remove_signal_handler` says, and
    only when it finds one does it change anything; it is put back then)."""
    loop = asyncio.get_running_loop()
    found = False
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if loop.remove_signal_handler(signum):
            found = True
            signal.signal(signum, previous)
    return found


def serve_blocking() -> None:
    server = Server("node-blocking")

    def report() -> None:
        # serve_blocking() blocks this thread; another one waits for the address.
        server.started_in_thread.wait()
        address = server.address
        with PeerClient.connect_blocking(f"http://{address}", node_id="node-probe") as client:
            client.run_remote_workflow_blocking("wf", ["embed::echo"], "probe")
        say(describe_all(f"READY {address}"))

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    before = handlers()
    server.serve_blocking("127.0.0.1:0", grace=1.0)
    reporter.join()
    say("SERVE RETURNED")
    after = handlers()
    say(f"RESTORED {all(after[s] is before[s] for s in SIGNALS)}")


async def side_task() -> None:
    server = Server("node-side")
    serve_task = asyncio.create_task(server.serve("127.0.0.1:0", grace=1.0))
    await report_ready(server)
    try:
        await serve_task
    finally:
        say(f"PEER STOPPED {server.address is None}")


async def cancel_replaced() -> None:
    loop = asyncio.get_running_loop()
    before = handlers()
    server = Server("node-replaced")
    serve_task = asyncio.create_task(server.serve("127.0.0.1:0", grace=1.0))
    await report_ready(server)

    got = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, got.set)  # over serve()'s handler
    serve_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serve_task
    say("SERVE CANCELLED")
    say(f"SIGINT RESTORED {signal.getsignal(signal.SIGINT) is before[signal.SIGINT]}")
    signal.raise_signal(signal.SIGTERM)
    await asyncio.wait_for(got.wait(), HANDLER_WAIT_SECS)
    say("APP HANDLER STILL IN PLACE SIGTERM")


def run_on_own_loop(main: Callable[[], Any]) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def main(mode: str) -> int:
    if mode in ("app-loop", "app-signal"):
        return asyncio.run(app(mode))
    if mode in ("default", "default-ignore-sigint"):
        if mode == "default-ignore-sigint":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        asyncio.run(serve_alone())
        say(describe_all("AFTER"))
        return 0
    if mode == "blocking":
        serve_blocking()
        say(describe_all("AFTER"))
        return 0
    if mode == "side-task":
        try:
            asyncio.run(side_task())
        except KeyboardInterrupt:
            say("KEYBOARD INTERRUPT")
        return 0
    if mode == "cancel-replaced":
        run_on_own_loop(cancel_replaced)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
