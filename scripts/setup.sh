#!/usr/bin/env bash
# Set up everything Sluice's builds, tests and benchmarks need on this machine. Idempotent:
# each step is skipped when its result is already in place.
#
#   scripts/setup.sh [--no-build] [--no-redis] [--force]
#
#   1. .venv in the repo root with scripts/requirements.txt
#   2. libonnxruntime.so (from the onnxruntime wheel) in $SLUICE_HOME/lib/
#      -> export ORT_DYLIB_PATH=$SLUICE_HOME/lib/libonnxruntime.so
#   3. Triton's perf_analyzer (from the tritonclient manylinux wheel) as $SLUICE_HOME/bin/perf_analyzer,
#      with Debian's libb64-0d and libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel
#   4. redis-server and wrk from apt if missing (optional: --no-redis; a failure only warns)
#   5. examples/models regenerated if any file is missing
#   6. cargo build --release -p sluice (skipped with --no-build)
#
# SLUICE_HOME defaults to ~/.local/share/sluice. --force redoes steps 1-3 and 5.
# $SLUICE_HOME/env.sh is written with the variables to export (ORT_DYLIB_PATH, SLUICE_HOME).
set -euo pipefail

build=1
redis=1
force=0
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --no-redis) redis=0 ;;
        --force) force=1 ;;
        -h | --help)
            sed -n '2,18p' "$0"
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
SLUICE_HOME="${SLUICE_HOME:-$HOME/.local/share/sluice}"
venv="$repo_root/.venv"
py="$venv/bin/python"
reqs="$repo_root/scripts/requirements.txt"
TRITONCLIENT_VERSION=2.51.0

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# Run a command as root (directly, or through sudo when available).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "setup.sh: need root for: $*" >&2
        return 1
    fi
}

