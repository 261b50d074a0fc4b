"""Inference over HTTP: JSON tensors, Triton's binary tensor extension, raw binary requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from v2util import (
    add_sub_data,
    as_bytes_list,
    binary_outputs,
    http_inputs,
    serialize_bytes_elements,
    split_binary_response,
)


def _outputs(names, binary):
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_add_sub(http_client, binary):
    a, b = add_sub_data(1, seed=1)
    res = http_client.infer(
        "add_sub", http_inputs(httpclient, a, b, binary), outputs=_outputs(["OUTPUT0", "OUTPUT1"], binary)
    )
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    body = res.get_response()
    assert body["model_name"] == "add_sub"
    assert body["model_version"] == "1"
    for name in ("OUTPUT0", "OUTPUT1"):
        out = res.get_output(name)
        assert out["datatype"] == "FP32"
        assert [int(d) for d in out["shape"]] == [1, 16]
        if binary:
            assert int(out["parameters"]["binary_data_size"]) == 16 * 4
            assert "data" not in out
        else:
            assert len(out["data"]) == 16


def test_add_sub_json_in_binary_out(http_client):
    a, b = add_sub_data(2, seed=2)
    res = http_client.infer(
        "add_sub", http_inputs(httpclient, a, b, False), outputs=_outputs(["OUTPUT0", "OUTPUT1"], True)
    )
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    assert int(res.get_output("OUTPUT0")["parameters"]["binary_data_size"]) == 2 * 16 * 4


def test_add_sub_default_outputs(http_client):
    # No `outputs` in the request: all outputs come back.
    a, b = add_sub_data(1, seed=3)
    res = http_client.infer("add_sub", http_inputs(httpclient, a, b, True))
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_add_sub_batch_of_three(http_client, binary):
    a, b = add_sub_data(3, seed=4)
    res = http_client.infer(
        "add_sub", http_inputs(httpclient, a, b, binary), outputs=_outputs(["OUTPUT0", "OUTPUT1"], binary)
    )
    assert res.as_numpy("OUTPUT0").shape == (3, 16)
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_requested_output_subset(http_client, binary):
    a, b = add_sub_data(1, seed=5)
    res = http_client.infer("add_sub", http_inputs(httpclient, a, b, binary), outputs=_outputs(["OUTPUT1"], binary))
    assert res.get_output("OUTPUT0") is None
    assert [o["name"] for o in res.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_request_id_echoed(http_client):
    a, b = add_sub_data(1, seed=6)
    res = http_client.infer("add_sub", http_inputs(httpclient, a, b, True), request_id="req-42-ü")
    assert res.get_response()["id"] == "req-42-ü"


def test_explicit_version(http_client):
    a, b = add_sub_data(1, seed=7)
    res = http_client.infer("add_sub", http_inputs(httpclient, a, b, False), model_version="1")
    assert res.get_response()["model_version"] == "1"
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)


def test_json_nested_and_flat_data(base_url):
    a, b = add_sub_data(2, seed=8)
    for data0, data1 in ((a.tolist(), b.tolist()), (a.reshape(-1).tolist(), b.reshape(-1).tolist())):
        req = {
            "id": "nested",
            "inputs": [
                {"name": "INPUT0", "shape": [2, 16], "datatype": "FP32", "data": data0},
                {"name": "INPUT1", "shape": [2, 16], "datatype": "FP32", "data": data1},
            ],
            "outputs": [{"name": "OUTPUT0"}],
        }
        r = requests.post(f"{base_url}/v2/models/add_sub/infer", json=req, timeout=30)
        assert r.status_code == 200, r.text
        assert "json" in r.headers.get("Content-Type", "")
        body = r.json()
        assert body["id"] == "nested"
        assert body["model_name"] == "add_sub"
        (out,) = body["outputs"]
        assert out["name"] == "OUTPUT0" and out["datatype"] == "FP32" and out["shape"] == [2, 16]
        np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(2, 16), a + b, rtol=1e-6)


def test_versioned_infer_path(base_url):
    a, b = add_sub_data(1, seed=9)
    req = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a.reshape(-1).tolist()},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": b.reshape(-1).tolist()},
        ]
    }
    r = requests.post(f"{base_url}/v2/models/add_sub/versions/1/infer", json=req, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1"


def test_binary_request_by_hand(base_url):
    """Build Triton's binary tensor request without tritonclient and parse the reply."""
    a, b = add_sub_data(2, seed=10)
    header = {
        "inputs": [
            {"name": "INPUT0", "shape": [2, 16], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "INPUT1", "shape": [2, 16], "datatype": "FP32", "parameters": {"binary_data_size": b.nbytes}},
        ],
        "parameters": {"binary_data_output": True},
    }
    hdr = json.dumps(header).encode()
    body = hdr + a.tobytes() + b.tobytes()
    r = requests.post(
        f"{base_url}/v2/models/add_sub/infer",
        data=body,
        headers={"Inference-Header-Content-Length": str(len(hdr)), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    hlen = r.headers.get("Inference-Header-Content-Length")
    assert hlen is not None, "binary outputs need the Inference-Header-Content-Length response header"
    head, tail = split_binary_response(r.content, int(hlen))
    outs = binary_outputs(head, tail)
    np.testing.assert_allclose(np.frombuffer(outs["OUTPUT0"], dtype="<f4").reshape(2, 16), a + b, rtol=1e-6)
    np.testing.assert_allclose(np.frombuffer(outs["OUTPUT1"], dtype="<f4").reshape(2, 16), a - b, rtol=1e-6)


# --- BYTES ------------------------------------------------------------------------------------

# ONNX string tensors hold text: UTF-8 without NUL bytes (ONNX Runtime takes C strings).
# Lengths above 255 check the 4-byte little-endian length prefix of the binary form.
TEXTS = [b"hello", "gr\u00fc\u00dfe \u2603".encode(), b"", b"x" * 300, ("\u20ac" * 200).encode()]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_identity_bytes(http_client, binary):
    arr = np.array(TEXTS, dtype=np.object_)
    i = httpclient.InferInput("INPUT0", [len(TEXTS)], "BYTES")
    i.set_data_from_numpy(arr, binary_data=binary)
    res = http_client.infer("identity_bytes", [i], outputs=_outputs(["OUTPUT0"], binary))
    out = res.get_output("OUTPUT0")
    assert out["datatype"] == "BYTES"
    assert [int(d) for d in out["shape"]] == [len(TEXTS)]
    assert as_bytes_list(res.as_numpy("OUTPUT0")) == TEXTS
    if binary:
        assert int(out["parameters"]["binary_data_size"]) == len(serialize_bytes_elements(TEXTS))


def test_identity_bytes_json_in_binary_out(http_client):
    arr = np.array(TEXTS[:2], dtype=np.object_)
    i = httpclient.InferInput("INPUT0", [2], "BYTES")
    i.set_data_from_numpy(arr, binary_data=False)
    res = http_client.infer("identity_bytes", [i], outputs=_outputs(["OUTPUT0"], True))
    assert as_bytes_list(res.as_numpy("OUTPUT0")) == TEXTS[:2]


# --- iris -------------------------------------------------------------------------------------

FLOWERS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 4.0, 1.0], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 5.1, 1.8]],
    dtype=np.float32,
)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_iris(http_client, binary):
    i = httpclient.InferInput("input", list(FLOWERS.shape), "FP32")
    i.set_data_from_numpy(FLOWERS, binary_data=binary)
    res = http_client.infer("iris", [i], outputs=_outputs(["label", "probabilities"], binary))
    prob = res.as_numpy("probabilities")
    label = res.as_numpy("label").reshape(-1)
    assert res.get_output("probabilities")["datatype"] == "FP32"
    assert res.get_output("label")["datatype"] == "INT64"
    assert prob.shape == (4, 3)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-5)
    assert ((prob >= 0) & (prob <= 1)).all()
    assert label.shape == (4,)
    assert set(label.tolist()) <= {0, 1, 2}
    assert label.tolist() == prob.argmax(axis=1).tolist()
    assert label[0] == 0 and label[2] == 2  # a textbook setosa and virginica


