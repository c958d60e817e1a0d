"""The README's example scripts, run as the README tells users to run them."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from blazen_peer import PeerClient
from conftest import EXIT_TIMEOUT_SECS, REPO_ROOT, STARTUP_TIMEOUT_SECS, read_line

EXAMPLES = REPO_ROOT / "examples"


def test_demo_script_runs_the_two_process_example() -> None:
    demo = EXAMPLES / "demo.py"
    assert demo.is_file(), f"{demo} is missing"
    completed = subprocess.run(
        [sys.executable, str(demo)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    output = completed.stdout
    assert completed.returncode == 0, f"stdout:\n{output}\nstderr:\n{completed.stderr}"
    assert "'words': 4" in output, output
    assert "'language': 'en'" in output, output


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
