#!/usr/bin/env python3
"""Generate the tiny example model repository in examples/models/.

Usage:
    .venv/bin/python scripts/gen_example_models.py [--out examples/models] [--check]

Models written (all ONNX, opset 17, IR version 8, so any onnxruntime >= 1.12 loads them):

  add_sub/         config.pbtxt + 1/model.onnx   FP32 [-1,16] x2 -> OUTPUT0 = a+b, OUTPUT1 = a-b
  identity/        1/model.onnx only (no config: exercises auto-complete); INT32 [-1] -> same
  identity_bytes/  config.pbtxt + 1/model.onnx   BYTES (TYPE_STRING) [-1] -> same, max_batch_size 0
  iris/            config.yaml + 1/model.onnx    scikit-learn LogisticRegression (skl2onnx,
                                                 zipmap=False): input FP32 [4] -> label INT64,
                                                 probabilities FP32 [3]; max_batch_size 16

The output is deterministic for a given set of package versions (see scripts/requirements.txt):
running the script twice gives byte-identical files. `--check` regenerates into a temporary
directory and exits 1 if anything differs from what is on disk (nothing is written).
"""

from __future__ import annotations

import argparse
import os
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17
ML_OPSET = 3  # ai.onnx.ml opset that goes with ONNX opset 17 / IR 8
IR_VERSION = 8
PRODUCER = "sluice-gen-example-models"

REPO_ROOT = Path(__file__).resolve().parent.parent


def _finish(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = IR_VERSION
    # skl2onnx can list the default domain twice; keep one entry per domain (highest version).
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    model.producer_name = model.producer_name or PRODUCER
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------------------------
# add_sub


def make_add_sub() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])
    b = helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, ["batch", 16])
    o0 = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])
    o1 = helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 16])
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
        ],
        "add_sub",
        [a, b],
        [o0, o1],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
    )
    return _finish(model)


ADD_SUB_CONFIG = """\
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_FP32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_FP32
    dims: [ 16 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


# --------------------------------------------------------------------------------------------
# identity (INT32, no config) and identity_bytes (STRING)


def make_identity(name: str, elem_type: int) -> onnx.ModelProto:
    i = helper.make_tensor_value_info("INPUT0", elem_type, ["N"])
    o = helper.make_tensor_value_info("OUTPUT0", elem_type, ["N"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        name,
        [i],
        [o],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
    )
    return _finish(model)


IDENTITY_BYTES_CONFIG = """\
name: "identity_bytes"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "INPUT0"
    data_type: TYPE_STRING
    dims: [ -1 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_STRING
    dims: [ -1 ]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


# --------------------------------------------------------------------------------------------
# iris (scikit-learn LogisticRegression -> skl2onnx)

_ONNX_TO_CONFIG = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.STRING: "TYPE_STRING",
}


def make_iris() -> tuple[onnx.ModelProto, str]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000, random_state=0)
    clf.fit(x.astype(np.float32), y)

    model = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 4]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options={id(clf): {"zipmap": False}},
    )
    model.graph.name = "iris"
    # skl2onnx names the outputs `label` and `probabilities`; check rather than assume.
    outs = {o.name: o for o in model.graph.output}
    if set(outs) != {"label", "probabilities"}:
        raise SystemExit(f"unexpected iris outputs from skl2onnx: {sorted(outs)}")
    model = _finish(model)

    # Build the YAML config from the exported graph: dims without the batch dimension.
    def dims(vi: onnx.ValueInfoProto) -> list[int]:
        shape = vi.type.tensor_type.shape.dim
        rest = [d.dim_value if d.HasField("dim_value") else -1 for d in shape[1:]]
        return rest

    def tensor_yaml(vi: onnx.ValueInfoProto) -> str:
        d = dims(vi)
        dtype = _ONNX_TO_CONFIG[vi.type.tensor_type.elem_type]
        lines = [f"  - name: {vi.name}", f"    data_type: {dtype}"]
        if d:
            lines.append(f"    dims: [{', '.join(str(x) for x in d)}]")
        else:
            # The ONNX tensor is [batch] only: Triton's convention is dims [1] and an empty
            # reshape, so clients see [batch, 1] while the model gets [batch].
            lines.append("    dims: [1]")
            lines.append("    reshape: { shape: [] }")
        return "\n".join(lines)

    inputs = "\n".join(tensor_yaml(v) for v in model.graph.input)
    outputs = "\n".join(tensor_yaml(outs[n]) for n in ("label", "probabilities"))
    config = (
        "# scikit-learn LogisticRegression trained on sklearn's bundled iris data set,\n"
        "# exported with skl2onnx (zipmap=False). Generated by scripts/gen_example_models.py.\n"
        "name: iris\n"
        "platform: onnxruntime_onnx\n"
        "max_batch_size: 16\n"
        "input:\n"
        f"{inputs}\n"
        "output:\n"
        f"{outputs}\n"
        "dynamic_batching:\n"
        "  max_queue_delay_microseconds: 500\n"
        "instance_group:\n"
        "  - count: 1\n"
        "    kind: KIND_CPU\n"
    )
    return model, config


