"""Inference over gRPC (inference.GRPCInferenceService): unary, typed contents, streaming, health."""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from v2util import add_sub_data, as_bytes_list, grpc_inputs


def _outputs(names):
    return [grpcclient.InferRequestedOutput(n) for n in names]


def test_add_sub(grpc_client):
    a, b = add_sub_data(1, seed=21)
    res = grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b), outputs=_outputs(["OUTPUT0", "OUTPUT1"]))
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    resp = res.get_response()
    assert resp.model_name == "add_sub"
    assert resp.model_version == "1"
    out = res.get_output("OUTPUT0")
    assert out.datatype == "FP32" and list(out.shape) == [1, 16]


def test_add_sub_batch_of_three(grpc_client):
    a, b = add_sub_data(3, seed=22)
    res = grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b))
    assert res.as_numpy("OUTPUT0").shape == (3, 16)
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_requested_output_subset(grpc_client):
    a, b = add_sub_data(1, seed=23)
    res = grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b), outputs=_outputs(["OUTPUT1"]))
    assert res.get_output("OUTPUT0") is None
    assert [o.name for o in res.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_request_id_echoed(grpc_client):
    a, b = add_sub_data(1, seed=24)
    res = grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b), request_id="grpc-req-7")
    assert res.get_response().id == "grpc-req-7"


def test_explicit_version(grpc_client):
    a, b = add_sub_data(1, seed=25)
    res = grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b), model_version="1")
    assert res.get_response().model_version == "1"


def _output_array(resp, name: str, dtype) -> np.ndarray:
    """An output from a raw ModelInferResponse: raw_output_contents or typed contents."""
    for idx, o in enumerate(resp.outputs):
        if o.name != name:
            continue
        if len(resp.raw_output_contents) > 0:
            arr = np.frombuffer(resp.raw_output_contents[idx], dtype=dtype)
        else:
            field = {np.float32: "fp32_contents", np.int64: "int64_contents"}[dtype]
            arr = np.array(getattr(o.contents, field), dtype=dtype)
        return arr.reshape(list(o.shape))
    raise AssertionError(f"output {name} not in response")


def test_typed_contents_request(grpc_url):
    """Inputs in InferTensorContents (fp32_contents) instead of raw_input_contents."""
    a, b = add_sub_data(2, seed=26)
    req = service_pb2.ModelInferRequest(model_name="add_sub", id="typed")
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        t = req.inputs.add()
        t.name = name
        t.datatype = "FP32"
        t.shape.extend(arr.shape)
        t.contents.fp32_contents.extend(arr.reshape(-1).tolist())
    with grpc.insecure_channel(grpc_url) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    assert resp.id == "typed"
    np.testing.assert_allclose(_output_array(resp, "OUTPUT0", np.float32), a + b, rtol=1e-6)
    np.testing.assert_allclose(_output_array(resp, "OUTPUT1", np.float32), a - b, rtol=1e-6)


def test_identity_bytes(grpc_client):
    items = [b"hello", "gr\u00fc\u00dfe".encode(), b"", ("\u20ac" * 100).encode(), b"y" * 1000]
    i = grpcclient.InferInput("INPUT0", [len(items)], "BYTES")
    i.set_data_from_numpy(np.array(items, dtype=np.object_))
    res = grpc_client.infer("identity_bytes", [i])
    out = res.get_output("OUTPUT0")
    assert out.datatype == "BYTES" and list(out.shape) == [len(items)]
    assert as_bytes_list(res.as_numpy("OUTPUT0")) == items


def test_identity_bytes_typed_contents(grpc_url):
    items = [b"one", b"two", b""]
    req = service_pb2.ModelInferRequest(model_name="identity_bytes")
    t = req.inputs.add()
    t.name, t.datatype = "INPUT0", "BYTES"
    t.shape.append(len(items))
    t.contents.bytes_contents.extend(items)
    with grpc.insecure_channel(grpc_url) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    (o,) = resp.outputs
    assert o.name == "OUTPUT0" and o.datatype == "BYTES"
    if len(resp.raw_output_contents) > 0:
        from tritonclient.utils import deserialize_bytes_tensor

        got = list(deserialize_bytes_tensor(resp.raw_output_contents[0]))
    else:
        got = list(o.contents.bytes_contents)
    assert [bytes(x) for x in got] == items


def test_iris(grpc_client):
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    i = grpcclient.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    res = grpc_client.infer("iris", [i])
    prob = res.as_numpy("probabilities")
    label = res.as_numpy("label").reshape(-1)
    assert prob.shape == (2, 3)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-5)
    assert label.dtype == np.int64
    assert set(label.tolist()) <= {0, 1, 2}
    assert label.tolist() == [0, 2]


def test_concurrent_unary_calls(grpc_client):
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for j in range(8):
                a, b = add_sub_data(1 + (k + j) % 3, seed=2000 + 8 * k + j)
                res = grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b), request_id=f"{k}-{j}")
                assert res.get_response().id == f"{k}-{j}"
                np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
                np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]


# --- streaming --------------------------------------------------------------------------------


def _collect(q: "queue.Queue", n: int, timeout: float = 30.0) -> list:
    got = []
    for _ in range(n):
        got.append(q.get(timeout=timeout))
    return got


def test_stream_infer(grpc_url):
    q: "queue.Queue" = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        client.start_stream(callback=lambda result, error: q.put((result, error)))
        sent = {}
        for k in range(5):
            a, b = add_sub_data(1 + k % 3, seed=300 + k)
            sent[f"s{k}"] = (a, b)
            client.async_stream_infer("add_sub", grpc_inputs(grpcclient, a, b), request_id=f"s{k}")
        results = _collect(q, len(sent))
    finally:
        client.stop_stream()
        client.close()
    seen = set()
    for result, error in results:
        assert error is None, error
        rid = result.get_response().id
        a, b = sent[rid]
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        seen.add(rid)
    assert seen == set(sent)


def test_stream_error_keeps_stream_open(grpc_url):
    """An error on one request arrives as ModelStreamInferResponse.error_message; the stream goes on."""
    q: "queue.Queue" = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    a, b = add_sub_data(1, seed=400)
    try:
        client.start_stream(callback=lambda result, error: q.put((result, error)))
        client.async_stream_infer("no_such_model", grpc_inputs(grpcclient, a, b), request_id="bad")
        ((result, error),) = _collect(q, 1)
        assert result is None and error is not None
        assert "no_such_model" in error.message()
        client.async_stream_infer("add_sub", grpc_inputs(grpcclient, a, b), request_id="good")
        ((result, error),) = _collect(q, 1)
        assert error is None, error
        assert result.get_response().id == "good"
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    finally:
        client.stop_stream()
        client.close()


# --- grpc.health.v1 ---------------------------------------------------------------------------


def test_grpc_health_check(grpc_url):
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as e:
        pytest.fail(f"grpcio-health-checking is not installed ({e}): run scripts/setup.sh", pytrace=False)
    with grpc.insecure_channel(grpc_url) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
