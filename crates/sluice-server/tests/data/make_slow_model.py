"""Generates slow.onnx: a model whose cost the request chooses, for queueing tests.

Input `N` INT64 [1]; output `Y` FP32 [1] = sum(ones(N, N) @ ones(N, N)) = N^3. The matrix is
built at run time from the input, so ONNX Runtime cannot fold it away; N = 1000 costs about
2 GFLOP (tens to hundreds of milliseconds on a small CPU).

    .venv/bin/python crates/sluice-server/tests/data/make_slow_model.py
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

nodes = [
    helper.make_node("Concat", ["N", "N"], ["shape"], axis=0),
    helper.make_node(
        "ConstantOfShape", ["shape"], ["A"], value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    ),
    helper.make_node("MatMul", ["A", "A"], ["B"]),
    helper.make_node("ReduceSum", ["B"], ["Y"], keepdims=0),
    helper.make_node("Unsqueeze", ["Y", "axes"], ["Y1"]),
]
graph = helper.make_graph(
    nodes,
    "slow",
    [helper.make_tensor_value_info("N", TensorProto.INT64, [1])],
    [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, [1])],
    initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [0])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice-tests")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, Path(__file__).with_name("slow.onnx"))
