#!/usr/bin/env python3
"""Generates the tiny ONNX models used by `tests/onnx.rs`.

Run from anywhere with a Python that has the `onnx` package (the project's .venv has it):

    .venv/bin/python crates/sluice-backend/tests/data/make_models.py

The files are small and deterministic (no random weights), so they are committed; rerun this only
when a model changes.
"""

import os

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 17
IR_VERSION = 8


def save(graph, name, ml=False):
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", 3))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="sluice-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(HERE, name)
    onnx.save(model, path)
    print(f"wrote {path}")


def add_sub():
    # INPUT0, INPUT1: FP32 [dynamic, 16]; OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
    # The first dim is dynamic without a name, so auto-complete turns on batching.
    shape = [None, 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, shape),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, shape),
        ],
    )
    save(graph, "add_sub.onnx")


IDENTITY_TYPES = {
    "bool": TensorProto.BOOL,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "fp16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "fp32": TensorProto.FLOAT,
    "fp64": TensorProto.DOUBLE,
    "string": TensorProto.STRING,
}


def identities():
    # IN -> OUT, shape [2, dynamic]: the fixed first dim means no batching (max_batch_size 0,
    # dims [2, -1]).
    for suffix, elem in IDENTITY_TYPES.items():
        shape = [2, None]
        graph = helper.make_graph(
            [helper.make_node("Identity", ["IN"], ["OUT"])],
            f"identity_{suffix}",
            [helper.make_tensor_value_info("IN", elem, shape)],
            [helper.make_tensor_value_info("OUT", elem, shape)],
        )
        save(graph, f"identity_{suffix}.onnx")


def symbolic_batch():
    # x: FP32 ["N", 3]; y = x * 2; z = ReduceSum(x, axis 1) as INT64 via Cast: ["N"].
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
            helper.make_node("Cast", ["s"], ["z"], to=TensorProto.INT64),
        ],
        "symbolic_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("z", TensorProto.INT64, ["N", 1]),
        ],
        initializer=[two, axes],
    )
    save(graph, "symbolic_batch.onnx")


def add_bias():
    # y = x + bias, where bias is an initializer that is also a graph input (overridable):
    # a config may list it as an optional input.
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "add_bias",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[bias],
    )
    save(graph, "add_bias.onnx")


def zipmap():
    # A classifier-shaped model like skl2onnx writes: x FP32 ["N", 2]; label = ArgMax(x) INT64 ["N"];
    # probs = ZipMap(x), a sequence of maps, which the server cannot return.
    graph = helper.make_graph(
        [
            helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0),
            helper.make_node("ZipMap", ["x"], ["probs"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]),
        ],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_value_info(
                "probs",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
                ),
            ),
        ],
    )
    save(graph, "zipmap.onnx", ml=True)


if __name__ == "__main__":
    add_sub()
    identities()
    symbolic_batch()
    add_bias()
    zipmap()
