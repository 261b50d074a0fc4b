#!/usr/bin/env bash
# The whole test suite (what CI runs through .ci/run):
#   setup (packages, venv, libonnxruntime, perf_analyzer, the real models; no build), rustfmt,
#   clippy, cargo tests, and the Python conformance suite against the real binary.
# The real models are found through SLUICE_MODELS (default $SLUICE_HOME/models, which setup
# fills); the Redis tests use a redis-server on 127.0.0.1:6379, started here when none answers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

bold='' plain=''
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then bold=$'\033[1m' plain=$'\033[0m'; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }

step "setup (scripts/setup.sh --no-build)"
bash scripts/setup.sh --no-build

export SLUICE_HOME="${SLUICE_HOME:-$HOME/.local/share/sluice}"
export SLUICE_MODELS="${SLUICE_MODELS:-$SLUICE_HOME/models}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$SLUICE_HOME/lib/libonnxruntime.so}"
# The conformance suite drives the debug build that `cargo test` already compiled: a release
# build would double CI time and the suite checks behaviour, not speed.
export SLUICE_BIN="${SLUICE_BIN:-$PWD/target/debug/sluice}"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# sluice-jobs' Redis store tests talk to 127.0.0.1:6379. A Debian install starts the service;
# a container without systemd does not, so start one for the run.
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    step "redis-server on 127.0.0.1:6379 (for this run)"
    redis_dir="$(mktemp -d)"
    redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" >"$redis_dir/log" 2>&1 &
    redis_pid=$!
    trap 'kill "$redis_pid" 2>/dev/null || true; rm -rf "$redis_dir"' EXIT
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break
        kill -0 "$redis_pid" 2>/dev/null || { cat "$redis_dir/log" >&2; exit 1; }
        sleep 0.1
    done
fi

step "cargo test"
cargo test --workspace

# `cargo test --workspace` built target/debug/sluice already (the CLI tests run it); a separate
# `cargo build -p sluice` would resolve features differently and rebuild half the tree.
[[ -x "$SLUICE_BIN" ]] || { step "cargo build --workspace"; cargo build --workspace; }

step "conformance tests"
.venv/bin/pytest -q tests/conformance

# The image's Dockerfile and the Helm chart, checked offline (docs/deploy.md): hadolint, yamllint,
# helm lint and template, kubernetes-validate, the CRD schemas, checkov, and the chart's arguments
# against $SLUICE_BIN. Its tools install into gitignored folders the first time (about a minute).
step "deploy validation (scripts/validate-deploy.sh)"
bash scripts/validate-deploy.sh
