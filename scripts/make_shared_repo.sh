#!/usr/bin/env bash
# Build a Sluice/Triton model repository in DIR that serves the real models from shared/models
# through symlinks (nothing is copied; shared/ is read-only and must not be committed).
#
#   scripts/make_shared_repo.sh DIR
#   sluice serve --model-repository DIR
#
# The shared models folder is `$(dirname <repo root>)/shared/models`, or $SLUICE_SHARED_MODELS.
# Rerunning is safe: configs are rewritten and links replaced.
#
# Models (I/O checked with onnxruntime 1.32):
#   spam-fast, spam-accurate  input_ids, attention_mask INT64 [batch, seq]
#                             -> probabilities FP32 [batch, 2], label INT64 [batch]
#   efficientnet-lite0        input FP32 [N, 3, 224, 224] -> logits FP32 [N, 1000]
set -euo pipefail

if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 DIR   (builds a model repository in DIR linking to the shared models)" >&2
    exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${SLUICE_SHARED_MODELS:-$(dirname "$repo_root")/shared/models}"
if [[ ! -d "$shared" ]]; then
    echo "error: shared models folder not found: $shared (set SLUICE_SHARED_MODELS)" >&2
    exit 1
fi
shared="$(cd "$shared" && pwd)"

dir="$(realpath -m -- "$1")"
guard="$shared"
if [[ "$(basename "$(dirname "$shared")")" == shared ]]; then
    guard="$(dirname "$shared")"
fi
case "$dir/" in
    "$guard"/*)
        echo "error: DIR must be outside the shared folder ($guard)" >&2
        exit 1
        ;;
esac
mkdir -p "$dir"

# link SRC DEST: replace DEST with a symlink to SRC (which must exist).
link() {
    if [[ ! -e "$1" ]]; then
        echo "error: missing $1" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$2")"
    ln -sfn "$1" "$2"
}

spam_config() {
    cat <<EOF
# $1: MiniLM encoder + mean pooling + logistic head (int8), from shared/models/$1.
# Written by scripts/make_shared_repo.sh.
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
    link "$shared/$m/model.onnx" "$dir/$m/1/model.onnx"
    link "$shared/$m/tokenizer.json" "$dir/$m/tokenizer.json"
    link "$shared/$m/labels.txt" "$dir/$m/labels.txt"
    spam_config "$m" >"$dir/$m/config.pbtxt"
done

# spam-text: spam-fast taking text (the server tokenizes) and answering labels.
link "$shared/spam-fast/model.onnx" "$dir/spam-text/1/model.onnx"
link "$shared/spam-fast/tokenizer.json" "$dir/spam-text/tokenizer.json"
link "$shared/spam-fast/labels.txt" "$dir/spam-text/labels.txt"
spam_config spam-text >"$dir/spam-text/config.pbtxt"
cat >>"$dir/spam-text/config.pbtxt" <<'EOF'
parameters { key: "text_input" value: { string_value: "TEXT" } }
parameters { key: "max_sequence_length" value: { string_value: "128" } }
EOF

# smollm: a generative model (candle backend). No config: a directory holding
# <version>/model.gguf and tokenizer.json is served as one.
link "$shared/smollm2-135m-instruct/model.gguf" "$dir/smollm/1/model.gguf"
link "$shared/smollm2-135m-instruct/tokenizer.json" "$dir/smollm/tokenizer.json"

m=efficientnet-lite0
link "$shared/$m/model.onnx" "$dir/$m/1/model.onnx"
link "$shared/$m/labels.txt" "$dir/$m/labels.txt"
cat >"$dir/$m/config.pbtxt" <<'EOF'
# efficientnet-lite0 (ImageNet-1k), from shared/models/efficientnet-lite0.
# Input: RGB, centre crop 224x224, NCHW, pixel values (x - 127) / 128.
# Written by scripts/make_shared_repo.sh.
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

echo "model repository ready in $dir (models linked from $shared):"
for m in spam-fast spam-accurate spam-text efficientnet-lite0; do
    echo "  $m -> $(readlink "$dir/$m/1/model.onnx")"
done
echo "serve it with: sluice serve --model-repository $dir"
