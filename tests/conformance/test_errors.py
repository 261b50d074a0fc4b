"""Errors: right status / gRPC code, and a message that names what was wrong.

Messages are asserted loosely: the tensor or model name and the key numbers, not exact text
(Sluice writes e.g. "input 'INPUT0': expected shape [-1,16], got [1,3]").
"""

from __future__ import annotations

import json

import numpy as np
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from v2util import (
    GRPC_INVALID_ARGUMENT,
    GRPC_NOT_FOUND,
    HTTP_BAD_REQUEST,
    HTTP_NOT_FOUND,
    add_sub_data,
    expect_error,
    grpc_inputs,
    http_inputs,
    mentions_shape,
)


def _http_in(name, arr, dtype, binary=False):
    i = httpclient.InferInput(name, list(arr.shape), dtype)
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


def _grpc_in(name, arr, dtype):
    i = grpcclient.InferInput(name, list(arr.shape), dtype)
    i.set_data_from_numpy(arr)
    return i


# --- unknown model / version ------------------------------------------------------------------


def test_http_unknown_model(http_client, base_url):
    a, b = add_sub_data()
    expect_error(
        lambda: http_client.infer("no_such_model", http_inputs(httpclient, a, b, False)),
        "no_such_model",
        status=HTTP_NOT_FOUND,
    )
    r = requests.get(f"{base_url}/v2/models/no_such_model", timeout=10)
    assert r.status_code == 404
    assert "no_such_model" in r.json()["error"]


def test_grpc_unknown_model(grpc_client):
    a, b = add_sub_data()
    expect_error(
        lambda: grpc_client.infer("no_such_model", grpc_inputs(grpcclient, a, b)),
        "no_such_model",
        status=GRPC_NOT_FOUND,
    )
    expect_error(lambda: grpc_client.get_model_metadata("no_such_model"), "no_such_model", status=GRPC_NOT_FOUND)


def test_http_unknown_version(http_client):
    a, b = add_sub_data()
    expect_error(
        lambda: http_client.infer("add_sub", http_inputs(httpclient, a, b, False), model_version="99"),
        "add_sub",
        "99",
        status=HTTP_NOT_FOUND,
    )


def test_grpc_unknown_version(grpc_client):
    a, b = add_sub_data()
    expect_error(
        lambda: grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b), model_version="99"),
        "add_sub",
        "99",
        status=GRPC_NOT_FOUND,
    )


# --- wrong shape ------------------------------------------------------------------------------


def _check_shape_message(e, actual):
    msg = e.message()
    assert "16" in msg, f"message {msg!r} does not show the expected shape [-1,16]"
    assert mentions_shape(msg, actual), f"message {msg!r} does not show the actual shape {actual}"


def test_http_wrong_shape(http_client):
    a = np.zeros((1, 3), dtype=np.float32)
    b = np.zeros((1, 16), dtype=np.float32)
    for binary in (False, True):
        e = expect_error(
            lambda: http_client.infer("add_sub", [_http_in("INPUT0", a, "FP32", binary), _http_in("INPUT1", b, "FP32", binary)]),
            "INPUT0",
            status=HTTP_BAD_REQUEST,
        )
        _check_shape_message(e, [1, 3])


def test_grpc_wrong_shape(grpc_client):
    a = np.zeros((1, 3), dtype=np.float32)
    b = np.zeros((1, 16), dtype=np.float32)
    e = expect_error(
        lambda: grpc_client.infer("add_sub", [_grpc_in("INPUT0", a, "FP32"), _grpc_in("INPUT1", b, "FP32")]),
        "INPUT0",
        status=GRPC_INVALID_ARGUMENT,
    )
    _check_shape_message(e, [1, 3])


def test_http_batch_over_max_batch_size(http_client):
    a, b = add_sub_data(9)
    e = expect_error(
        lambda: http_client.infer("add_sub", http_inputs(httpclient, a, b, True)),
        status=HTTP_BAD_REQUEST,
    )
    msg = e.message()
    assert "8" in msg, f"message {msg!r} should show the limit, max_batch_size 8"


