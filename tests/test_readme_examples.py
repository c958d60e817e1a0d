"""Every code block and command line of README.md, run as written.

How each kind of block runs:

* A Python block whose first line names a file (``# peer_b.py``) is that file: it is
  written under that name into the scenario's directory and run the way the README
  says (``python peer_b.py``), as a peer in its own process.
* Any other Python block is what a reader types into ``python -m asyncio`` (IPython,
  Jupyter): ``tests/readme_run.py block`` runs it as ``__main__`` with top-level
  ``await``, nothing predefined, the scenario's directory first on ``sys.path``, and
  checks its claims (``resp.error    # None``: the value must equal the literal).
* Command lines run as separate processes, split as a shell splits them; ``curl``
  lines (the HTTP/JSON routes) run in bash, which expands their ``$BLAZEN_PEER_TOKEN``.

Each scenario runs in a network namespace of its own ("a machine": loopback with
127.0.0.1, 10.0.0.5 and 10.0.0.6; an /etc/hosts naming ``peer-b`` and the
``peers.ml.svc.cluster.local`` of the pool example), so the README's fixed addresses
and ports work as written and never clash with anything else on this machine. The
harness supplies only what the README leaves to the reader: ``my_steps.py`` (the
module ``blazen-peer serve my_steps`` imports: the README's peer files' steps),
``job.json``, the TLS files of the security example, and the token variables.

Three command lines are not run verbatim, because running them would replace this
environment's installation or recurse into this very suite: ``pip install`` runs as
``--dry-run --no-deps --no-build-isolation`` (the project and the extra must
resolve), ``bash tests/run_all.sh`` (the command that runs this test) is checked for
syntax and that it runs pytest, and ``benches/run_all.py --deref`` (a minute, 3 GiB)
is checked to accept its flags (``--quick`` runs every path in tests/run_all.sh).

`test_every_readme_block_is_run_by_a_test` fails when a block appears that no
scenario runs, so a new example cannot go untested.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from blazen_peer import PeerClient
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, STARTUP_TIMEOUT_SECS, TESTS_DIR, read_line

EXAMPLES = REPO_ROOT / "examples"
DEMO_PEER = REPO_ROOT / "python" / "blazen_peer" / "cli" / "_demo_peer.py"
"""The one copy of the README's peer_b.py steps (examples/peer_b.py imports them)."""
README = REPO_ROOT / "README.md"
README_RUN = TESTS_DIR / "readme_run.py"
SCENARIO_SECS = 120
PEER_WAIT_SECS = 30.0
STOP_SECS = 15.0

ROUND_TRIP = "The round trip"
STREAMING = "Streaming, cancellation and shutdown"
LIMITS = "Step limits, usage and placement"
EMBEDDING = "Embedding in an existing asyncio app"
FLEETS = "Fleets: the CLI, pools, health, logs and traces"
REFS = "Session refs: values that stay on the peer"
VALUES = "Values both ways: uploads and peer-to-peer refs"
SECURITY = "Security: running peers in production"
PERFORMANCE = "Performance"
WIRE = "Wire compatibility"  # its HTTP/JSON subsection
TOP = "blazen-peer"

# --- the README's blocks ---


@dataclass(frozen=True)
class Block:
    section: str
    index: int
    lang: str
    text: str
    line: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.section, self.index)

    @property
    def file_name(self) -> str | None:
        """The file a Python block says it is (``# trainer.py``), without directories."""
        match = re.match(r"# ([\w./-]+\.py)\b", self.text)
        return Path(match[1]).name if match else None

    def command_lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.section!r}, block {self.index})"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    section, counts = "", itertools.count()
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if fence is not None:
            if line.startswith("```"):
                lang, start, lines = fence
                blocks.append(Block(section, next(counts), lang, "\n".join(lines) + "\n", start))
                fence = None
            else:
                fence[2].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), number, [])
        elif re.match(r"#{1,2} ", line):
            section, counts = line.lstrip("#").strip(), itertools.count()
    assert fence is None, "README.md has an unclosed code block"
    return blocks