# A Triton ensemble over add_sub: (a + b) + (a - b) = 2a and (a + b) - (a - b) = 2b through two
# chained steps, and a + a = 2a in a third step that needs only the ensemble's inputs.
ADD_SUB_TWICE_CONFIG = """\
name: "add_sub_twice"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "DOUBLE0" data_type: TYPE_FP32 dims: [ 16 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "add_sub"
      model_version: -1
      input_map { key: "INPUT0" value: "INPUT0" }
      input_map { key: "INPUT1" value: "INPUT1" }
      output_map { key: "OUTPUT0" value: "sum" }
      output_map { key: "OUTPUT1" value: "difference" }
    },
    {
      model_name: "add_sub"
      model_version: -1
      input_map { key: "INPUT0" value: "sum" }
      input_map { key: "INPUT1" value: "difference" }
      output_map { key: "OUTPUT0" value: "OUTPUT0" }
      output_map { key: "OUTPUT1" value: "OUTPUT1" }
    },
    {
      model_name: "add_sub"
      model_version: -1
      input_map { key: "INPUT0" value: "INPUT0" }
      input_map { key: "INPUT1" value: "INPUT0" }
      output_map { key: "OUTPUT0" value: "DOUBLE0" }
    }
  ]
}
"""

# --------------------------------------------------------------------------------------------


README = """\
# Example model repository

Tiny models generated by `scripts/gen_example_models.py` (committed; rerun the script to
regenerate them byte for byte, `--check` to verify). Serve them with:

    sluice serve --model-repository examples/models      # HTTP :8000, gRPC :8001, metrics :8002

| model | config | inputs | outputs | what it exercises |
|---|---|---|---|---|
| `add_sub` | `config.pbtxt` | `INPUT0`, `INPUT1` FP32 `[-1, 16]` | `OUTPUT0` = INPUT0 + INPUT1, `OUTPUT1` = INPUT0 − INPUT1, FP32 `[-1, 16]` | Triton's classic example: `max_batch_size: 8`, dynamic batching (no delay: whatever is queued when the instance is free runs as one batch), one CPU instance; used by the conformance tests and `perf_analyzer` |
| `identity` | none (auto-complete) | `INPUT0` INT32, ONNX shape `[N]` | `OUTPUT0` INT32 `[N]` | configuration auto-completed from the ONNX file; raw binary requests (`Inference-Header-Content-Length: 0`); unload / load |
| `identity_bytes` | `config.pbtxt` | `INPUT0` BYTES (`TYPE_STRING`) `[-1]` | `OUTPUT0` BYTES `[-1]` | string tensors in JSON, binary and gRPC; `max_batch_size: 0` |
| `add_sub_twice` | `config.pbtxt` (`platform: "ensemble"`) | `INPUT0`, `INPUT1` FP32 `[-1, 16]` | `OUTPUT0` = 2 × INPUT0, `OUTPUT1` = 2 × INPUT1 (add_sub of add_sub's sum and difference), `DOUBLE0` = 2 × INPUT0 (add_sub of INPUT0 with itself) | a Triton ensemble, as Triton loads it: three add_sub steps wired by `input_map` / `output_map`; the first and third run at the same time, the second waits for the first; `1/` is empty |
| `iris` | `config.yaml` | `input` FP32 `[-1, 4]` | `label` INT64 (ONNX `[N]`, config `dims: [1]` + `reshape: { shape: [] }`), `probabilities` FP32 `[-1, 3]` | a real scikit-learn `LogisticRegression` trained on the iris data set, exported with skl2onnx (`zipmap=False`); YAML config; `max_batch_size: 16` |

Example request:

    curl -s localhost:8000/v2/models/iris/infer -d '{"inputs":[{"name":"input","shape":[1,4],
      "datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'

## Serving the real models of `$SLUICE_MODELS`

The real, pretrained models are not copied into this repository: `scripts/setup.sh` puts them
in one folder, `$SLUICE_MODELS` (default `$SLUICE_HOME/models`, i.e.
`~/.local/share/sluice/models`), linked from a shared copy when there is one beside the
repository and otherwise rebuilt from the public PyPI and npm packages they come from
(`scripts/fetch_models.py`). `scripts/make_models_repo.sh DIR` builds a model repository in
`DIR` (anywhere outside the models folder) whose model files are symlinks into that folder,
with a config for each:

    scripts/make_models_repo.sh /tmp/sluice-models
    sluice serve --model-repository /tmp/sluice-models

It serves `spam-fast`, `spam-accurate`, `spam-text` (spam-fast taking text) and `smollm`
(SmolLM2-135M-Instruct), plus `efficientnet-lite0` when the models folder has it: a folder rebuilt
from packages does not (it was converted with torch, and no test needs it).

| model | inputs | outputs | config |
|---|---|---|---|
| `spam-fast`, `spam-accurate` (MiniLM encoder + logistic head, int8) | `input_ids`, `attention_mask` INT64 `[batch, seq]` | `probabilities` FP32 `[batch, 2]` (ham, spam), `label` INT64 `[batch]` | `max_batch_size: 32`, inputs `dims: [-1]`, `label` `dims: [1]` + `reshape: { shape: [] }`, dynamic batching; `tokenizer.json` and `labels.txt` linked beside the config |
| `spam-text` (spam-fast taking text) | `TEXT` BYTES `[batch, 1]` (the server tokenizes with `tokenizer.json`, truncation 128) | as `spam-fast`; ask for `probabilities` with `"parameters": {"classification": 1}` to get `"score:index:label"` | as `spam-fast`, plus `parameters` `text_input: TEXT`, `max_sequence_length: 128` |
| `smollm` (SmolLM2-135M-Instruct, GGUF Q4_1) | `text_input` BYTES `[1]`, optional `sampling_parameters` BYTES `[1]` (JSON) | `text_output` BYTES `[1]` | none: `1/model.gguf` and `tokenizer.json` linked, served by the `candle` backend with continuous batching; also `generate`, `generate_stream` and the OpenAI `/v1` API ([docs/generation.md](../../docs/generation.md)) |
| `efficientnet-lite0` (ImageNet-1k) | `input` FP32 `[N, 3, 224, 224]` (RGB, centre crop, (x − 127) / 128) | `logits` FP32 `[N, 1000]` | `max_batch_size: 8`, `dims: [3, 224, 224]`, dynamic batching; `labels.txt` linked |
"""


