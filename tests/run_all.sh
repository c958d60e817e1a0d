#!/usr/bin/env bash
# Every check and test, Rust and Python. Expects the package and its test
# extras installed: pip install ".[test]"
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt"; cargo fmt --all --check
echo "== cargo clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
# The pyo3 crate is a Python extension (it links against the interpreter at
# import time), so its behaviour is tested from Python below.
echo "== cargo test"; cargo test -p blazen-peer-core --locked
# `python3 -m` finds tools that pip just installed even behind pyenv shims.
lint_paths=(python tests examples benches deploy)
echo "== ruff"; python3 -m ruff check "${lint_paths[@]}" && python3 -m ruff format --check "${lint_paths[@]}"
echo "== mypy --strict"; python3 -m mypy
echo "== stubtest"; python3 -m mypy.stubtest blazen_peer._native
echo "== docs"; docs_site=$(mktemp -d) && python3 -m mkdocs build --strict --site-dir "$docs_site" && rm -rf "$docs_site"
# tests/test_interop.py runs the published Rust crate (interop/); its build script needs protoc.
command -v protoc >/dev/null || { s=$([ "$(id -u)" = 0 ] || echo sudo); $s apt-get update -qq && $s apt-get install -y -qq protobuf-compiler; }
echo "== interop harness"; cargo build --release --locked --manifest-path interop/Cargo.toml
# The suite runs with the wheel users would install (manylinux2014, abi3, tag checked by
# auditwheel), in a fresh venv per CPython it claims: 3.11, 3.12 and 3.13.
echo "== wheel, then pytest on each CPython"; python3 tests/wheel_matrix.py
# Every benchmark path once with tiny counts: correctness only, no timing asserted.
# The soak's --quick form does judge: it fails when either process grows with its calls.
echo "== benches (quick)"; python3 benches/run_all.py --quick && python3 benches/pool_throughput.py --quick \
  && python3 benches/values_throughput.py --quick && python3 benches/handoffs.py --quick \
  && python3 benches/soak.py --quick
