#!/usr/bin/env bash
# Build a Sluice/Triton model repository in DIR that serves the real models of the models folder
# through symlinks (nothing is copied, and nothing of it belongs in the git repository).
#
#   scripts/make_models_repo.sh DIR
#   sluice serve --model-repository DIR
#
# The models folder is $SLUICE_MODELS, else $SLUICE_HOME/models, else
# ~/.local/share/sluice/models; scripts/setup.sh fills it (linked from a shared copy, or rebuilt
# from public packages). efficientnet-lite0 is added only when the folder has it (a folder
# rebuilt from packages does not). Rerunning is safe: configs are rewritten and links replaced.
#
# Models (I/O checked with onnxruntime 1.32):
#   spam-fast, spam-accurate  input_ids, attention_mask INT64 [batch, seq]
#                             -> probabilities FP32 [batch, 2], label INT64 [batch]
#   spam-text, spam-text-accurate  the same taking TEXT (BYTES), tokenized by the server
#   spam-cascade              an endpoint: spam-text, then spam-text-accurate when it is unsure
#   spam-shadow               an endpoint: spam-text answers, spam-text-accurate gets a copy
#   spam-rollout              an endpoint: spam-text-accurate rolled out over spam-text in steps
#   efficientnet-lite0        input FP32 [N, 3, 224, 224] -> logits FP32 [N, 1000]
set -euo pipefail

if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 DIR   (builds a model repository in DIR linking to the models of \$SLUICE_MODELS)" >&2
    exit 2
fi

models="${SLUICE_MODELS:-${SLUICE_HOME:-$HOME/.local/share/sluice}/models}"
if [[ ! -d "$models" ]]; then
    echo "error: models folder not found: $models (run scripts/setup.sh, or set SLUICE_MODELS)" >&2
    exit 1
fi
models="$(cd "$models" && pwd)"

