"""Triton's statistics extension and the Prometheus metrics endpoint (nv_inference_*)."""

from __future__ import annotations

import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from v2util import add_sub_data, grpc_inputs, http_inputs, metric_sum, scrape, wait_until


def _http_stats(client, model="add_sub", version="1") -> dict:
    stats = client.get_inference_statistics(model)["model_stats"]
    (entry,) = [s for s in stats if s["name"] == model and s["version"] == version]
    return entry


def _grpc_stats(client, model="add_sub", version="1") -> dict:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    (entry,) = [s for s in stats if s["name"] == model and s["version"] == version]
    return entry


def _n(d: dict, *path: str) -> int:
    """A count from a stats dict; protobuf JSON writes uint64 as strings and omits zeros."""
    for p in path:
        d = d.get(p, {}) if isinstance(d, dict) else {}
    return int(d) if not isinstance(d, dict) else 0


def test_http_statistics_count_inferences(http_client):
    before = _http_stats(http_client)
    for key in ("inference_count", "execution_count", "inference_stats"):
        assert key in before, f"model stats lack {key}: {before}"
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        d = before["inference_stats"][key]
        assert "count" in d and "ns" in d, f"inference_stats.{key} = {d}"
    a, b = add_sub_data(3, seed=50)
    http_client.infer("add_sub", http_inputs(httpclient, a, b, True))

    # inference_count counts batch items (3), success counts requests (1).
    assert wait_until(
        lambda: _n(_http_stats(http_client), "inference_count") == _n(before, "inference_count") + 3, 5
    ), f"inference_count did not grow by 3: before {before}, after {_http_stats(http_client)}"
    after = _http_stats(http_client)
    assert _n(after, "inference_stats", "success", "count") == _n(before, "inference_stats", "success", "count") + 1
    assert _n(after, "execution_count") > _n(before, "execution_count")
    assert _n(after, "inference_stats", "success", "ns") > _n(before, "inference_stats", "success", "ns")
    assert _n(after, "last_inference") > 0


def test_http_statistics_all_models(http_client):
    names = {s["name"] for s in http_client.get_inference_statistics()["model_stats"]}
    assert {"add_sub", "iris", "identity_bytes"} <= names, names


def test_grpc_statistics_count_inferences(grpc_client):
    before = _grpc_stats(grpc_client)
    a, b = add_sub_data(2, seed=51)
    grpc_client.infer("add_sub", grpc_inputs(grpcclient, a, b))
    assert wait_until(
        lambda: _n(_grpc_stats(grpc_client), "inference_count") == _n(before, "inference_count") + 2, 5
    ), f"inference_count did not grow by 2: before {before}, after {_grpc_stats(grpc_client)}"


# --- Prometheus -------------------------------------------------------------------------------


def test_metrics_endpoint_format(metrics_base):
    with urllib.request.urlopen(f"{metrics_base}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers.get("Content-Type", "").startswith("text/plain")
        text = r.read().decode()
    assert "# TYPE nv_inference_request_success counter" in text
    assert "# TYPE nv_inference_count counter" in text


def test_metrics_count_successes(http_client, metrics_base):
    labels = {"model": "add_sub", "version": "1"}
    before = metric_sum(scrape(metrics_base), "nv_inference_request_success", **labels)
    inf_before = metric_sum(scrape(metrics_base), "nv_inference_count", **labels)
    a, b = add_sub_data(2, seed=52)
    for _ in range(3):
        http_client.infer("add_sub", http_inputs(httpclient, a, b, True))
    assert wait_until(
        lambda: metric_sum(scrape(metrics_base), "nv_inference_request_success", **labels) >= before + 3, 5
    ), "nv_inference_request_success{model=\"add_sub\",version=\"1\"} did not count 3 requests"
    samples = scrape(metrics_base)
    assert metric_sum(samples, "nv_inference_count", **labels) >= inf_before + 6  # 3 requests x batch 2
    assert metric_sum(samples, "nv_inference_exec_count", **labels) >= 1
    assert metric_sum(samples, "nv_inference_request_duration_us", **labels) > 0


def test_metrics_count_failures_with_reason(http_client, metrics_base):
    def failures():
        return [
            (lab, v)
            for n, lab, v in scrape(metrics_base)
            if n == "nv_inference_request_failure" and lab.get("model") == "add_sub" and lab.get("version") == "1"
        ]

    before = sum(v for _, v in failures())
    bad = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32), binary_data=False)
    ok = httpclient.InferInput("INPUT1", [1, 16], "FP32")
    ok.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32), binary_data=False)
    try:
        http_client.infer("add_sub", [bad, ok])
    except Exception:
        pass
    else:
        raise AssertionError("a wrong-shape request succeeded")
    assert wait_until(lambda: sum(v for _, v in failures()) >= before + 1, 5), (
        f"nv_inference_request_failure for add_sub did not grow: {failures()}"
    )
    for lab, _ in failures():
        assert lab.get("reason"), f"nv_inference_request_failure sample without a reason label: {lab}"
