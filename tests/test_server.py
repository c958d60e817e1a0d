"""PeerServer embedded in this test's event loop (an app with other work to do),
called from this loop and from a client in another process."""

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest
from blazen_peer import (
    Context,
    PeerClient,
    PeerServer,
    PeerTimeoutError,
    StartEvent,
    StopEvent,
    TransportError,
    ValidationError,
    step,
)
from conftest import PeerProcess, run_call_peer

PEER_LIFECYCLES = 24
CALLS_PER_LIFECYCLE = 100


TICKS = 5
"""How many ticks of the app's other task a step waits to see while it runs."""
TICK_WAIT_SECS = 20.0
"""Only against a hang: a step that never sees them fails after this."""


class Ticker:
    """Another task of the app: counts while the event loop is free to run it."""

    def __init__(self) -> None:
        self.ticks = 0
        self._ticked = threading.Condition()  # for a step blocking a worker thread
        self._tick = asyncio.Event()  # for a step on the loop; replaced at each tick
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with self._ticked:
                self.ticks += 1
                self._ticked.notify_all()
            tick, self._tick = self._tick, asyncio.Event()
            tick.set()
            await asyncio.sleep(0.01)

    async def ticked(self, count: int) -> None:
        """Returns (in a task on the ticker's loop) once it ticked ``count`` more times."""
        target = self.ticks + count

        async def reached() -> None:
            while self.ticks < target:
                await self._tick.wait()

        await asyncio.wait_for(reached(), TICK_WAIT_SECS)

    def ticked_blocking(self, count: int) -> bool:
        """Blocks this thread (not the loop's) until the ticker ticked ``count`` more
        times; False if it did not within TICK_WAIT_SECS."""
        with self._ticked:
            target = self.ticks + count
            return self._ticked.wait_for(lambda: self.ticks >= target, TICK_WAIT_SECS)

    async def __aenter__(self) -> "Ticker":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def call_from_subprocess(
    address: str, workflow: str, step_ids: list[str], input_json: str = "null"
) -> tuple[int, str, str]:
    """Runs tests/call_peer.py without blocking this loop (which serves the call)."""
    return await run_call_peer(address, workflow, json.dumps(step_ids), input_json)


async def test_embedded_server_serves_while_the_apps_other_tasks_keep_running(
    step_ids: Callable[[str], str],
) -> None:
    loop = asyncio.get_running_loop()
    async with Ticker() as ticker:
        step_id = step_ids("observe")

        @step(step_id)
        async def observe(ctx: Context, ev: StartEvent) -> StopEvent:
            before = ticker.ticks
            await ticker.ticked(TICKS)  # the app's other task runs while the step does
            return StopEvent(
                result={
                    "before": before,
                    "after": ticker.ticks,
                    "same_loop": asyncio.get_running_loop() is loop,
                    "node_id": ctx.node_id,
                    "data": ev.data,
                }
            )

        async with PeerServer("node-embedded") as server:
            bound = await server.start("127.0.0.1:0")
            address = f"http://{bound}"

            # A client on the same loop.
            async with await PeerClient.connect(address, node_id="node-a") as client:
                ticks_before_call = ticker.ticks
                result = await client.run_remote_workflow("embedded", [step_id], "same-loop")
                assert ticker.ticks > ticks_before_call
            assert result["same_loop"] is True
            assert result["node_id"] == "node-embedded"
            assert result["data"] == "same-loop"
            assert result["after"] - result["before"] >= TICKS, result

            # A client in another process.
            code, out, err = await call_from_subprocess(
                address, "embedded", [step_id], '"other-process"'
            )
            assert code == 0, f"stdout: {out}\nstderr: {err}"
            remote = json.loads(out)
            assert remote["data"] == "other-process"
            assert remote["after"] - remote["before"] >= TICKS, remote


async def test_sync_steps_of_an_embedded_server_do_not_block_its_loop(
    step_ids: Callable[[str], str],
) -> None:
    async with Ticker() as ticker:
        step_id = step_ids("blocking")

        @step(step_id)
        def blocking(ctx: Context, ev: StartEvent) -> StopEvent:
            before = ticker.ticks
            # Blocks a worker thread until the loop's other task ticked: were the loop
            # blocked by this step, it never would.
            saw_ticks = ticker.ticked_blocking(TICKS)
            return StopEvent(
                result={
                    "saw_ticks": saw_ticks,
                    "ticks_during": ticker.ticks - before,
                    "on_main_thread": threading.current_thread() is threading.main_thread(),
                }
            )

        async with PeerServer("node-embedded") as server:
            bound = await server.start("127.0.0.1:0")
            async with await PeerClient.connect(f"http://{bound}", node_id="node-a") as client:
                result = await client.run_remote_workflow("wf", [step_id])
    assert result["on_main_thread"] is False
    assert result["saw_ticks"] is True, result
    assert result["ticks_during"] >= TICKS, result


async def test_start_returns_the_bound_address_and_stop_is_idempotent() -> None:
    server = PeerServer("node-x")
    assert server.node_id == "node-x"
    assert server.address is None
    assert repr(server) == "PeerServer('node-x', address=None)"
    bound = await server.start("127.0.0.1:0")
    host, port = bound.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert server.address == bound
    assert repr(server) == f"PeerServer('node-x', address={bound!r})"
    await server.stop()
    await server.stop()
    assert server.address is None
    with pytest.raises(TransportError):
        await PeerClient.connect(f"http://{bound}", node_id="node-a")


async def test_a_stopped_server_cannot_serve_again() -> None:
    server = PeerServer("node-x")
    await server.start("127.0.0.1:0")
    await server.stop()
    with pytest.raises(ValidationError, match="was stopped"):
        await server.start("127.0.0.1:0")