def generate(out: Path) -> None:
    if out.exists():
        for sub in ("add_sub", "add_sub_twice", "identity", "identity_bytes", "iris"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    _save(make_add_sub(), out / "add_sub/1/model.onnx")
    _write(out / "add_sub/config.pbtxt", ADD_SUB_CONFIG)

    _write(out / "add_sub_twice/config.pbtxt", ADD_SUB_TWICE_CONFIG)
    # Triton looks for an ensemble's version in an (empty) version directory.
    _write(out / "add_sub_twice/1/.gitkeep", "")

    _save(make_identity("identity", TensorProto.INT32), out / "identity/1/model.onnx")

    _save(make_identity("identity_bytes", TensorProto.STRING), out / "identity_bytes/1/model.onnx")
    _write(out / "identity_bytes/config.pbtxt", IDENTITY_BYTES_CONFIG)

    iris, iris_config = make_iris()
    _save(iris, out / "iris/1/model.onnx")
    _write(out / "iris/config.yaml", iris_config)

    _write(out / "README.md", README)


def smoke_test(out: Path) -> None:
    """Run every generated model once with onnxruntime (the engine the server uses)."""
    import onnxruntime as ort

    def sess(name: str) -> "ort.InferenceSession":
        return ort.InferenceSession(
            str(out / name / "1/model.onnx"), providers=["CPUExecutionProvider"]
        )

    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.float32)
    o0, o1 = sess("add_sub").run(None, {"INPUT0": a, "INPUT1": b})
    assert np.array_equal(o0, a + b) and np.array_equal(o1, a - b)

    x = np.array([1, -2, 3], dtype=np.int32)
    (y,) = sess("identity").run(None, {"INPUT0": x})
    assert y.dtype == np.int32 and np.array_equal(x, y)

    s = np.array(["hello", "wörld", ""], dtype=object)
    (t,) = sess("identity_bytes").run(None, {"INPUT0": s})
    assert list(t) == list(s)

    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    label, prob = sess("iris").run(["label", "probabilities"], {"input": flowers})
    assert label.dtype == np.int64 and list(label) == [0, 2], label
    assert prob.shape == (2, 3) and np.allclose(prob.sum(axis=1), 1.0, atol=1e-5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "examples" / "models")
    ap.add_argument("--check", action="store_true", help="verify the files on disk are up to date")
    args = ap.parse_args()

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "models"
            generate(fresh)
            stale = []
            for f in sorted(p for p in fresh.rglob("*") if p.is_file()):
                rel = f.relative_to(fresh)
                disk = args.out / rel
                if not disk.is_file() or not filecmp.cmp(f, disk, shallow=False):
                    stale.append(str(rel))
            if stale:
                print("out of date: " + ", ".join(stale), file=sys.stderr)
                return 1
            print(f"{args.out}: up to date")
            return 0

    generate(args.out)
    smoke_test(args.out)
    for f in sorted(p for p in args.out.rglob("*") if p.is_file()):
        print(f"wrote {os.path.relpath(f)} ({f.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
