"""Request size limit: a body over --http-max-body-size gets 413 with a JSON error."""

from __future__ import annotations

import json

import pytest
import requests

LIMIT = 1024


@pytest.fixture(scope="module")
def small_server(start_sluice):
    return start_sluice("--http-max-body-size", str(LIMIT), name="sluice-small-body")


def _request(pad: int) -> bytes:
    body = {
        "id": "x" * pad,
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [2.0] * 16},
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def test_body_under_limit_is_served(small_server):
    data = _request(10)
    assert len(data) < LIMIT
    r = requests.post(
        f"{small_server.base}/v2/models/add_sub/infer",
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    outs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert outs["OUTPUT0"] == [3.0] * 16


def test_body_over_limit_is_413(small_server):
    data = _request(2 * LIMIT)
    r = requests.post(
        f"{small_server.base}/v2/models/add_sub/infer",
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    if r.content:
        assert isinstance(r.json().get("error"), str)


def test_chunked_body_over_limit_is_413(small_server):
    data = _request(2 * LIMIT)

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        for i in range(0, len(data), 256):
            yield data[i : i + 256]

    r = requests.post(
        f"{small_server.base}/v2/models/add_sub/infer",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413, r.text


def test_main_server_accepts_large_bodies(base_url):
    # The default limit is far above 1 KiB (Triton has none; large tensors are normal).
    data = _request(64 * 1024)
    r = requests.post(f"{base_url}/v2/models/add_sub/infer", data=data, timeout=30)
    assert r.status_code == 200, r.text
