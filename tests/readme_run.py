"""How tests/test_readme_examples.py runs the README's Python blocks, and waits for peers.

    python tests/readme_run.py block BLOCK.py
    python tests/readme_run.py wait URL [--ca FILE --cert FILE --key FILE] [--timeout SECS]

``block`` runs one block as written, the way ``python -m asyncio`` (or IPython, or
Jupyter) runs what is typed into it, which is what the README tells readers:

* ``await`` at top level runs on an event loop; a block without one runs as a script;
* the block runs as module ``__main__`` with nothing else defined (a missing import
  fails as it would for a reader), and the current directory first on ``sys.path``
  (so ``from trainer import Progress`` finds the README's ``trainer.py`` next to it);
* a claim is checked: an expression statement whose comment is exactly a Python
  literal (``resp.error    # None``) must evaluate to that value, or the block fails
  naming the line. Comments that are prose are not claims.

``wait`` polls the peer at URL until its health check answers SERVING (exit 0), or
exits 1 after ``--timeout`` seconds (30) saying what it last saw.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import builtins
import inspect
import io
import sys
import time
import tokenize
import types
from pathlib import Path
from typing import Any

CLAIM = "__readme_claim__"


def _comments(source: str) -> dict[int, str]:
    """The text of the comment ending each line, by line number."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string[1:].strip()
    return found


def _literal(text: str) -> ast.expr | None:
    """The expression of ``text`` when it is exactly a Python literal, else None."""
    try:
        node = ast.parse(text, mode="eval").body
        ast.literal_eval(node)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    return node


class _Claims(ast.NodeTransformer):
    """Turns ``expr  # literal`` statements into checks of the claim."""

    def __init__(self, comments: dict[int, str]) -> None:
        self.comments = comments
        self.count = 0

    def visit_Expr(self, node: ast.Expr) -> ast.stmt:
        line = node.end_lineno or node.lineno
        expected = _literal(self.comments.get(line, ""))
        if expected is None:
            return node
        self.count += 1
        check = ast.Call(
            func=ast.Name(id=CLAIM, ctx=ast.Load()),
            args=[ast.Constant(line), ast.Constant(self.comments[line]), node.value, expected],
            keywords=[],
        )
        return ast.copy_location(ast.Expr(value=check), node)


def _check_claim(line: int, text: str, value: Any, expected: Any) -> None:
    if value != expected:
        raise AssertionError(
            f"README claim on line {line} of the block does not hold: the value is "
            f"{value!r}, the comment says # {text}"
        )


def run_block(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    claims = _Claims(_comments(source))
    tree = ast.fix_missing_locations(claims.visit(tree))
    code = compile(tree, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    main = types.ModuleType("__main__")
    main.__dict__.update({"__builtins__": builtins, CLAIM: _check_claim})
    sys.modules["__main__"] = main
    sys.path[0] = ""  # the current directory, as in `python -m asyncio`
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, main.__dict__))
    else:
        exec(code, main.__dict__)
    print(f"readme_run: block ran, {claims.count} claim(s) held", file=sys.stderr)


def wait_serving(url: str, tls: dict[str, str], timeout_secs: float) -> int:
    from blazen_peer import ClientTls, PeerClient, PeerError

    client_tls = ClientTls.from_pem(**tls) if tls else None
    deadline = time.monotonic() + timeout_secs
    last = "nothing yet"
    while time.monotonic() < deadline:
        try:
            with PeerClient.connect_blocking(url, node_id="readme-wait", tls=client_tls) as client:
                status = client.health_blocking(timeout_secs=2)
            if status == "SERVING":
                return 0
            last = f"health {status}"
        except PeerError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    print(f"readme_run: {url} not SERVING within {timeout_secs} s; last: {last}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    block = commands.add_parser("block")
    block.add_argument("path", type=Path)
    wait = commands.add_parser("wait")
    wait.add_argument("url")
    wait.add_argument("--timeout", type=float, default=30.0)
    for name in ("ca", "cert", "key"):
        wait.add_argument(f"--{name}")
    args = parser.parse_args()
    if args.command == "block":
        run_block(args.path)
        return 0
    tls = {name: getattr(args, name) for name in ("ca", "cert", "key") if getattr(args, name)}
    return wait_serving(args.url, tls, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