dir="$(realpath -m -- "$1")"
# Writing configs into the models folder (or through its links into a read-only shared copy)
# would mix a repository into the models it serves.
case "$dir/" in
    "$models"/* | "$(realpath -m -- "$models")"/*)
        echo "error: DIR must be outside the models folder ($models)" >&2
        exit 1
        ;;
esac
mkdir -p "$dir"

# link SRC DEST: replace DEST with a symlink to SRC (which must exist).
link() {
    if [[ ! -e "$1" ]]; then
        echo "error: missing $1 (run scripts/setup.sh)" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$2")"
    ln -sfn "$1" "$2"
}

spam_config() {
    cat <<EOF
# $1: MiniLM encoder + mean pooling + logistic head (int8), from $models/${2:-$1}.
# Written by scripts/make_models_repo.sh.
name: "$1"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  {
    name: "input_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  },
  {
    name: "attention_mask"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 2 ]
    label_filename: "labels.txt"
  },
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: { shape: [ ] }
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 2000
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
EOF
}

for m in spam-fast spam-accurate; do
    link "$models/$m/model.onnx" "$dir/$m/1/model.onnx"
    link "$models/$m/tokenizer.json" "$dir/$m/tokenizer.json"
    link "$models/$m/labels.txt" "$dir/$m/labels.txt"
    spam_config "$m" >"$dir/$m/config.pbtxt"
done

# spam-text, spam-text-accurate: spam-fast and spam-accurate taking text (the server tokenizes)
# and answering labels.
for pair in spam-text:spam-fast spam-text-accurate:spam-accurate; do
    name="${pair%%:*}" src="${pair#*:}"
    link "$models/$src/model.onnx" "$dir/$name/1/model.onnx"
    link "$models/$src/tokenizer.json" "$dir/$name/tokenizer.json"
    link "$models/$src/labels.txt" "$dir/$name/labels.txt"
    spam_config "$name" "$src" >"$dir/$name/config.pbtxt"
    cat >>"$dir/$name/config.pbtxt" <<'EOF'
parameters { key: "text_input" value: { string_value: "TEXT" } }
parameters { key: "max_sequence_length" value: { string_value: "128" } }
EOF
done

# spam-cascade: an endpoint (README, "Endpoints"): the fast classifier answers when it is at
# least 90 % sure, the accurate one otherwise.
mkdir -p "$dir/spam-cascade"
cat >"$dir/spam-cascade/endpoint.yaml" <<'EOF'
# Written by scripts/make_models_repo.sh.
kind: cascade
stages:
  - model: spam-text
    confidence: { output: probabilities }
    threshold: 0.9
  - model: spam-text-accurate
EOF

# spam-shadow: an endpoint (README, "Endpoints"): spam-text answers; every request is copied to
# spam-text-accurate off the response path, and their labels are compared.
mkdir -p "$dir/spam-shadow"
cat >"$dir/spam-shadow/endpoint.yaml" <<'EOF'
# Written by scripts/make_models_repo.sh.
kind: shadow
primary: { model: spam-text }
shadows:
  - { model: spam-text-accurate, share: 1.0 }
compare: { output: label }
log: { sample: 0.1 }
EOF

# spam-rollout: a rollout (docs/rollouts.md): spam-text-accurate replaces spam-text, first in the
# shadow, then for 10 % and 50 % of users (x-user-id), each step held 10 minutes, under
# guardrails; `sluice rollout status spam-rollout` follows it.
mkdir -p "$dir/spam-rollout"
cat >"$dir/spam-rollout/endpoint.yaml" <<'EOF'
# Written by scripts/make_models_repo.sh.
kind: rollout
baseline: { model: spam-text }
candidate: { model: spam-text-accurate }
unit: { header: x-user-id }
steps:
  - { shadow: 1.0, hold: 10m, min_requests: 200 }
  - { weight: 10, hold: 10m, min_requests: 200 }
  - { weight: 50, hold: 10m }
  - { weight: 100 }
guardrails:
  - { metric: error_rate, max_increase: 0.01 }
  - { metric: latency_p99, max_ratio: 4.0 }
  - { metric: disagreement, output: label, max: 0.1 }
  - { metric: srm }
EOF

# smollm: a generative model (candle backend). No config: a directory holding
# <version>/model.gguf and tokenizer.json is served as one.
link "$models/smollm2-135m-instruct/model.gguf" "$dir/smollm/1/model.gguf"
link "$models/smollm2-135m-instruct/tokenizer.json" "$dir/smollm/tokenizer.json"

served=(spam-fast spam-accurate spam-text spam-text-accurate)
m=efficientnet-lite0
if [[ -f "$models/$m/model.onnx" ]]; then
    link "$models/$m/model.onnx" "$dir/$m/1/model.onnx"
    link "$models/$m/labels.txt" "$dir/$m/labels.txt"
    cat >"$dir/$m/config.pbtxt" <<'EOF'
# efficientnet-lite0 (ImageNet-1k), from the models folder's efficientnet-lite0.
# Input: RGB, centre crop 224x224, NCHW, pixel values (x - 127) / 128.
# Written by scripts/make_models_repo.sh.
name: "efficientnet-lite0"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 1000
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
EOF
    served+=("$m")
else
    # A stale one from an earlier run would point at a model that is gone.
    rm -rf "${dir:?}/$m"
    echo "note: $models has no $m (only a shared copy does; no test needs it): not served"
fi

echo "model repository ready in $dir (models linked from $models):"
for m in "${served[@]}"; do
    echo "  $m -> $(readlink "$dir/$m/1/model.onnx")"
done
echo "  smollm -> $(readlink "$dir/smollm/1/model.gguf")"
echo "  spam-cascade: an endpoint, spam-text then spam-text-accurate (spam-cascade/endpoint.yaml)"
echo "  spam-shadow: an endpoint, spam-text answering with spam-text-accurate as its shadow (spam-shadow/endpoint.yaml)"
echo "  spam-rollout: a rollout of spam-text-accurate over spam-text (spam-rollout/endpoint.yaml)"
echo "serve it with: sluice serve --model-repository $dir"
