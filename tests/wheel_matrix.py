"""Build the wheel users would install, check its tag, run the suite with it on each CPython.

The wheel is built once with ``maturin --zig`` against glibc 2.17, so one abi3 file
installs on any manylinux2014 system and any CPython >= 3.11. ``auditwheel show`` then
says which policy the binary really satisfies, and the tag the file name claims must not
be newer than that (a wheel claiming an older glibc than it needs installs and then fails
to import). The same file is installed, with the test extra, into a fresh venv per
CPython the wheel claims and this machine has, and the whole pytest suite runs in each.

    python3 tests/wheel_matrix.py                      # 3.11, 3.12, 3.13
    python3 tests/wheel_matrix.py --pythons 3.12 -- -x tests/test_client.py
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The oldest glibc zig can target that Rust's std still supports; also PyPI's widest
# manylinux policy for x86_64 that current toolchains can meet.
MANYLINUX = "manylinux2014"
MANYLINUX_GLIBC = (2, 17)
DEFAULT_PYTHONS = ("3.11", "3.12", "3.13")


def build_wheel(out_dir: Path) -> Path:
    # --locked: the wheel is built from the versions Cargo.lock pins, like CI's checks.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maturin",
            "build",
            "--release",
            "--locked",
            "--zig",
            "--compatibility",
            MANYLINUX,
            "--out",
            str(out_dir),
        ],
        cwd=REPO_ROOT,
        check=True,
    )
    (wheel,) = out_dir.glob("*.whl")
    return wheel


def claimed_glibc(wheel: Path) -> tuple[int, int]:
    """The newest glibc the file name's platform tags claim to need."""
    platforms = wheel.stem.split("-")[-1].split(".")
    versions = []
    for platform in platforms:
        if platform == "manylinux2014_x86_64":
            versions.append((2, 17))
        elif m := re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform):
            versions.append((int(m[1]), int(m[2])))
        else:
            raise SystemExit(f"{wheel.name}: platform tag {platform!r} is not a manylinux tag")
    return max(versions)


def audited_glibc(wheel: Path) -> tuple[int, int]:
    """The oldest glibc the binary's symbol versions allow, according to auditwheel."""
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    print(shown.strip())
    m = re.search(r'consistent with the following platform tag:\s*"manylinux_(\d+)_(\d+)_', shown)
    if m is None:
        raise SystemExit(f"auditwheel found no manylinux policy for {wheel.name}:\n{shown}")
    return int(m[1]), int(m[2])


def check_wheel(wheel: Path) -> None:
    if "-cp311-abi3-" not in wheel.name:
        raise SystemExit(f"{wheel.name}: expected one abi3 wheel for CPython >= 3.11")
    claimed, audited = claimed_glibc(wheel), audited_glibc(wheel)
    if claimed < audited:
        raise SystemExit(
            f"{wheel.name} claims glibc {claimed} but its symbols need {audited}: "
            "its tag would let pip install it where it cannot load"
        )
    if audited > MANYLINUX_GLIBC:
        raise SystemExit(f"{wheel.name} needs glibc {audited}, newer than {MANYLINUX}")
    print(f"wheel OK: claims glibc {claimed}, auditwheel agrees it needs {audited}")


def find_python(version: str) -> str | None:
    """`pythonX.Y` on PATH, else a pyenv install of it (pyenv shims hide non-global ones)."""
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [f"python{version}"]
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is None:
            continue
        probe = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return path
    return None


def run_suite(python: str, wheel: Path, venv: Path, pytest_args: list[str]) -> int:
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    venv_python = venv / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [str(venv_python), "-m", "pip", "install", "-q", f"{wheel}[test]"], check=True, env=env
    )
    # Tests start `blazen-peer` and `python` by name: this venv's, not the caller's.
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(venv_python), "-m", "pytest", *pytest_args], cwd=REPO_ROOT, env=env
    ).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythons", nargs="+", default=list(DEFAULT_PYTHONS), metavar="X.Y")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="blazen-wheel-") as tmp:
        wheel = build_wheel(Path(tmp) / "dist")
        check_wheel(wheel)
        results: dict[str, str] = {}
        for version in args.pythons:
            python = find_python(version)
            if python is None:
                # Not a failure: the wheel claims it, but this machine cannot run it.
                results[version] = "NOT RUN: no CPython of this version on this machine"
                continue
            print(f"== pytest on CPython {version} ({python}) with {wheel.name}", flush=True)
            started = time.monotonic()
            code = run_suite(python, wheel, Path(tmp) / f"venv-{version}", args.pytest_args)
            elapsed = time.monotonic() - started
            results[version] = f"{'passed' if code == 0 else f'FAILED ({code})'} in {elapsed:.0f} s"
        print(f"== {wheel.name}")
        for version, outcome in results.items():
            print(f"   CPython {version}: {outcome}")
        ran = [r for r in results.values() if not r.startswith("NOT RUN")]
        if not ran:
            print("no CPython the wheel claims is installed here", file=sys.stderr)
            return 1
        return 0 if all(r.startswith("passed") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
