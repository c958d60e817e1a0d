"""Embedding a peer in an application: `serve()` borrows SIGTERM and SIGINT only from
a process that leaves both to their defaults, never from an application that handles
them itself, and gives back exactly what it replaced; the README's embedding example
(`start()`/`stop()` in the application's own startup and shutdown) runs as written.

Each case is an application in its own process (tests/embedding_app.py, or the
README's example); the tests wait for the lines it prints, never for a while.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blazen_peer import PeerClient
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, STARTUP_TIMEOUT_SECS, TESTS_DIR

EMBEDDING_APP = TESTS_DIR / "embedding_app.py"
EMBED_EXAMPLE = REPO_ROOT / "examples" / "embed_in_app.py"
LINE_TIMEOUT_SECS = 10.0

SIGNALS = pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)


class App:
    """A running application process, its stdout read line by line."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.lines: list[str] = []
        self._buffer = b""

    def read_line(self, timeout: float) -> str:
        """The next line of stdout without its newline ("" at end of file or timeout);
        unlike conftest.read_line it keeps what arrived past that line for the next."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    break
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def expect(self, pattern: str, timeout: float = LINE_TIMEOUT_SECS) -> re.Match[str]:
        """The next line, which must match ``pattern`` (a regular expression)."""
        line = self.read_line(timeout)
        self.lines.append(line)
        match = re.fullmatch(pattern, line)
        assert match, (
            f"expected a line matching {pattern!r}, got {line!r} "
            f"(status {self.proc.poll()}); lines so far: {self.lines}\nstderr:\n{self.stderr()}"
        )
        return match

    def ready(self) -> tuple[str, str, str]:
        """Waits for `READY HOST:PORT SIGTERM=... SIGINT=...`: (address, SIGTERM, SIGINT)."""
        match = self.expect(r"READY (\S+) SIGTERM=(\S+) SIGINT=(\S+)", STARTUP_TIMEOUT_SECS)
        return f"http://{match[1]}", match[2], match[3]

    def exit_status(self) -> int:
        return self.proc.wait(timeout=EXIT_TIMEOUT_SECS)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT_SECS)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Starts `python ARGS...`; kills what is still running after the test."""
    started: list[App] = []

    def start(*args: str) -> App:
        app = App(list(args), tmp_path / f"stderr-{len(started)}.txt")
        started.append(app)
        return app

    yield start
    for app in started:
        app.close()


def echo(address: str, value: str) -> str:
    with PeerClient.connect_blocking(address, node_id="node-a") as client:
        result: str = client.run_remote_workflow_blocking("wf", ["embed::echo"], value)
        return result


# --- an application that handles the signals itself ---


@pytest.mark.parametrize("mode", ["app-loop", "app-signal"])
@SIGNALS
def test_serve_leaves_the_applications_own_handlers_in_charge(
    start_app: Callable[..., App], mode: str, signum: signal.Signals
) -> None:
    app = start_app(str(EMBEDDING_APP), mode)
    address, sigterm, sigint = app.ready()
    # serve() replaced neither handler: both are still the application's.
    expected = "loop" if mode == "app-loop" else "app"
    assert (sigterm, sigint) == (expected, expected)
    assert echo(address, "hi") == "hi"

    app.proc.send_signal(signum)
    # The application's handler ran (not serve()'s: serve() is still serving) ...
    app.expect(f"APP HANDLER {signum.name}")
    # ... and the application stopped the peer (a graceful drain) the way it chose.
    app.expect("SERVE CANCELLED")
    app.expect("PEER STOPPED True")
    # After serve() ended, the application's handlers are still the ones that run.
    for again in (signal.SIGTERM, signal.SIGINT):
        app.expect(f"APP HANDLER {again.name}")
        app.expect(f"APP HANDLER STILL IN PLACE {again.name}")
    app.expect("APP STOPPED")
    assert app.exit_status() == 0, app.stderr()
    assert "Traceback" not in app.stderr()


def test_serve_in_a_side_task_leaves_ctrl_c_to_asyncio_run(start_app: Callable[..., App]) -> None:
    app = start_app(str(EMBEDDING_APP), "side-task")
    address, sigterm, sigint = app.ready()
    # asyncio.run() owns Ctrl-C (it cancels its main task, not the peer's): left alone.
    assert (sigterm, sigint) == ("SIG_DFL", "asyncio.run")
    assert echo(address, "side") == "side"
    app.proc.send_signal(signal.SIGINT)
    # Ctrl-C ended the application as it would without the peer; the peer drained on
    # its way out (its task was cancelled).
    app.expect("PEER STOPPED True")
    app.expect("KEYBOARD INTERRUPT")
    assert app.exit_status() == 0, app.stderr()