# apt-get install PKG...; runs apt-get update first only if the install fails.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y --no-install-recommends "$@"; then
        log "apt-get install $* failed; running apt-get update and retrying"
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
# 1. Python virtual environment
if [[ ! -x "$py" ]]; then
    log "creating $venv"
    if ! python3 -m venv "$venv"; then
        # Debian's own python3 needs python3-venv for ensurepip.
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
fi
stamp="$venv/.sluice-requirements.sha256"
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [[ $force -eq 1 || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "installing $reqs into $venv"
    "$py" -m pip install --disable-pip-version-check -q -r "$reqs"
    echo "$want" >"$stamp"
else
    log "python requirements already installed ($venv)"
fi

# Directory of an installed Python package (without importing it).
pkg_dir() {
    "$py" - "$1" <<'EOF'
import importlib.util, sys
spec = importlib.util.find_spec(sys.argv[1])
if spec is None or not spec.submodule_search_locations:
    sys.exit(f"package {sys.argv[1]} is not installed in the venv")
print(list(spec.submodule_search_locations)[0])
EOF
}

# ---------------------------------------------------------------------------------------------
# 2. libonnxruntime.so for the `ort` crate (load-dynamic)
ort_capi="$(pkg_dir onnxruntime)/capi"
mkdir -p "$SLUICE_HOME/lib" "$SLUICE_HOME/bin"
real_lib=""
shopt -s nullglob
for f in "$ort_capi"/libonnxruntime.so*; do
    dest="$SLUICE_HOME/lib/$(basename "$f")"
    if [[ $force -eq 1 || ! -f "$dest" ]] || ! cmp -s "$f" "$dest"; then
        install -m 0644 "$f" "$dest"
    fi
    # The versioned file (libonnxruntime.so.1.32.0) is the real library.
    [[ "$(basename "$f")" == libonnxruntime.so.* ]] && real_lib="$(basename "$f")"
done
shopt -u nullglob
if [[ -z "$real_lib" ]]; then
    echo "setup.sh: no libonnxruntime.so.* in $ort_capi" >&2
    exit 1
fi
ln -sfn "$real_lib" "$SLUICE_HOME/lib/libonnxruntime.so"
ort_lib="$SLUICE_HOME/lib/libonnxruntime.so"
log "onnxruntime library: $ort_lib -> $real_lib"

# ---------------------------------------------------------------------------------------------
# 3. perf_analyzer
pa_bin="$SLUICE_HOME/bin/perf_analyzer.bin"
pa="$SLUICE_HOME/bin/perf_analyzer"
if [[ $force -eq 1 || ! -x "$pa_bin" ]]; then
    log "extracting perf_analyzer from the tritonclient==$TRITONCLIENT_VERSION manylinux wheel"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$py" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
        --platform manylinux1_x86_64 -d "$tmp" "tritonclient==$TRITONCLIENT_VERSION"
    "$py" - "$tmp" "$pa_bin.tmp" "$TRITONCLIENT_VERSION" <<'EOF'
import glob, sys, zipfile
tmp, dest, version = sys.argv[1:]
wheels = glob.glob(f"{tmp}/tritonclient-{version}-*manylinux1_x86_64.whl")
if not wheels:
    sys.exit(f"no manylinux1 tritonclient wheel downloaded into {tmp}")
with zipfile.ZipFile(wheels[0]) as z, open(dest, "wb") as out:
    out.write(z.read(f"tritonclient-{version}.data/data/bin/perf_analyzer"))
EOF
    chmod 0755 "$pa_bin.tmp"
    mv -f "$pa_bin.tmp" "$pa_bin"
    rm -rf "$tmp"
    trap - EXIT
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    log "installing libb64-0d (needed by perf_analyzer)"
    apt_install libb64-0d
fi
cudart_lib="$(pkg_dir nvidia.cuda_runtime)/lib"
if [[ ! -e "$cudart_lib/libcudart.so.12" ]]; then
    echo "setup.sh: libcudart.so.12 not found in $cudart_lib (nvidia-cuda-runtime-cu12)" >&2
    exit 1
fi
cat >"$pa.tmp" <<EOF
#!/usr/bin/env bash
# Generated by scripts/setup.sh: perf_analyzer needs libcudart.so.12 from the venv.
export LD_LIBRARY_PATH="$cudart_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$pa_bin" "\$@"
EOF
chmod 0755 "$pa.tmp"
mv -f "$pa.tmp" "$pa"
# perf_analyzer has no --help option: it prints its usage and exits non-zero. Check the usage
# text and that every shared library resolves.
pa_help="$("$pa" --help 2>&1 || true)"
if ! grep -q 'perf_analyzer' <<<"$pa_help" || ! grep -q -- '--concurrency-range' <<<"$pa_help"; then
    echo "setup.sh: $pa does not run:" >&2
    echo "$pa_help" | tail -n 20 >&2
    exit 1
fi
if LD_LIBRARY_PATH="$cudart_lib" ldd "$pa_bin" | grep -q 'not found'; then
    echo "setup.sh: perf_analyzer has unresolved libraries:" >&2
    LD_LIBRARY_PATH="$cudart_lib" ldd "$pa_bin" | grep 'not found' >&2
    exit 1
fi
log "perf_analyzer: $pa ($("$pa" --version 2>&1 | head -n 1))"

# ---------------------------------------------------------------------------------------------
# 4. wrk, the HTTP load generator of bench/transport.py (optional: a failure only warns)
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk (benchmarks)"
    apt_install wrk || log "warning: could not install wrk (only bench/transport.py needs it)"
fi

# 4. redis-server (not needed yet; for the Redis-backed job queue later)
if [[ $redis -eq 1 ]] && ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    apt_install redis-server || log "warning: could not install redis-server (optional)"
fi

# ---------------------------------------------------------------------------------------------
# 5. example models
missing=0
for f in add_sub/config.pbtxt add_sub/1/model.onnx identity/1/model.onnx \
    identity_bytes/config.pbtxt identity_bytes/1/model.onnx iris/config.yaml iris/1/model.onnx; do
    [[ -f "examples/models/$f" ]] || missing=1
done
if [[ $force -eq 1 || $missing -eq 1 ]]; then
    log "generating examples/models"
    "$py" scripts/gen_example_models.py
else
    log "example models present (examples/models)"
fi

# ---------------------------------------------------------------------------------------------
cat >"$SLUICE_HOME/env.sh" <<EOF
# Generated by scripts/setup.sh; source it to run sluice and perf_analyzer by hand.
export SLUICE_HOME="$SLUICE_HOME"
export ORT_DYLIB_PATH="$ort_lib"
export PATH="$SLUICE_HOME/bin:\$PATH"
EOF

# 6. the server
if [[ $build -eq 1 ]]; then
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    log "cargo build --release -p sluice"
    ORT_DYLIB_PATH="$ort_lib" cargo build --release -p sluice
fi

echo
echo "onnxruntime:   $ort_lib   (export ORT_DYLIB_PATH=$ort_lib)"
echo "perf_analyzer: $pa"
echo "environment:   source $SLUICE_HOME/env.sh"
if [[ $build -eq 1 ]]; then
    echo "sluice:        $repo_root/target/release/sluice"
fi
