"""What a new user runs into in their first hour (issue 14), from the Python side:
one address rule for PeerClient, PeerPool and the CLI; serve() says it is up;
messages that name the right thing and read correctly.

The CLI's side of the same items is in tests/test_cli.py.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blazen_peer import (
    Context,
    EncodeError,
    PeerClient,
    PeerPool,
    SessionRefRegistry,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    register_step,
)
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, STARTUP_TIMEOUT_SECS, PeerProcess

READY = re.compile(
    r"^blazen-peer: node (?P<node>\S+) serving on (?P<address>\S+) "
    r"\((?P<count>\d+) steps?: (?P<steps>.*)\)$"
)


# --- one address rule ---


async def test_client_accepts_host_port_as_start_returns_it(peer_process: PeerProcess) -> None:
    """`PeerServer.start()` returns HOST:PORT; PeerClient.connect takes it as is."""
    async with await PeerClient.connect(peer_process.host_port, node_id="node-a") as client:
        assert client.address == f"http://{peer_process.host_port}"
        assert (await client.run_remote_workflow("wf", ["test::echo"], 3))["data"] == 3


def test_connect_blocking_accepts_host_port(peer_process: PeerProcess) -> None:
    with PeerClient.connect_blocking(peer_process.host_port, node_id="node-a") as client:
        assert client.run_remote_workflow_blocking("wf", ["test::echo"], 4)["data"] == 4


async def test_pool_accepts_host_port(peer_process: PeerProcess) -> None:
    pool = await PeerPool.connect([peer_process.host_port], node_id="parent")
    try:
        await pool.wait_for_healthy(1, timeout_secs=10)
        assert (await pool.run_remote_workflow("wf", ["test::echo"], 5))["data"] == 5
        assert [peer.address for peer in pool.peers] == [f"http://{peer_process.host_port}"]
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "`127.0.0.1` names no port"),
        ("http://127.0.0.1", "`http://127.0.0.1` names no port"),
        ("https://peer.example", "`https://peer.example` names no port"),
        ("tcp://127.0.0.1:1", "`tcp://127.0.0.1:1` has scheme tcp://"),
        ("127.0.0.1:http", "`127.0.0.1:http` has an invalid port"),
        (":50051", "`:50051` names no host"),
    ],
)
async def test_an_address_without_port_or_with_another_scheme_is_refused(
    address: str, message: str
) -> None:
    """Never port 80 behind the user's back; `tcp://` is named, not "no scheme"."""
    forms = "use HOST:PORT, http://HOST:PORT or https://HOST:PORT"
    with pytest.raises(ValidationError, match=re.escape(message)) as excinfo:
        await PeerClient.connect(address, node_id="node-a")
    assert forms in str(excinfo.value)
    with pytest.raises(ValidationError, match=re.escape(message)):
        await PeerPool.connect(address, node_id="parent")
    with pytest.raises(ValidationError, match=re.escape(message)):
        await _connect_blocking_in_a_thread(address)


async def _connect_blocking_in_a_thread(address: str) -> None:
    await asyncio.to_thread(PeerClient.connect_blocking, address, node_id="node-a")


async def test_connect_blocking_in_a_loop_names_peerclient_connect() -> None:
    with pytest.raises(ValidationError) as excinfo:
        PeerClient.connect_blocking("127.0.0.1:1", node_id="node-a")
    assert "use `await PeerClient.connect(...)` there instead" in str(excinfo.value)


# --- serve() says it is up ---

SERVE_SCRIPT = """\
import asyncio, sys
from blazen_peer import PeerServer, StartEvent, StopEvent, step

@step("ready::echo")
async def echo(ctx, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)

async def started_only() -> None:
    server = PeerServer("node-quiet")
    print(f"STARTED {await server.start('127.0.0.1:0')}", flush=True)
    await asyncio.get_running_loop().create_future()

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        asyncio.run(PeerServer("node-r").serve("127.0.0.1:0"))
    elif mode == "blocking":
        PeerServer("node-r").serve_blocking("127.0.0.1:0")
    elif mode == "quiet":
        asyncio.run(PeerServer("node-r").serve("127.0.0.1:0", announce=False))
    else:
        asyncio.run(started_only())
    print("EXITED", flush=True)
"""