def test_http_data_length_does_not_match_shape(base_url):
    req = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 15},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
        ]
    }
    r = requests.post(f"{base_url}/v2/models/add_sub/infer", json=req, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "INPUT0" in err and "15" in err and "16" in err, err


def test_http_binary_size_does_not_match_shape(base_url):
    a = np.zeros((1, 16), dtype=np.float32)
    hdr = json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 60}},
                {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}},
            ]
        }
    ).encode()
    body = hdr + a.tobytes()[:60] + a.tobytes()
    r = requests.post(
        f"{base_url}/v2/models/add_sub/infer",
        data=body,
        headers={"Inference-Header-Content-Length": str(len(hdr))},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    assert "INPUT0" in r.json()["error"]


# --- wrong datatype ---------------------------------------------------------------------------


def test_http_wrong_datatype(http_client):
    a = np.zeros((1, 16), dtype=np.int32)
    b = np.zeros((1, 16), dtype=np.float32)
    for binary in (False, True):
        expect_error(
            lambda: http_client.infer("add_sub", [_http_in("INPUT0", a, "INT32", binary), _http_in("INPUT1", b, "FP32", binary)]),
            "INPUT0",
            "FP32",
            "INT32",
            status=HTTP_BAD_REQUEST,
        )


def test_grpc_wrong_datatype(grpc_client):
    a = np.zeros((1, 16), dtype=np.int32)
    b = np.zeros((1, 16), dtype=np.float32)
    expect_error(
        lambda: grpc_client.infer("add_sub", [_grpc_in("INPUT0", a, "INT32"), _grpc_in("INPUT1", b, "FP32")]),
        "INPUT0",
        "FP32",
        "INT32",
        status=GRPC_INVALID_ARGUMENT,
    )


# --- missing / unknown tensors ----------------------------------------------------------------


def test_http_missing_input(http_client):
    a, _ = add_sub_data()
    for binary in (False, True):
        expect_error(
            lambda: http_client.infer("add_sub", [_http_in("INPUT0", a, "FP32", binary)]),
            "INPUT1",
            status=HTTP_BAD_REQUEST,
        )


def test_grpc_missing_input(grpc_client):
    a, _ = add_sub_data()
    expect_error(
        lambda: grpc_client.infer("add_sub", [_grpc_in("INPUT0", a, "FP32")]),
        "INPUT1",
        status=GRPC_INVALID_ARGUMENT,
    )


def test_http_unknown_input(http_client):
    a, b = add_sub_data()
    inputs = http_inputs(httpclient, a, b, False) + [_http_in("INPUT9", a, "FP32")]
    expect_error(lambda: http_client.infer("add_sub", inputs), "INPUT9", status=HTTP_BAD_REQUEST)


def test_http_unknown_output(http_client):
    a, b = add_sub_data()
    expect_error(
        lambda: http_client.infer(
            "add_sub", http_inputs(httpclient, a, b, False), outputs=[httpclient.InferRequestedOutput("OUTPUT9")]
        ),
        "OUTPUT9",
        status=HTTP_BAD_REQUEST,
    )


def test_grpc_unknown_output(grpc_client):
    a, b = add_sub_data()
    expect_error(
        lambda: grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b), outputs=[grpcclient.InferRequestedOutput("OUTPUT9")]),
        "OUTPUT9",
        status=GRPC_INVALID_ARGUMENT,
    )


# --- malformed requests -----------------------------------------------------------------------


def test_malformed_json(base_url):
    r = requests.post(
        f"{base_url}/v2/models/add_sub/infer",
        data=b'{"inputs": [ {"name": "INPUT0", ',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body


def test_json_of_the_wrong_form(base_url):
    r = requests.post(f"{base_url}/v2/models/add_sub/infer", json={"inputs": "nope"}, timeout=10)
    assert r.status_code == 400, r.text
    assert isinstance(r.json().get("error"), str)


def test_binary_header_longer_than_body(base_url):
    r = requests.post(
        f"{base_url}/v2/models/add_sub/infer",
        data=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "1000"},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    assert isinstance(r.json().get("error"), str)


def test_server_still_serves_after_errors(http_client, grpc_client):
    a, b = add_sub_data(2, seed=77)
    res = http_client.infer("add_sub", http_inputs(httpclient, a, b, True))
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    res = grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b))
    np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    assert http_client.is_server_ready()