def blocks_of(section: str, count: int) -> list[Block]:
    found = [block for block in readme_blocks() if block.section == section]
    assert len(found) == count, (
        f"README.md section {section!r} has {len(found)} code blocks; the scenario that runs "
        f"them expects {count}: update tests/test_readme_examples.py with the README"
    )
    return found


# Which test runs each block; kept next to the scenarios below.
COVERED = {
    (TOP, 0): "test_install_and_test_commands",
    (ROUND_TRIP, 0): "test_round_trip",
    (ROUND_TRIP, 1): "test_round_trip",
    (ROUND_TRIP, 2): "test_round_trip",
    (LIMITS, 0): "test_step_limits",
    (LIMITS, 1): "test_step_limits",
    (LIMITS, 2): "test_step_limits",
    (STREAMING, 0): "test_streaming",
    (STREAMING, 1): "test_streaming",
    (EMBEDDING, 0): "test_embedding",
    (FLEETS, 0): "test_cli_lines",
    (FLEETS, 1): "test_pool",
    (FLEETS, 2): "test_metrics",
    (FLEETS, 3): "test_metrics",
    (REFS, 0): "test_session_refs",
    (REFS, 1): "test_session_refs",
    (VALUES, 0): "test_uploads_and_peer_to_peer_refs",
    (VALUES, 1): "test_uploads_and_peer_to_peer_refs",
    (VALUES, 2): "test_uploads_and_peer_to_peer_refs",
    (SECURITY, 0): "test_security",
    (SECURITY, 1): "test_security",
    (PERFORMANCE, 0): "test_benchmark_command",
    (WIRE, 0): "test_http_json_curl",
}


def test_every_readme_block_is_run_by_a_test() -> None:
    blocks = readme_blocks()
    uncovered = [str(block) for block in blocks if block.key not in COVERED]
    assert not uncovered, f"no test runs these README blocks: {uncovered}"
    stale = sorted(set(COVERED) - {block.key for block in blocks})
    assert not stale, f"COVERED names blocks README.md no longer has: {stale}"
    for block in blocks:
        assert block.lang in ("python", "bash"), f"{block}: unknown language {block.lang!r}"


# --- a machine of its own for each scenario ---