@pytest.fixture
def serve_script(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Starts `python peer.py MODE` (the file above) with stdout and stderr piped."""
    script = tmp_path / "peer.py"
    script.write_text(SERVE_SCRIPT)
    started: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), mode],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=EXIT_TIMEOUT_SECS)


@pytest.mark.parametrize("mode", ["serve", "blocking"])
async def test_serve_prints_one_readiness_line_with_the_bound_address(
    serve_script: Callable[[str], subprocess.Popen[str]], mode: str
) -> None:
    """`python peer.py` with serve(): one line on stderr saying where it serves,
    the CLI's line; stdout stays the application's."""
    proc = serve_script(mode)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until serve() is up (or the process died)
    ready = READY.match(line.rstrip("\n"))
    assert ready, f"not a readiness line: {line!r}"
    assert (ready["node"], ready["count"], ready["steps"]) == ("node-r", "1", "ready::echo")
    assert not ready["address"].endswith(":0")
    async with await PeerClient.connect(ready["address"], node_id="node-a") as client:
        assert await client.run_remote_workflow("wf", ["ready::echo"], "hi") == "hi"
    proc.send_signal(signal.SIGTERM)  # handlers were in place before the line was written
    out, err = proc.communicate(timeout=EXIT_TIMEOUT_SECS)
    assert (proc.returncode, out) == (0, "EXITED\n"), err
    assert not any(READY.match(rest) for rest in err.splitlines()), "printed twice"


@pytest.mark.parametrize(("mode", "stdout"), [("quiet", ""), ("start", "STARTED ")])
async def test_start_and_announce_false_print_nothing(
    serve_script: Callable[[str], subprocess.Popen[str]], mode: str, stdout: str
) -> None:
    """An application embedding the peer (start()) or opting out decides what it prints."""
    proc = serve_script(mode)
    if stdout:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(stdout)
    else:
        # No line to wait for: wait until the port answers instead.
        await _wait_for_any_peer(proc)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=EXIT_TIMEOUT_SECS)
    assert "blazen-peer: node" not in err, err


async def _wait_for_any_peer(proc: subprocess.Popen[str]) -> None:
    """Waits until the process listens on some TCP port (read from /proc)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if _listening_ports(proc.pid):
            return
        await asyncio.sleep(0.05)
    pytest.fail("the peer never listened")


def _listening_ports(pid: int) -> list[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for row in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# --- messages that read correctly ---


async def test_a_step_asking_fields_of_a_null_or_non_object_input_says_what_it_got(
    step_ids: Callable[[str], str],
) -> None:
    def wants_document(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.document)

    wf = Workflow("input", [register_step(step_ids("wants"), wants_document)])
    for given, message in (
        (None, "the run's input is null; send a JSON object with key 'document'"),
        ([1, 2], "the run's input is an array, not an object with keys"),
        ("text", "the run's input is a string, not an object with keys"),
        ({"doc": 1}, "the run's input has keys ['doc']"),
    ):
        with pytest.raises(WorkflowError, match=re.escape(message)):
            await (await wf.run(given)).result()


async def test_messages_use_the_right_article(step_ids: Callable[[str], str]) -> None:
    async def bad_state(ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.set("k", object())
        return StopEvent(result=None)

    wf = Workflow("article", [register_step(step_ids("state"), bad_state)])
    with pytest.raises(WorkflowError, match="state key 'k' holds an object, which is not"):
        await (await wf.run()).result()
    with pytest.raises(EncodeError, match="cannot store an object as a session ref"):
        SessionRefRegistry().insert(object())


def test_bench_chart_hint_says_what_the_readme_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benches"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    import _chart  # type: ignore[import-not-found,unused-ignore]

    problem = _chart.have_matplotlib()
    assert problem is not None
    assert "pip install '.[bench]'" in problem
    assert "-e" not in problem.split(";")[-1]
    readme = (REPO_ROOT / "README.md").read_text()
    assert 'pip install ".[bench]"' in readme