# --- raw binary request (Inference-Header-Content-Length: 0) -----------------------------------


def test_raw_binary_request(http_client, base_url):
    """A body that is just the bytes of the single input: allowed for one-input models with at
    most one variable dimension; treated as batch 1; all outputs come back binary."""
    cfg = http_client.get_model_config("identity")
    mbs = int(cfg.get("max_batch_size", 0))
    dims = [int(d) for d in cfg["input"][0].get("dims", [])]
    if mbs > 0 and -1 not in dims:
        n = int(np.prod(dims)) if dims else 1  # batch 1 of a fixed-size tensor
    else:
        n = 5  # the one variable dimension takes what the body holds
    x = np.arange(-2, n - 2, dtype="<i4")
    r = requests.post(
        f"{base_url}/v2/models/identity/infer",
        data=x.tobytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    hlen = r.headers.get("Inference-Header-Content-Length")
    assert hlen is not None, "a raw binary request gets binary outputs"
    head, tail = split_binary_response(r.content, int(hlen))
    (out,) = head["outputs"]
    assert out["name"] == "OUTPUT0" and out["datatype"] == "INT32"
    assert int(np.prod(out["shape"])) == n
    assert binary_outputs(head, tail)["OUTPUT0"] == x.tobytes()


# --- concurrency: every caller gets its own rows back from the dynamic batcher -----------------


def test_concurrent_requests_get_their_own_results(http_url):
    client = httpclient.InferenceServerClient(http_url, concurrency=16)
    try:
        jobs = []
        for k in range(48):
            a, b = add_sub_data(1 + k % 3, seed=100 + k)
            req = client.async_infer("add_sub", http_inputs(httpclient, a, b, k % 2 == 0), request_id=str(k))
            jobs.append((k, a, b, req))
        for k, a, b, req in jobs:
            res = req.get_result(timeout=60)
            assert res.get_response()["id"] == str(k)
            np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
            np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    finally:
        client.close()


def test_concurrent_raw_http_keepalive(base_url):
    """Plain keep-alive clients from several threads (what most non-Triton clients do)."""

    def worker(k: int) -> None:
        with requests.Session() as s:
            for j in range(10):
                a, b = add_sub_data(1, seed=1000 + k * 10 + j)
                req = {
                    "inputs": [
                        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a.reshape(-1).tolist()},
                        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": b.reshape(-1).tolist()},
                    ]
                }
                r = s.post(f"{base_url}/v2/models/add_sub/infer", json=req, timeout=30)
                assert r.status_code == 200, r.text
                outs = {o["name"]: o for o in r.json()["outputs"]}
                got = np.array(outs["OUTPUT0"]["data"], dtype=np.float32).reshape(1, 16)
                np.testing.assert_allclose(got, a + b, rtol=1e-6)

    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(worker, k) for k in range(8)]:
            f.result()