_NAMESPACE = re.compile(r"^bprm-(\d+)-\d+$")
_namespace_ids = itertools.count()
HOSTS = """\
127.0.0.1 localhost
127.0.0.1 peer-b
10.0.0.5 peers.ml.svc.cluster.local
10.0.0.6 peers.ml.svc.cluster.local
"""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _clean_stale_namespaces() -> None:
    """Namespaces of earlier runs whose process is gone (a crash, a kill -9)."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _NAMESPACE.match(name)
        if match and not Path(f"/proc/{match[1]}").exists():
            _ip("netns", "del", name)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


class Machine:
    """One network namespace, the processes started in it, and their directory."""

    def __init__(self, workdir: Path, token: str | None) -> None:
        self.name = f"bprm-{os.getpid()}-{next(_namespace_ids)}"
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BLAZEN_PEER_")}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        if token is not None:
            self.env["BLAZEN_PEER_TOKEN"] = token
            self.env["PEER_TOKENS"] = token
        self.spawned: list[tuple[str, subprocess.Popen[bytes]]] = []
        for args in (
            ("netns", "add", self.name),
            ("-n", self.name, "link", "set", "lo", "up"),
            ("-n", self.name, "addr", "add", "10.0.0.5/32", "dev", "lo"),
            ("-n", self.name, "addr", "add", "10.0.0.6/32", "dev", "lo"),
        ):
            result = _ip(*args)
            if result.returncode != 0:
                self.close()
                pytest.fail(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
        # `ip netns exec` mounts this over /etc/hosts for the programs it starts.
        etc = Path("/etc/netns") / self.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(HOSTS)

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def write(self, block: Block) -> Path:
        name = block.file_name
        assert name is not None, f"{block} does not name a file"
        path = self.workdir / name
        path.write_text(block.text)
        return path

    def spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Starts a long-running program; its output goes to ``<name>.out`` / ``.err``."""
        with (
            (self.workdir / f"{name}.out").open("wb") as out,
            (self.workdir / f"{name}.err").open("wb") as err,
        ):
            proc = subprocess.Popen(
                self._argv(argv),
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.spawned.append((name, proc))
        return proc

    def output(self, name: str) -> str:
        out = (self.workdir / f"{name}.out").read_text(errors="replace")
        err = (self.workdir / f"{name}.err").read_text(errors="replace")
        return f"--- {name} stdout:\n{out}--- {name} stderr:\n{err}"

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._argv(argv),
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_block(self, block: Block) -> str:
        """Runs a Python block as `python -m asyncio` would; returns what it printed."""
        path = self.workdir / f"block-{block.line}.py"
        path.write_text(block.text)
        result = self.run([sys.executable, str(README_RUN), "block", str(path)])
        assert result.returncode == 0, (
            f"{block} failed (status {result.returncode}):\n{block.text}\n"
            f"--- stdout:\n{result.stdout}--- stderr:\n{result.stderr}\n{self.outputs()}"
        )
        return result.stdout

    def wait_serving(self, url: str, peer: str, *tls: str) -> None:
        """Waits until the peer at ``url`` (spawned as ``peer``) answers SERVING; fails at
        once, with its output, when the peer process ended instead."""
        argv = [sys.executable, str(README_RUN), "wait", url, "--timeout", str(PEER_WAIT_SECS)]
        waiter = subprocess.Popen(
            self._argv([*argv, *tls]),
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc = dict(self.spawned)[peer]
        deadline = time.monotonic() + PEER_WAIT_SECS + 30
        while waiter.poll() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if waiter.poll() is None:
            waiter.kill()
        _, err = waiter.communicate(timeout=EXIT_TIMEOUT_SECS)
        if waiter.returncode != 0:
            pytest.fail(
                f"{peer} is not serving on {url} (its status: {proc.poll()}); {err}\n"
                + self.output(peer)
            )

    def stop(self, name: str, signum: signal.Signals) -> int:
        """Sends ``signum`` to a spawned program (Ctrl-C, SIGTERM) and waits for it."""
        proc = dict(self.spawned)[name]
        proc.send_signal(signum)
        try:
            return proc.wait(timeout=STOP_SECS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=EXIT_TIMEOUT_SECS)
            pytest.fail(
                f"{name} did not stop within {STOP_SECS}s of {signum.name}\n" + self.output(name)
            )

    def outputs(self) -> str:
        return "\n".join(self.output(name) for name, _ in self.spawned)

    def close(self) -> None:
        for _, proc in self.spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=EXIT_TIMEOUT_SECS)
        _ip("netns", "del", self.name)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Callable[..., Machine]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and `ip` for network namespaces (the README's fixed addresses)")
    _clean_stale_namespaces()
    made: list[Machine] = []

    def make(token: str | None = None) -> Machine:
        workdir = tmp_path / f"machine-{len(made)}"
        workdir.mkdir()
        made.append(Machine(workdir, token))
        return made[-1]

    yield make
    for each in made:
        each.close()


def assert_stopped_cleanly(machine: Machine, name: str, signum: signal.Signals) -> None:
    status = machine.stop(name, signum)
    assert status == 0, f"{name} exited with {status} after {signum.name}\n{machine.output(name)}"
    assert "Traceback" not in machine.output(name), machine.output(name)


# --- the scenarios ---


def definitions(source: str, *, without_event_type: bool = False) -> dict[str, str]:
    """The module-level classes and functions of ``source`` (their AST, so formatting
    and comments do not count); ``without_event_type`` leaves out the ``event_type=``
    of class lines."""
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if without_event_type and isinstance(node, ast.ClassDef):
            node.keywords = [keyword for keyword in node.keywords if keyword.arg != "event_type"]
        found[node.name] = ast.dump(node)
    return found


@pytest.mark.timeout(SCENARIO_SECS)
def test_round_trip(machine: Callable[..., Machine]) -> None:
    peer, orchestrator, workflow = blocks_of(ROUND_TRIP, 3)
    host = machine()
    assert peer.file_name == "peer_b.py", peer
    host.write(peer)
    host.spawn("peer_b", [sys.executable, "peer_b.py"])  # "On the peer, `python peer_b.py`"
    host.wait_serving("http://127.0.0.1:50051", "peer_b")
    host.run_block(orchestrator)
    host.run_block(workflow)
    assert_stopped_cleanly(host, "peer_b", signal.SIGINT)  # Ctrl-C: a graceful stop
    # The one copy that examples/peer_b.py, `blazen-peer demo` and the tests serve has
    # the same event and steps; it pins the event's wire name (`my_app.Analyzed`: its
    # module path is the package's private one), which the README's class line leaves out.
    copy = definitions(DEMO_PEER.read_text(), without_event_type=True)
    for name, definition in definitions(peer.text).items():
        assert copy.get(name) == definition, f"{DEMO_PEER.name} differs at {name}"


@pytest.mark.timeout(SCENARIO_SECS)
def test_step_limits(machine: Callable[..., Machine]) -> None:
    peer, caller, local = blocks_of(LIMITS, 3)
    host = machine()
    assert peer.file_name == "gpu_peer.py", peer
    host.write(peer)
    # "one peer started as `python gpu_peer.py 50054 eu-west` and another as ... 50055 us-east"
    for name, port, region in (("eu", "50054", "eu-west"), ("us", "50055", "us-east")):
        host.spawn(name, [sys.executable, "gpu_peer.py", port, region])
        host.wait_serving(f"http://127.0.0.1:{port}", name)
    host.run_block(caller)
    host.run_block(local)
    for name in ("eu", "us"):
        assert_stopped_cleanly(host, name, signal.SIGINT)


@pytest.mark.timeout(SCENARIO_SECS)
def test_streaming(machine: Callable[..., Machine]) -> None:
    trainer, caller = blocks_of(STREAMING, 2)
    host = machine()
    assert trainer.file_name == "trainer.py", trainer
    host.write(trainer)
    host.spawn("trainer", [sys.executable, "trainer.py"])
    host.wait_serving("http://127.0.0.1:50052", "trainer")
    printed = host.run_block(caller)
    # The comment says what it prints: the events as the caller's own class, then the end.
    assert printed.splitlines() == [
        "Progress(epoch=0)",
        "Progress(epoch=1)",
        "Progress(epoch=2)",
        "StopEvent(result='done')",
    ], printed
    assert_stopped_cleanly(host, "trainer", signal.SIGINT)


@pytest.mark.timeout(SCENARIO_SECS)
def test_embedding(machine: Callable[..., Machine]) -> None:
    (block,) = blocks_of(EMBEDDING, 1)
    assert block.text.startswith("# examples/embed_in_app.py\n")
    assert block.text == (EXAMPLES / "embed_in_app.py").read_text(), (
        "the README's embedding block must be examples/embed_in_app.py verbatim"
    )
    host = machine()
    host.write(block)
    host.spawn("app", [sys.executable, "embed_in_app.py"])  # its default address
    host.wait_serving("http://127.0.0.1:50051", "app")
    greeted = host.run(
        [
            sys.executable,
            "-c",
            "from blazen_peer import PeerClient\n"
            "with PeerClient.connect_blocking('127.0.0.1:50051', node_id='a') as client:\n"
            "    print(client.run_remote_workflow_blocking('wf', ['my_app::greet'], 'a'))\n",
        ]
    )
    assert greeted.stdout == "hello, a\n", greeted
    assert_stopped_cleanly(host, "app", signal.SIGTERM)  # the app's own handler
    assert "app and peer stopped" in host.output("app")


MY_STEPS = '''\
"""The module `blazen-peer serve my_steps` serves: the README's peer files' steps."""
from peer_b import analyze, summarize
from trainer import train
'''


def cli_machine(machine: Callable[..., Machine]) -> Machine:
    """A machine with the README's peer files, `my_steps.py`, `job.json` and a token."""
    host = machine(token="readme-token-" + os.urandom(8).hex())
    (peer,) = [b for b in blocks_of(ROUND_TRIP, 3) if b.file_name == "peer_b.py"]
    (trainer,) = [b for b in blocks_of(STREAMING, 2) if b.file_name == "trainer.py"]
    host.write(peer)
    host.write(trainer)
    (host.workdir / "my_steps.py").write_text(MY_STEPS)
    (host.workdir / "job.json").write_text('{"epochs": 3}\n')
    return host


@pytest.mark.timeout(SCENARIO_SECS)
def test_cli_lines(machine: Callable[..., Machine]) -> None:
    block, _pool, _metrics_serve, _metrics_scrape = blocks_of(FLEETS, 4)
    host = cli_machine(machine)
    lines = block.command_lines()
    assert lines[0].startswith("blazen-peer serve "), lines[0]
    host.spawn("serve", shlex.split(lines[0], comments=True))
    host.wait_serving("http://10.0.0.5:7443", "serve")
    for line in lines[1:]:
        argv = shlex.split(line, comments=True)
        result = host.run(argv, timeout=90)
        assert result.returncode == 0, (
            f"`{line}` exited with {result.returncode}\n--- stdout:\n{result.stdout}"
            f"--- stderr:\n{result.stderr}\n{host.outputs()}"
        )
        command = argv[1]
        if command == "call" and "--stream" not in argv:
            assert json.loads(result.stdout) == {"words": 1, "summary": "hi"}, result.stdout
        elif command == "call":
            assert result.stdout.count("trainer.Progress") == 3, result.stdout
            assert '"done"' in result.stdout, result.stdout
        elif command == "steps":
            assert "my_app::analyze" in result.stdout and "my_app::train" in result.stdout
    assert_stopped_cleanly(host, "serve", signal.SIGTERM)  # "SIGTERM/Ctrl-C: drain, exit 0"


@pytest.mark.timeout(SCENARIO_SECS)
def test_pool(machine: Callable[..., Machine]) -> None:
    _cli, pool, _metrics_serve, _metrics_scrape = blocks_of(FLEETS, 4)
    host = cli_machine(machine)
    # Two peers, as the CLI line starts them, on the pool example's two addresses.
    for index, address in enumerate(("10.0.0.5", "10.0.0.6"), start=1):
        host.spawn(
            f"gpu-{index}",
            [
                *("blazen-peer", "serve", "my_steps", "--listen", f"{address}:7443"),
                *("--node-id", f"gpu-{index}", "--token-env", "PEER_TOKENS"),
            ],
        )
    host.wait_serving("http://10.0.0.5:7443", "gpu-1")
    host.wait_serving("http://10.0.0.6:7443", "gpu-2")
    host.run_block(pool)
    for name in ("gpu-1", "gpu-2"):
        assert_stopped_cleanly(host, name, signal.SIGTERM)


@pytest.mark.timeout(SCENARIO_SECS)
def test_metrics(machine: Callable[..., Machine]) -> None:
    _cli, _pool, serve, scrape = blocks_of(FLEETS, 4)
    host = cli_machine(machine)
    (line,) = serve.command_lines()
    host.spawn("serve", shlex.split(line, comments=True))
    # The metrics port is served before the peer's, so it answers once the peer does.
    host.wait_serving("http://127.0.0.1:7443", "serve")
    host.run_block(scrape)
    assert_stopped_cleanly(host, "serve", signal.SIGTERM)


@pytest.mark.timeout(SCENARIO_SECS)
def test_session_refs(machine: Callable[..., Machine]) -> None:
    embedder, caller = blocks_of(REFS, 2)
    host = machine()
    assert embedder.file_name == "embedder.py", embedder
    host.write(embedder)
    host.spawn("embedder", [sys.executable, "embedder.py"])
    host.wait_serving("http://127.0.0.1:50053", "embedder")
    host.run_block(caller)
    assert_stopped_cleanly(host, "embedder", signal.SIGINT)


@pytest.mark.timeout(SCENARIO_SECS)
def test_uploads_and_peer_to_peer_refs(machine: Callable[..., Machine]) -> None:
    gpu, private, caller = blocks_of(VALUES, 3)
    host = machine()
    peers = (("private_peer", private, 50055), ("gpu_peer", gpu, 50054))
    for name, block, _ in peers:
        assert block.file_name == f"{name}.py", block
        host.write(block)
        host.spawn(name, [sys.executable, f"{name}.py"])
    for name, _, port in peers:
        host.wait_serving(f"http://127.0.0.1:{port}", name)
    host.run_block(caller)
    for name, _, _ in peers:
        assert_stopped_cleanly(host, name, signal.SIGINT)


@pytest.mark.timeout(SCENARIO_SECS)
def test_security(machine: Callable[..., Machine]) -> None:
    peer, caller = blocks_of(SECURITY, 2)
    host = machine(token="readme-token-" + os.urandom(8).hex())
    ca = trustme.CA()
    server = ca.issue_cert("peer-b")
    client = ca.issue_cert("node-a.clients.test", common_name="node-a")
    for name, blob in (
        ("ca.crt", ca.cert_pem),
        ("server.crt", server.cert_chain_pems[0]),
        ("server.key", server.private_key_pem),
        ("client.crt", client.cert_chain_pems[0]),
        ("client.key", client.private_key_pem),
    ):
        blob.write_to_path(str(host.workdir / name))
    assert peer.file_name == "secure_peer.py", peer
    host.write(peer)
    host.spawn("secure_peer", [sys.executable, "secure_peer.py"])
    tls = ("--ca", "ca.crt", "--cert", "client.crt", "--key", "client.key")
    host.wait_serving("https://peer-b:50051", "secure_peer", *tls)
    host.run_block(caller)
    assert_stopped_cleanly(host, "secure_peer", signal.SIGINT)


@pytest.mark.timeout(SCENARIO_SECS)
def test_http_json_curl(machine: Callable[..., Machine]) -> None:
    """`serve --http-json`, then each `curl` line as a shell runs it (it expands
    `$BLAZEN_PEER_TOKEN`, which the machine sets), checking what it prints."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (block,) = blocks_of(WIRE, 1)
    host = cli_machine(machine)
    serve, *curls = block.command_lines()
    assert serve.startswith("blazen-peer serve ") and "--http-json" in serve, serve
    assert curls and all(line.startswith("curl ") for line in curls), curls
    host.spawn("serve", shlex.split(serve, comments=True))
    host.wait_serving("http://127.0.0.1:7443", "serve")
    for line in curls:
        result = host.run(["bash", "-c", line], timeout=60)
        assert result.returncode == 0, (
            f"`{line}` exited with {result.returncode}\n--- stdout:\n{result.stdout}"
            f"--- stderr:\n{result.stderr}\n{host.outputs()}"
        )
        answer = json.loads(result.stdout)
        if "/invoke_sub_workflow" in line:
            assert answer["error"] is None, answer
            result_json = json.loads(bytes(answer["result_json"]))
            assert result_json == {"words": 1, "summary": "hi"}, answer
        else:
            # The line's comment says what it prints.
            assert answer == json.loads(line.rpartition("#")[2]), (line, answer)
    assert_stopped_cleanly(host, "serve", signal.SIGTERM)


# --- the command lines that install or measure ---


def _extras() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


def check_command(command: str) -> None:
    """Runs or checks one command of a `&&` chain, as the module docstring says."""
    argv = shlex.split(command, comments=True)
    cwd = REPO_ROOT
    if argv[:4] == ["python3", "-m", "pip", "install"]:
        target = argv[-1]
        match = re.fullmatch(r"\.(?:\[(\w+)\])?", target)
        assert match is not None, f"`{command}`: installs {target!r}, not this project"
        if match[1] is not None:
            assert match[1] in _extras(), f"`{command}`: pyproject.toml has no extra {match[1]!r}"
        dry = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps"]
        result = subprocess.run(
            [*dry, "--no-build-isolation", "--quiet", target],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"`{command}` (dry run):\n{result.stderr}"
    elif argv == ["bash", "tests/run_all.sh"]:
        script = REPO_ROOT / "tests" / "run_all.sh"
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
        # The suite runs through the wheel matrix: pytest per CPython with the built wheel.
        assert "python3 tests/wheel_matrix.py" in script.read_text()
        assert '"-m", "pytest"' in (REPO_ROOT / "tests" / "wheel_matrix.py").read_text()
    elif argv == ["python3", "examples/demo.py"]:
        completed = subprocess.run(
            [sys.executable, "examples/demo.py"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        # `blazen-peer demo`'s output (examples/demo.py runs it).
        assert 'result: {"words":4,' in completed.stdout, completed.stdout
        assert 'state:  {"language":"en"}' in completed.stdout, completed.stdout
    elif argv[:2] == ["python3", "benches/run_all.py"]:
        result = subprocess.run(
            [sys.executable, "benches/run_all.py", "--help"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        for flag in argv[2:]:
            assert flag in result.stdout, f"`{command}`: benches/run_all.py has no {flag}"
    else:
        pytest.fail(f"`{command}`: a README command this test does not know how to run")


@pytest.mark.timeout(SCENARIO_SECS)
def test_install_and_test_commands() -> None:
    (block,) = blocks_of(TOP, 1)
    for line in block.command_lines():
        for command in line.split("&&"):
            check_command(command.strip())


def test_benchmark_command() -> None:
    (block,) = blocks_of(PERFORMANCE, 1)
    for line in block.command_lines():
        for command in line.split("&&"):
            check_command(command.strip())


# --- the example scripts, as the README's text describes them ---


@pytest.fixture
def peer_b() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """examples/peer_b.py on a free port, stopped with Ctrl-C (SIGINT) as a user would."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "peer_b.py"), "127.0.0.1:0"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = read_line(proc, STARTUP_TIMEOUT_SECS)
    if "listening on" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=EXIT_TIMEOUT_SECS)
        pytest.fail(f"peer_b.py did not report its address (stdout: {line!r}); stderr:\n{err!r}")
    yield proc, "http://" + line.rsplit(" ", 1)[1].strip()
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=EXIT_TIMEOUT_SECS)