async def test_stop_before_start_is_allowed() -> None:
    server = PeerServer("node-x")
    await server.stop()
    assert server.address is None


async def test_async_with_stops_the_server() -> None:
    async with PeerServer("node-x") as server:
        bound = await server.start()
        async with await PeerClient.connect(f"http://{bound}", node_id="node-a") as client:
            assert client.closed is False
    assert server.address is None
    with pytest.raises(TransportError):
        await PeerClient.connect(f"http://{bound}", node_id="node-a")


async def test_stop_waits_for_in_flight_calls(step_ids: Callable[[str], str]) -> None:
    entered = asyncio.Event()
    finished = asyncio.Event()
    step_id = step_ids("in_flight")

    @step(step_id)
    async def in_flight(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        await asyncio.sleep(0.3)
        finished.set()
        return StopEvent(result="finished")

    server = PeerServer("node-x")
    bound = await server.start("127.0.0.1:0")
    client = await PeerClient.connect(f"http://{bound}", node_id="node-a")
    call = asyncio.ensure_future(client.run_remote_workflow("wf", [step_id]))
    await asyncio.wait_for(entered.wait(), timeout=10)
    await server.stop()
    # The step was still sleeping when stop() began: stop() returned only after it
    # finished and was answered.
    assert finished.is_set()
    assert await asyncio.wait_for(call, timeout=5) == "finished"
    await client.close()


async def test_default_timeout_applies_when_the_request_has_none(
    step_ids: Callable[[str], str],
) -> None:
    cancelled = asyncio.Event()
    step_id = step_ids("forever")

    @step(step_id)
    async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return StopEvent(result="late")

    async with PeerServer("node-x", default_timeout_secs=0.5) as server:
        bound = await server.start("127.0.0.1:0")
        async with await PeerClient.connect(f"http://{bound}", node_id="node-a") as client:
            # The step sleeps 30 s and then returns: the PeerTimeoutError is the deadline's.
            with pytest.raises(PeerTimeoutError) as excinfo:
                await client.run_remote_workflow("deadline", [step_id])
            assert excinfo.value.node_id == "node-x"
            # The abandoned step's task was cancelled, not left running.
            await asyncio.wait_for(cancelled.wait(), timeout=5)


async def test_serve_runs_until_cancelled(step_ids: Callable[[str], str]) -> None:
    step_id = step_ids("served")

    @step(step_id)
    def served(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.data)

    server = PeerServer("node-x")
    serving = asyncio.create_task(server.serve("127.0.0.1:0"))
    deadline = time.monotonic() + 10
    while server.address is None:  # ready once start() inside serve() returned
        assert not serving.done(), serving
        assert time.monotonic() < deadline, "serve() never started listening"
        await asyncio.sleep(0.01)
    bound = server.address
    async with await PeerClient.connect(f"http://{bound}", node_id="node-a") as client:
        assert await client.run_remote_workflow("wf", [step_id], 42) == 42
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert server.address is None
    with pytest.raises(TransportError):
        await PeerClient.connect(f"http://{bound}", node_id="node-a")


async def test_serve_blocking_refuses_to_run_inside_an_event_loop() -> None:
    with pytest.raises(ValidationError, match=r"await server\.serve\(address\)"):
        PeerServer("node-x").serve_blocking("127.0.0.1:0")


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan")])
def test_bad_default_timeout_raises_validation_error(timeout: float) -> None:
    with pytest.raises(ValidationError, match="default_timeout_secs"):
        PeerServer("node-x", default_timeout_secs=timeout)


def test_empty_node_id_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match="node_id"):
        PeerServer("")


async def test_a_server_listening_on_a_host_name_is_reachable() -> None:
    async with PeerServer("node-x") as server:
        bound = await server.start("localhost:0")
        port = bound.rsplit(":", 1)[1]
        async with await PeerClient.connect(f"http://{bound}", node_id="node-a") as client:
            assert client.address.endswith(port)


async def test_peer_processes_exit_cleanly_after_serving_calls(
    spawn_peer: Callable[..., PeerProcess],
) -> None:
    """A peer that served calls and was asked to stop must exit with status 0.

    The crash this guards against (a native worker thread touching the interpreter
    while it finalizes: "Fatal Python error: PyGILState_Release", SIGABRT/SIGSEGV)
    happens at a fraction of exits, so several peers go through their whole life.
    """

    async def lifecycle() -> tuple[int, str]:
        peer = await asyncio.to_thread(spawn_peer)
        async with await PeerClient.connect(peer.address, node_id="node-a") as client:
            results = await asyncio.gather(
                *(
                    client.run_remote_workflow(
                        "exit-wf", ["test::async_echo" if i % 2 else "test::echo"], i
                    )
                    for i in range(CALLS_PER_LIFECYCLE)
                )
            )
        assert [r["data"] for r in results] == list(range(CALLS_PER_LIFECYCLE))
        status = await asyncio.to_thread(peer.stop)
        return status, peer.stderr()

    async def worker(count: int) -> list[tuple[int, str]]:
        return [await lifecycle() for _ in range(count)]

    batches = await asyncio.gather(*(worker(PEER_LIFECYCLES // 4) for _ in range(4)))
    outcomes = [outcome for batch in batches for outcome in batch]
    crashed = [(status, stderr) for status, stderr in outcomes if status != 0]
    assert not crashed, (
        f"{len(crashed)} of {len(outcomes)} peer processes crashed on exit; first: "
        f"status {crashed[0][0]}, stderr:\n{crashed[0][1]}"
    )
