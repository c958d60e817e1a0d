"""The `blazen-peer` command, run as real processes (`python -m blazen_peer ...`).

A `serve` process of tests/peer_app.py is started once for the module; tests wait
for its readiness line on stderr (never a sleep), then run `call`, `steps`,
`health` and `demo` against it as separate processes and check their output and
exit status: 0 for success, 1 for a failed run or call, 2 for a bad command,
input or connection, 130 after Ctrl-C.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
import pytest
import trustme
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, STARTUP_TIMEOUT_SECS

health_pb2 = pytest.importorskip(
    "grpc_health.v1.health_pb2", reason="needs grpcio-health-checking (the test extra)"
)
health_pb2_grpc = pytest.importorskip(
    "grpc_health.v1.health_pb2_grpc", reason="needs grpcio-health-checking (the test extra)"
)

CLI = [sys.executable, "-m", "blazen_peer"]
CLI_TIMEOUT_SECS = 30.0
PEER_APP = "tests/peer_app.py"  # relative to REPO_ROOT, as a user would type it
POLICY_PEER = "tests/policy_peer.py"
PEER_SERVICE = "blazen.peer.v1.BlazenPeer"
READY = re.compile(
    r"^blazen-peer: node (?P<node>\S+) serving on (?P<address>\S+) "
    r"\((?P<count>\d+) steps?: (?P<steps>.*)\)$"
)
GRPC_SERVING = 1
GRPC_NOT_SERVING = 2


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a token a developer may have exported, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != "BLAZEN_PEER_TOKEN"}
    return {**env, **extra}


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m blazen_peer ARGS...` to completion."""
    result = subprocess.run(
        [*CLI, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env if env is not None else clean_env(),
        timeout=CLI_TIMEOUT_SECS,
        check=False,
    )
    # Expected failures are reported in one line, never with a Python traceback.
    assert "Traceback" not in result.stderr, result.stderr
    return result


def last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


@dataclass
class Served:
    """A running `blazen-peer serve` and what it printed to stderr."""

    proc: subprocess.Popen[bytes]
    ready: re.Match[str]
    lines: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None

    @property
    def host_port(self) -> str:
        return self.ready["address"]

    @property
    def port(self) -> int:
        return int(self.host_port.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, signum: signal.Signals | None = signal.SIGTERM) -> int:
        """Sends ``signum`` (None: none, it is already stopping) and returns the exit status."""
        if signum is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            status = self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
            pytest.fail(f"serve did not exit (signal: {signum}); its stderr:\n{self.stderr()}")
        if self.drain is not None:
            self.drain.join(timeout=EXIT_TIMEOUT_SECS)
        return status


def _read_stderr(proc: subprocess.Popen[bytes], lines: list[str], out: queue.Queue[str]) -> None:
    """Keeps the pipe drained (a full one would block the server) and queues each line."""
    assert proc.stderr is not None
    for raw in iter(proc.stderr.readline, b""):
        line = raw.decode(errors="replace")
        lines.append(line)
        out.put(line)
    proc.stderr.close()
    out.put("")


def start_serve(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> Served:
    """Starts `blazen-peer serve ARGS...` and returns once its readiness line appeared."""
    proc = subprocess.Popen(
        [*CLI, "serve", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env if env is not None else clean_env(),
    )
    lines: list[str] = []
    incoming: queue.Queue[str] = queue.Queue()
    drain = threading.Thread(target=_read_stderr, args=(proc, lines, incoming), daemon=True)
    drain.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = incoming.get(timeout=remaining)
        except queue.Empty:
            break
        if not line:
            break  # the process closed stderr: it exited
        ready = READY.match(line.rstrip("\n"))
        if ready:
            return Served(proc, ready, lines, drain)
    proc.kill()
    proc.wait(timeout=EXIT_TIMEOUT_SECS)
    drain.join(timeout=EXIT_TIMEOUT_SECS)
    pytest.fail(f"serve did not announce it was serving; its stderr:\n{''.join(lines)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def grpc_health(host_port: str, service: str) -> int:
    """The standard `grpc.health.v1.Health/Check` answer, from a plain gRPC client."""
    with grpc.insecure_channel(host_port) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status: int = response.status
        return status


def wait_until(condition: Callable[[], bool], what: str, deadline_secs: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_secs
    while not condition():
        assert time.monotonic() < deadline, f"not within {deadline_secs}s: {what}"
        time.sleep(0.02)


@pytest.fixture
def spawn_serve() -> Iterator[Callable[..., Served]]:
    """Starts `serve` processes for one test; kills any still running afterwards."""
    started: list[Served] = []

    def spawn(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None) -> Served:
        peer = start_serve(*args, cwd=cwd, env=env)
        started.append(peer)
        return peer

    yield spawn
    for peer in started:
        if peer.proc.poll() is None:
            peer.proc.kill()
            peer.proc.wait(timeout=EXIT_TIMEOUT_SECS)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """`blazen-peer serve tests/peer_app.py` for the module; must exit 0 on SIGTERM."""
    peer = start_serve(PEER_APP, "--listen", "127.0.0.1:0", "--node-id", "cli-peer")
    yield peer
    status = peer.stop(signal.SIGTERM)
    assert status == 0, peer.stderr()
    assert not crash_tracebacks(peer.stderr()), peer.stderr()


def crash_tracebacks(stderr: str) -> list[int]:
    """Lines of ``stderr`` starting a traceback that is not a failed run's logged
    step traceback (which follows its run's WARNING line)."""
    lines = stderr.splitlines()
    return [
        index
        for index, line in enumerate(lines)
        if "Traceback" in line
        and not (
            line == "Traceback (most recent call last):"
            and index > 0
            and " WARNING blazen_peer: run " in lines[index - 1]
        )
    ]


@pytest.fixture
def addr(served: Served) -> str:
    assert served.proc.poll() is None, served.stderr()
    return served.host_port


# --- serve ---


def test_serve_announces_node_port_and_steps(served: Served) -> None:
    assert served.ready["node"] == "cli-peer"
    assert served.port != 0
    step_ids = served.ready["steps"].split(", ")
    assert int(served.ready["count"]) == len(step_ids)
    assert {"my_app::analyze", "my_app::summarize", "test::echo", "stream::progress"} <= set(
        step_ids
    )


def test_serve_imports_module_from_cwd_and_calls_attr(
    tmp_path: Path, spawn_serve: Callable[..., Served]
) -> None:
    (tmp_path / "cli_app.py").write_text(
        "from blazen_peer import StartEvent, StopEvent, register_step\n"
        "def register():\n"
        "    register_step('cli::added', lambda ctx, ev: StopEvent(result=ev.data),"
        " accepts=[StartEvent])\n"
    )
    peer = spawn_serve(
        "cli_app:register", "--listen", "127.0.0.1:0", "--node-id", "n", cwd=tmp_path
    )
    assert peer.ready["steps"] == "cli::added"
    called = run_cli("call", peer.host_port, "--step", "cli::added", "--input", "[1, 2]")
    assert (called.returncode, json.loads(called.stdout)) == (0, [1, 2])
    assert peer.stop(signal.SIGINT) == 0, peer.stderr()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz", "no module named 'no_such_module_xyz'"),
        ("tests/missing.py", "no such file: tests/missing.py"),
        (f"{PEER_APP}:no_such_attr", "has no attribute 'no_such_attr'"),
        (f"{PEER_APP}:NODE_ID", "NODE_ID is a str"),
    ],
)
def test_serve_refuses_bad_targets(target: str, message: str) -> None:
    result = run_cli("serve", target, "--listen", "127.0.0.1:0", "--node-id", "n")
    assert result.returncode == 2
    assert "blazen-peer: error (Validation): " in result.stderr
    assert message in result.stderr


def test_serve_shows_the_traceback_of_a_module_that_raises(tmp_path: Path) -> None:
    broken = tmp_path / "broken_app.py"
    broken.write_text("raise RuntimeError('misconfigured')\n")
    result = subprocess.run(
        [*CLI, "serve", str(broken), "--listen", "127.0.0.1:0", "--node-id", "n"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=CLI_TIMEOUT_SECS,
        check=False,
    )
    assert result.returncode == 2
    assert "RuntimeError: misconfigured" in result.stderr  # the user's own bug: traceback shown
    assert f"loading {broken} raised RuntimeError" in result.stderr


# --- call ---


def test_call_prints_the_result_as_json(addr: str) -> None:
    result = run_cli("call", addr, "--step", "test::echo", "--input", '{"a": [1, "é"]}')
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1  # not a terminal: one line
    echoed = json.loads(result.stdout)
    assert echoed["data"] == {"a": [1, "é"]}
    assert echoed["node_id"] == "cli-peer"


def test_call_declared_workflow_with_json_output(addr: str) -> None:
    result = run_cli(
        "call",
        f"http://{addr}",
        "--workflow",
        "analyze-pipeline",
        "--input",
        '{"document": "the quick brown fox"}',
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "result": {"words": 4, "summary": "the quick brown fox"},
        "state": {"language": "en"},
        "remote_refs": {},
    }


def test_call_reads_input_from_a_file_and_stdin(addr: str, tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text('{"from": "file"}')
    from_file = run_cli("call", addr, "--step", "test::echo", "--input", f"@{path}")
    from_stdin = run_cli("call", addr, "--step", "test::echo", "--input", "@-", stdin="[true]")
    assert json.loads(from_file.stdout)["data"] == {"from": "file"}
    assert json.loads(from_stdin.stdout)["data"] == [True]


def test_call_stream_prints_events_then_the_result(addr: str) -> None:
    args = ("call", addr, "--step", "stream::progress", "--input", '{"n": 3}', "--stream")
    text = run_cli(*args)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        'event tests.Progress {"epoch":0}',
        'event tests.Progress {"epoch":1}',
        'event tests.Progress {"epoch":2}',
        '{"written":3}',
    ]
    as_json = run_cli(*args, "--json")
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert lines[:3] == [{"event": "tests.Progress", "data": {"epoch": i}} for i in range(3)]
    assert lines[3] == {"result": {"written": 3}, "state": {"epochs": 3}, "remote_refs": {}}


def test_call_stream_of_a_failing_run_prints_events_then_the_error(addr: str) -> None:
    result = run_cli(
        "call",
        addr,
        "--step",
        "stream::fail_after",
        "--stream",
        "--input",
        '{"k": 1, "then": "raise"}',
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == ['event tests.Progress {"epoch":0}']
    assert "blazen-peer: error (Workflow): " in result.stderr
    assert "failed after 1 events" in result.stderr


def test_unknown_step_exits_1(addr: str) -> None:
    result = run_cli("call", addr, "--step", "nope::missing")
    assert result.returncode == 1
    assert result.stderr.startswith("blazen-peer: error (UnknownStep): step `nope::missing`")


def test_failing_step_exits_1_with_the_remote_error(addr: str) -> None:
    text = run_cli("call", addr, "--step", "test::boom")
    assert text.returncode == 1
    assert text.stderr.startswith("blazen-peer: error (Workflow): ")
    assert "ValueError: boom" in text.stderr
    as_json = run_cli("call", addr, "--step", "test::boom", "--json")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert (error["kind"], error["remote_type"], error["step_id"]) == (
        "Workflow",
        "ValueError",
        "test::boom",
    )
    assert "boom" in error["message"]


def test_nothing_listening_exits_2() -> None:
    port = free_port()
    for command in (["call", "--step", "test::echo"], ["steps"], ["health"]):
        result = run_cli(command[0], f"127.0.0.1:{port}", *command[1:])
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith("blazen-peer: error (Transport): cannot connect"), command


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("{bad", "--input is not valid JSON (the argument): Expecting property name"),
        ("NaN", "--input is not valid JSON (the argument): NaN is not a JSON value"),
        ("@/no/such/input.json", "--input @/no/such/input.json: cannot read it"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(addr: str, given: str, message: str) -> None:
    result = run_cli("call", addr, "--step", "test::echo", "--input", given)
    assert result.returncode == 2
    assert result.stderr.startswith(f"blazen-peer: error (Validation): {message}")


def test_usage_mistakes_exit_2() -> None:
    no_steps = run_cli("call", "127.0.0.1:1")
    assert no_steps.returncode == 2
    assert "give --workflow NAME, --step ID, or both" in no_steps.stderr
    half_tls = run_cli("call", "127.0.0.1:1", "--step", "s", "--tls-cert", "c.pem")
    assert half_tls.returncode == 2
    assert "--tls-cert and --tls-key go together" in half_tls.stderr


def test_ctrl_c_during_call_exits_130_and_cancels(addr: str, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    hold = json.dumps({"started": str(started), "release": str(release)})
    proc = subprocess.Popen(
        [*CLI, "call", addr, "--step", "security::hold", "--input", hold],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=clean_env(),
    )
    try:
        wait_until(started.exists, "the held run started on the peer")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=EXIT_TIMEOUT_SECS)
    finally:
        release.touch()  # frees the peer's worker thread (a def step runs to its end)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "Traceback" not in err.decode(), err.decode()


# --- steps and health ---


def test_steps_prints_a_table(addr: str) -> None:
    result = run_cli("steps", addr)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "node cli-peer"
    assert re.match(r"^STEP +ACCEPTS$", lines[2])
    assert re.search(r"^my_app::summarize +my_app\.Analyzed$", result.stdout, re.MULTILINE)
    assert re.search(
        r"^analyze-pipeline +my_app::analyze -> my_app::summarize$", result.stdout, re.MULTILINE
    )


def test_serve_labels_and_step_limits_show_in_steps(spawn_serve: Callable[..., Served]) -> None:
    peer = spawn_serve(
        POLICY_PEER,
        *("--listen", "127.0.0.1:0", "--node-id", "gpu-1"),
        *("--label", "region=eu-west", "--label", "gpu=h100"),
    )
    listing = json.loads(run_cli("steps", peer.host_port, "--json").stdout)
    assert listing["labels"] == {"gpu": "h100", "region": "eu-west"}
    by_id = {step["id"]: step for step in listing["steps"]}
    assert by_id["policy::held"]["max_concurrency"] == 1
    assert by_id["policy::hangs"]["timeout_secs"] == 1.0
    assert by_id["policy::flaky"]["attempts"] == 3
    text = run_cli("steps", peer.host_port).stdout
    assert "labels gpu=h100 region=eu-west" in text.splitlines()
    assert re.search(r"^policy::held +blazen::StartEvent  \(0/1 running\)$", text, re.MULTILINE)
    assert peer.stop(signal.SIGTERM) == 0, peer.stderr()


def test_serve_refuses_a_label_without_a_value(spawn_serve: Callable[..., Served]) -> None:
    result = run_cli(
        "serve", POLICY_PEER, "--listen", "127.0.0.1:0", "--node-id", "x", "--label", "region"
    )
    assert result.returncode == 2
    assert "expected NAME=VALUE" in result.stderr


def test_steps_json(addr: str) -> None:
    result = run_cli("steps", addr, "--json")
    listing = json.loads(result.stdout)
    assert (listing["node_id"], listing["draining"]) == ("cli-peer", False)
    assert {"id": "my_app::analyze", "accepts": ["blazen::StartEvent"]} in listing["steps"]
    assert {
        "name": "analyze-pipeline",
        "step_ids": ["my_app::analyze", "my_app::summarize"],
    } in listing["workflows"]


def test_health_serving_exits_0(addr: str) -> None:
    text = run_cli("health", addr)
    assert (text.returncode, text.stdout) == (0, "SERVING\n")
    as_json = run_cli("health", addr, "--service", PEER_SERVICE, "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {"service": PEER_SERVICE, "status": "SERVING"}
    unknown = run_cli("health", addr, "--service", "no.such.Service")
    assert (unknown.returncode, unknown.stdout) == (1, "SERVICE_UNKNOWN\n")


def test_health_turns_not_serving_while_draining(
    tmp_path: Path, spawn_serve: Callable[..., Served]
) -> None:
    """SIGTERM with a run in progress: NOT_SERVING (exit 1) until the run ends, then exit 0."""
    peer = spawn_serve(PEER_APP, "--listen", "127.0.0.1:0", "--node-id", "drainer", "--grace", "30")
    started, release = tmp_path / "started", tmp_path / "release"
    hold = json.dumps({"started": str(started), "release": str(release)})
    call = subprocess.Popen(
        [*CLI, "call", peer.host_port, "--step", "security::hold", "--input", hold],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=clean_env(),
    )
    try:
        wait_until(started.exists, "the held run started")
        peer.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: grpc_health(peer.host_port, "") == GRPC_NOT_SERVING, "health NOT_SERVING"
        )
        health = run_cli("health", peer.host_port)
        assert (health.returncode, health.stdout) == (1, "NOT_SERVING\n")
    finally:
        release.touch()
        out, err = call.communicate(timeout=CLI_TIMEOUT_SECS)
    assert (call.returncode, out.decode()) == (0, '"released"\n'), err.decode()
    # No second signal: that one would stop the process at once.
    assert peer.stop(None) == 0, peer.stderr()


# --- TLS ---


def test_tls_serve_and_call(tmp_path: Path, spawn_serve: Callable[..., Served]) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    issued.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    issued.private_key_pem.write_to_path(str(paths["key"]))
    peer = spawn_serve(
        PEER_APP,
        *("--listen", "127.0.0.1:0", "--node-id", "tls-peer"),
        *("--tls-cert", str(paths["cert"]), "--tls-key", str(paths["key"])),
    )
    # HOST:PORT with --tls-ca means https://.
    called = run_cli(
        "call", peer.host_port, "--step", "test::echo", "--input", "7", "--tls-ca", str(paths["ca"])
    )
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["data"] == 7
    health = run_cli("health", peer.host_port, "--tls-ca", str(paths["ca"]))
    assert (health.returncode, health.stdout) == (0, "SERVING\n")
    plaintext = run_cli("call", peer.host_port, "--step", "test::echo")
    assert plaintext.returncode == 2, plaintext.stderr
    missing_ca = run_cli("call", peer.host_port, "--step", "s", "--tls-ca", str(tmp_path / "no"))
    assert missing_ca.returncode == 2
    assert missing_ca.stderr.startswith("blazen-peer: error (Tls): cannot read CA file")
    assert peer.stop() == 0, peer.stderr()


# --- tokens, and the standard health client ---


@pytest.fixture(scope="module")
def token_peer() -> Iterator[Served]:
    """A peer accepting either of two tokens (a rotation in progress)."""
    peer = start_serve(
        PEER_APP,
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        "guarded",
        "--token-env",
        "CLI_TEST_TOKENS",
        env=clean_env(CLI_TEST_TOKENS="tok-old, tok-new"),
    )
    yield peer
    assert peer.stop(signal.SIGINT) == 0, peer.stderr()


@pytest.mark.parametrize("token", ["tok-old", "tok-new"])
def test_token_env_accepts_each_rotated_token(token_peer: Served, token: str) -> None:
    result = run_cli(
        "call",
        token_peer.host_port,
        "--step",
        "test::echo",
        "--input",
        '"hi"',
        "--token-env",
        "MY_TOKEN",
        env=clean_env(MY_TOKEN=token),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"] == "hi"


@pytest.mark.parametrize(("env", "args"), [({}, ()), ({"T": "wrong"}, ("--token-env", "T"))])
def test_missing_or_wrong_token_exits_2(
    token_peer: Served, env: dict[str, str], args: tuple[str, ...]
) -> None:
    result = run_cli(
        "call", token_peer.host_port, "--step", "test::echo", *args, env=clean_env(**env)
    )
    assert result.returncode == 2
    assert result.stderr.startswith("blazen-peer: error (Authentication): ")


def test_token_env_that_is_unset_exits_2(token_peer: Served) -> None:
    result = run_cli("call", token_peer.host_port, "--step", "s", "--token-env", "UNSET_VAR_XYZ")
    assert result.returncode == 2
    assert "--token-env UNSET_VAR_XYZ: the environment variable is not set" in result.stderr


def test_standard_grpc_health_client_needs_no_token(token_peer: Served) -> None:
    assert grpc_health(token_peer.host_port, "") == GRPC_SERVING
    assert grpc_health(token_peer.host_port, PEER_SERVICE) == GRPC_SERVING
    assert run_cli("health", token_peer.host_port).returncode == 0


# --- demo ---


def test_demo_runs_the_readme_pipeline() -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    assert 'result: {"words":4,"summary":"the quick brown fox"}' in result.stdout
    assert 'state:  {"language":"en"}' in result.stdout
    assert "local workflow result: " in result.stdout


# --- what a new user runs into (issue 14) ---

# What a message written for Python callers looks like: `insecure=True`,
# `tls=ServerTls.from_pem(...)`, `ClientTls(cert=..., key=...)`, `token=`.
PYTHON_ARGUMENT = re.compile(r"\b[a-z_]+=|ClientTls|ServerTls|PeerClient\.")


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `blazen-peer: error ...` line, checked to suggest flags, not Python."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("blazen-peer")]
    assert len(lines) == 1, result.stderr
    assert not PYTHON_ARGUMENT.search(lines[0]), lines[0]
    return lines[0]


def test_serve_refusing_an_open_address_names_the_flags() -> None:
    result = run_cli("serve", PEER_APP, "--listen", "0.0.0.0:0", "--node-id", "n")
    assert result.returncode == 2
    line = error_line(result)
    assert "refusing to serve 0.0.0.0:0 without TLS or a token" in line
    for flag in ("--tls-cert", "--tls-key", "--token-env", "--insecure"):
        assert flag in line, line


def test_token_errors_name_the_token_env_flag(token_peer: Served) -> None:
    missing = run_cli("call", token_peer.host_port, "--step", "test::echo")
    wrong = run_cli(
        "call",
        token_peer.host_port,
        *("--step", "test::echo", "--token-env", "T"),
        env=clean_env(T="wrong"),
    )
    for result in (missing, wrong):
        assert result.returncode == 2
        assert "--token-env" in error_line(result)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 only, a client certificate, and
    another CA that signed none of them."""
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("client@example.com")
    paths = {name: root / f"{name}.pem" for name in ("ca", "other", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["ccert"]))
    client.private_key_pem.write_to_path(str(paths["ckey"]))
    return paths


def test_tls_errors_name_the_tls_flags(
    pki: dict[str, Path], spawn_serve: Callable[..., Served]
) -> None:
    peer = spawn_serve(
        PEER_APP,
        *("--listen", "127.0.0.1:0", "--node-id", "mtls"),
        *("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])),
        *("--tls-client-ca", str(pki["ca"])),
    )
    call = ("call", peer.host_port, "--step", "test::echo")
    no_client_cert = run_cli(*call, "--tls-ca", str(pki["ca"]))
    assert no_client_cert.returncode == 2
    assert "--tls-cert FILE --tls-key FILE" in error_line(no_client_cert)
    client_cert = ("--tls-cert", str(pki["ccert"]), "--tls-key", str(pki["ckey"]))
    unknown_ca = run_cli(*call, "--tls-ca", str(pki["other"]), *client_cert)
    assert unknown_ca.returncode == 2
    assert "--tls-ca" in error_line(unknown_ca)
    wrong_name = run_cli(
        "call",
        f"localhost:{peer.port}",  # the certificate names 127.0.0.1 only
        *("--step", "test::echo", "--tls-ca", str(pki["ca"]), *client_cert),
    )
    assert wrong_name.returncode == 2
    assert "--tls-domain" in error_line(wrong_name)
    https_without_ca = run_cli("call", f"https://{peer.host_port}", "--step", "test::echo")
    assert https_without_ca.returncode == 2
    assert "give --tls-ca FILE" in https_without_ca.stderr
    assert not PYTHON_ARGUMENT.search(https_without_ca.stderr), https_without_ca.stderr
    works = run_cli(*call, "--tls-ca", str(pki["ca"]), *client_cert, "--input", "1")
    assert works.returncode == 0, works.stderr
    assert peer.stop() == 0, peer.stderr()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "`127.0.0.1` names no port"),
        ("http://127.0.0.1", "`http://127.0.0.1` names no port"),
        ("tcp://127.0.0.1:1", "`tcp://127.0.0.1:1` has scheme tcp://"),
        ("grpc://127.0.0.1:1", "`grpc://127.0.0.1:1` has scheme grpc://"),
    ],
)
def test_call_refuses_an_address_without_port_or_with_another_scheme(
    address: str, message: str
) -> None:
    """Never port 80 behind the user's back; a wrong scheme is named as such."""
    result = run_cli("call", address, "--step", "test::echo")
    assert result.returncode == 2
    assert error_line(result).startswith(f"blazen-peer: error (Validation): {message}")
    assert "HOST:PORT, http://HOST:PORT or https://HOST:PORT" in result.stderr


def test_call_without_input_says_the_input_was_null(addr: str) -> None:
    result = run_cli("call", addr, "--step", "my_app::analyze")
    assert result.returncode == 1
    line = error_line(result)
    assert "the run's input is null; send a JSON object with key 'document'" in line
    assert "this call gave no --input" in line
    assert "has keys []" not in line
    given_null = run_cli("call", addr, "--step", "my_app::analyze", "--input", "null")
    assert "the run's input is null" in given_null.stderr
    assert "gave no --input" not in given_null.stderr  # it did give one


README_STYLE_PEER = """\
import asyncio
from blazen_peer import Context, PeerServer, StartEvent, StopEvent, step

@step("readme::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)

asyncio.run(PeerServer("node-b").serve("127.0.0.1:50051"))
"""

BLOCKING_PEER = """\
from blazen_peer import PeerServer, StartEvent, StopEvent, step

@step("blocking::echo")
def echo(ctx, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.data)

try:
    PeerServer("node-b").serve_blocking("127.0.0.1:50051")
except Exception:  # a broad handler must not hide the refusal
    pass
"""


@pytest.mark.parametrize(
    ("source", "line"),
    [
        (README_STYLE_PEER, 'line 8: asyncio.run(PeerServer("node-b").serve("127.0.0.1:50051"))'),
        (BLOCKING_PEER, 'line 8: PeerServer("node-b").serve_blocking("127.0.0.1:50051")'),
    ],
)
def test_serve_refuses_a_file_that_starts_its_own_server(
    tmp_path: Path, source: str, line: str
) -> None:
    """A peer file written like the README (asyncio.run at module level): the
    message says where and what to do, with no never-awaited warning."""
    (tmp_path / "my_peer.py").write_text(source)
    result = subprocess.run(
        [*CLI, "serve", "my_peer.py", "--listen", "127.0.0.1:0", "--node-id", "n"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(PYTHONWARNINGS="always"),
        timeout=CLI_TIMEOUT_SECS,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"blazen-peer: error (Validation): my_peer.py starts a server when imported ({line}); "
        "`blazen-peer serve` imports it for its steps and serves them itself, with its own "
        'flags. Put the code that starts the server under `if __name__ == "__main__":` '
        "(then `python my_peer.py` still runs it)"
    ]


def test_serve_runs_async_setup_at_import_like_python_does(
    tmp_path: Path, spawn_serve: Callable[..., Served]
) -> None:
    """Targets are imported before serve's event loop exists, so a module-level
    asyncio.run(setup()) works as it does under `python FILE`."""
    (tmp_path / "setup_peer.py").write_text(
        "import asyncio\n"
        "from blazen_peer import StartEvent, StopEvent, step\n"
        "async def load_config():\n"
        "    await asyncio.sleep(0)\n"
        "    return {'greeting': 'hello'}\n"
        "CONFIG = asyncio.run(load_config())\n"
        "@step('setup::greet')\n"
        "def greet(ctx, ev: StartEvent) -> StopEvent:\n"
        "    return StopEvent(result=CONFIG['greeting'])\n"
    )
    peer = spawn_serve("setup_peer.py", "--listen", "127.0.0.1:0", "--node-id", "n", cwd=tmp_path)
    called = run_cli("call", peer.host_port, "--step", "setup::greet")
    assert (called.returncode, called.stdout) == (0, '"hello"\n'), called.stderr
    assert peer.stop() == 0, peer.stderr()
    assert "never awaited" not in peer.stderr()


def test_serve_messages_are_grammatical(tmp_path: Path, spawn_serve: Callable[..., Served]) -> None:
    (tmp_path / "odd_targets.py").write_text(
        "from blazen_peer import StartEvent, StopEvent, step\n"
        "LIMIT = 3\n"
        "SENTINEL = object()\n"
        "@step('odd::echo')\n"
        "def echo(ctx, ev: StartEvent) -> StopEvent:\n"
        "    return StopEvent(result=ev.data)\n"
    )
    for attribute, noun in (("LIMIT", "an int"), ("SENTINEL", "an object")):
        result = subprocess.run(
            [
                *CLI,
                "serve",
                f"odd_targets.py:{attribute}",
                *("--listen", "127.0.0.1:0", "--node-id", "n"),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=clean_env(),
            timeout=CLI_TIMEOUT_SECS,
            check=False,
        )
        assert result.returncode == 2
        assert f"{attribute} is {noun}; name a function" in result.stderr
    peer = spawn_serve("odd_targets.py", "--listen", "127.0.0.1:0", "--node-id", "n", cwd=tmp_path)
    assert peer.ready["count"] == "1"
    assert run_cli("call", peer.host_port, "--step", "odd::echo").returncode == 0
    assert peer.stop() == 0, peer.stderr()
    assert "stopped after 1 run (1 succeeded," in peer.stderr()


def test_serve_prints_its_readiness_line_once(served: Served) -> None:
    """The CLI serves with start(), which never prints: only its own line appears."""
    assert sum(1 for line in served.lines if READY.match(line.rstrip("\n"))) == 1


def test_demo_help_is_plain_text() -> None:
    result = run_cli("demo", "--help")
    assert result.returncode == 0
    assert "``" not in result.stdout, result.stdout
    assert "Runs the README demo" in result.stdout


def test_the_plaintext_token_warning_names_the_flag() -> None:
    """A log line meant for Python callers (tls=ClientTls.from_pem(...)) names --tls-ca."""
    result = run_cli(
        "call",
        f"0.0.0.0:{free_port()}",  # not loopback: the token would cross a network in the clear
        *("--step", "test::echo", "--token-env", "T"),
        env=clean_env(T="secret"),
    )
    assert result.returncode == 2
    warning = next(line for line in result.stderr.splitlines() if "over plaintext" in line)
    assert "use an https:// address with --tls-ca FILE" in warning
    assert not PYTHON_ARGUMENT.search(warning), warning
    assert "secret" not in result.stderr