# --- a process that handles no signal: serve() does, then gives them back ---


@SIGNALS
def test_serve_stops_on_a_signal_and_restores_the_default_handlers(
    start_app: Callable[..., App], signum: signal.Signals
) -> None:
    app = start_app(str(EMBEDDING_APP), "default")
    address, sigterm, sigint = app.ready()
    assert (sigterm, sigint) == ("loop", "loop")  # serve()'s own, on the loop
    assert echo(address, "alone") == "alone"
    app.proc.send_signal(signum)
    app.expect("SERVE RETURNED")
    # Inside asyncio.run() SIGINT is asyncio.run()'s handler again (the same object,
    # not Python's default), SIGTERM SIG_DFL, and the loop handles neither.
    app.expect("RESTORED True")
    app.expect("LOOP HANDLERS False")
    app.expect("AFTER SIGTERM=SIG_DFL SIGINT=default_int_handler")
    assert app.exit_status() == 0, app.stderr()
    assert "Traceback" not in app.stderr()


def test_serve_leaves_an_ignored_sigint_ignored(start_app: Callable[..., App]) -> None:
    app = start_app(str(EMBEDDING_APP), "default-ignore-sigint")
    address, sigterm, sigint = app.ready()
    # A background job's SIGINT stays ignored; SIGTERM still drains the peer.
    assert (sigterm, sigint) == ("loop", "SIG_IGN")
    assert echo(address, "bg") == "bg"
    app.proc.send_signal(signal.SIGTERM)
    app.expect("SERVE RETURNED")
    app.expect("RESTORED True")
    app.expect("LOOP HANDLERS False")
    app.expect("AFTER SIGTERM=SIG_DFL SIGINT=SIG_IGN")
    assert app.exit_status() == 0, app.stderr()


@SIGNALS
def test_serve_blocking_restores_the_default_handlers(
    start_app: Callable[..., App], signum: signal.Signals
) -> None:
    app = start_app(str(EMBEDDING_APP), "blocking")
    address, sigterm, sigint = app.ready()
    assert (sigterm, sigint) == ("loop", "loop")
    assert echo(address, "blocking") == "blocking"
    app.proc.send_signal(signum)
    app.expect("SERVE RETURNED")
    app.expect("RESTORED True")
    app.expect("AFTER SIGTERM=SIG_DFL SIGINT=default_int_handler")
    assert app.exit_status() == 0, app.stderr()
    assert "Traceback" not in app.stderr()


def test_cancelled_serve_restores_its_handlers_and_keeps_one_installed_meanwhile(
    start_app: Callable[..., App],
) -> None:
    app = start_app(str(EMBEDDING_APP), "cancel-replaced")
    _, sigterm, sigint = app.ready()
    assert (sigterm, sigint) == ("loop", "loop")
    # The application put its own SIGTERM handler on the loop while serve() ran, then
    # cancelled serve(): SIGINT is Python's default again, SIGTERM still the app's.
    app.expect("SERVE CANCELLED")
    app.expect("SIGINT RESTORED True")
    app.expect("APP HANDLER STILL IN PLACE SIGTERM")
    assert app.exit_status() == 0, app.stderr()


# --- the README's embedding example ---


def readme_python_blocks() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```$", readme, flags=re.MULTILINE | re.DOTALL)


def test_readme_embedding_example_is_the_example_file() -> None:
    example = EMBED_EXAMPLE.read_text()
    assert example.startswith("# examples/embed_in_app.py\n")
    assert example in readme_python_blocks(), (
        "README.md's 'Embedding in an existing asyncio app' block must be "
        "examples/embed_in_app.py verbatim (the tests run the file)"
    )


@SIGNALS
def test_readme_embedding_example_runs_and_stops_with_the_app(
    start_app: Callable[..., App], signum: signal.Signals
) -> None:
    app = start_app(str(EMBED_EXAMPLE), "127.0.0.1:0")
    match = app.expect(r"app and peer up, peer on (\S+)", STARTUP_TIMEOUT_SECS)
    with PeerClient.connect_blocking(f"http://{match[1]}", node_id="node-a") as client:
        assert client.run_remote_workflow_blocking("wf", ["my_app::greet"], "a") == "hello, a"
    app.proc.send_signal(signum)
    app.expect("app and peer stopped")
    assert app.exit_status() == 0, app.stderr()
    assert "Traceback" not in app.stderr()
