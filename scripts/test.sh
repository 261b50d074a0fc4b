#!/usr/bin/env bash
# The whole test suite (what CI runs through .ci/run):
#   setup (venv, libonnxruntime, perf_analyzer; no build), rustfmt, clippy, cargo tests,
#   and the Python conformance suite against the real binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "setup (scripts/setup.sh --no-build)"
bash scripts/setup.sh --no-build

export SLUICE_HOME="${SLUICE_HOME:-$HOME/.local/share/sluice}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$SLUICE_HOME/lib/libonnxruntime.so}"
# The conformance suite drives the debug build that `cargo test` already compiled: a release
# build would double CI time and the suite checks behaviour, not speed.
export SLUICE_BIN="${SLUICE_BIN:-$PWD/target/debug/sluice}"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace

# `cargo test --workspace` built target/debug/sluice already (the CLI tests run it); a separate
# `cargo build -p sluice` would resolve features differently and rebuild half the tree.
[[ -x "$SLUICE_BIN" ]] || { step "cargo build --workspace"; cargo build --workspace; }

step "conformance tests"
.venv/bin/pytest -q tests/conformance