async def test_peer_b_example_serves_the_readme_pipeline_and_stops_on_ctrl_c(
    peer_b: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, address = peer_b
    async with await PeerClient.connect(address, node_id="node-a") as client:
        response = await client.invoke_sub_workflow(
            workflow_name="analyze-pipeline",
            step_ids=["my_app::analyze", "my_app::summarize"],
            input={"document": "the quick brown fox"},
            timeout_secs=60,
        )
    assert response.result == {"words": 4, "summary": "the quick brown fox"}
    assert response.state == {"language": "en"}
    assert response.error is None

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=EXIT_TIMEOUT_SECS)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert b"Traceback" not in err, err.decode(errors="replace")


def test_claims_of_a_block_are_checked(tmp_path: Path) -> None:
    """The runner fails a block whose claim does not hold, names the line, and
    ignores prose comments; a missing import fails as it would for a reader."""
    block = tmp_path / "block.py"

    def run(text: str) -> subprocess.CompletedProcess[str]:
        block.write_text(text)
        return subprocess.run(
            [sys.executable, str(README_RUN), "block", str(block)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert run("x = 2\nx + 1   # 3\nx   # the answer\n").returncode == 0
    failed = run("import asyncio\nawait asyncio.sleep(0)\nvalue = {'a': 1}\nvalue  # {'a': 2}\n")
    assert failed.returncode != 0
    assert "claim on line 4" in failed.stderr and "{'a': 1}" in failed.stderr, failed.stderr
    missing = run("os.environ  # {}\n")
    assert "NameError: name 'os' is not defined" in missing.stderr, missing.stderr
