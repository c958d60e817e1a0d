"""The API reference (mkdocs.yml, docs/) stays complete and true.

The build itself (``mkdocs build --strict``, a step of tests/run_all.sh) fails on a
docstring that references nothing. These tests check what the build cannot see: every
name of ``blazen_peer.__all__`` has a reference entry, and docs/cli.md shows each
command's ``--help`` as the installed command prints it. ``python3 tests/test_docs.py``
rewrites those ``--help`` blocks of docs/cli.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import blazen_peer

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"
CLI_PAGE = DOCS / "cli.md"
# Argparse wraps to the terminal's width; the page shows it at 80 columns, as
# Python 3.11 to 3.13 print it (no colour: 3.14 colours only a terminal).
HELP_ENV = {"COLUMNS": "80", "NO_COLOR": "1", "PYTHON_COLORS": "0"}
# <!-- help: blazen-peer serve --help --> followed by a text block: the command's help.
HELP_BLOCK = re.compile(
    r"(<!-- help: blazen-peer (?P<args>[\w -]*?) ?--help -->\n```text\n)(?P<text>.*?)(```)",
    re.DOTALL,
)


def help_text(args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "blazen_peer", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **HELP_ENV},
    )
    return result.stdout


def commands() -> list[str]:
    """The subcommands ``blazen-peer --help`` lists."""
    listing = help_text([]).split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^ {4}(\w+) ", listing, re.MULTILINE)


def rewritten(page: str) -> str:
    """``page`` with each ``--help`` block replaced by what the command prints now."""
    return HELP_BLOCK.sub(
        lambda m: m[1] + help_text(m["args"].split()) + m[4],
        page,
    )


def test_cli_page_has_every_command() -> None:
    listed = commands()
    assert "serve" in listed, listed
    documented = [m["args"] for m in HELP_BLOCK.finditer(CLI_PAGE.read_text())]
    assert documented == ["", *listed], (
        f"docs/cli.md documents {documented}; `blazen-peer --help` lists {listed}: "
        "add or remove a section (a heading, a sentence and an empty help block), "
        "then run `python3 tests/test_docs.py`"
    )


def test_cli_page_shows_the_help_as_printed() -> None:
    page = CLI_PAGE.read_text()
    assert page == rewritten(page), (
        "docs/cli.md shows `--help` output the command no longer prints: run "
        "`python3 tests/test_docs.py` to rewrite it (and check the prose around it)"
    )


def test_every_public_name_has_a_reference_entry() -> None:
    entries = {
        match[1]
        for page in DOCS.rglob("*.md")
        for match in re.finditer(r"^::: blazen_peer\.(\w+)\s*$", page.read_text(), re.MULTILINE)
    }
    missing = sorted(set(blazen_peer.__all__) - entries)
    assert not missing, f"no `::: blazen_peer.NAME` entry in docs/ for {missing}"


def test_the_test_extra_builds_the_docs() -> None:
    """tests/run_all.sh builds the reference; `pip install ".[test]"` must bring its tools."""
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    missing = sorted(set(extras["docs"]) - set(extras["test"]))
    assert not missing, f"pyproject.toml: the test extra lacks the docs extra's {missing}"


if __name__ == "__main__":
    CLI_PAGE.write_text(rewritten(CLI_PAGE.read_text()))
    print(f"rewrote the --help blocks of {CLI_PAGE.relative_to(REPO_ROOT)}")
