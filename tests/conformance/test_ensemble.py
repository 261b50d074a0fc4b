"""A Triton ensemble (examples/models/add_sub_twice: three add_sub steps wired by input_map /
output_map) through the real tritonclient, HTTP and gRPC, as a Triton user would drive it."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from v2util import add_sub_data, grpc_inputs, http_inputs

ENSEMBLE = "add_sub_twice"


def _check(res, a, b):
    # The same float32 operations as the steps: (a + b) + (a - b) is 2a up to rounding.
    s, d = a + b, a - b
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), s + d)
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), s - d)
    np.testing.assert_array_equal(res.as_numpy("DOUBLE0"), a + a)


@pytest.mark.parametrize("binary", [False, True])
def test_http_ensemble(http_client, binary):
    a, b = add_sub_data(3, seed=31)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1", "DOUBLE0")]
    res = http_client.infer(ENSEMBLE, http_inputs(httpclient, a, b, binary), outputs=outputs)
    _check(res, a, b)
    assert res.get_response()["model_name"] == ENSEMBLE
    assert res.get_response()["model_version"] == "1"


def test_grpc_ensemble(grpc_client):
    a, b = add_sub_data(2, seed=32)
    res = grpc_client.infer(ENSEMBLE, grpc_inputs(grpcclient, a, b), model_version="1")
    _check(res, a, b)
    # Only what was asked for comes back.
    res = grpc_client.infer(ENSEMBLE, grpc_inputs(grpcclient, a, b), outputs=[grpcclient.InferRequestedOutput("DOUBLE0")])
    assert res.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(res.as_numpy("DOUBLE0"), a + a)


def test_ensemble_metadata_and_config(http_client, grpc_client):
    md = http_client.get_model_metadata(ENSEMBLE)
    assert md["platform"] == "ensemble" and md["versions"] == ["1"]
    assert [t["name"] for t in md["outputs"]] == ["OUTPUT0", "OUTPUT1", "DOUBLE0"]
    assert http_client.is_model_ready(ENSEMBLE) and grpc_client.is_model_ready(ENSEMBLE, "1")
    cfg = http_client.get_model_config(ENSEMBLE)
    steps = cfg["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["add_sub"] * 3
    assert steps[1]["input_map"] == {"INPUT0": "sum", "INPUT1": "difference"}
    g = grpc_client.get_model_config(ENSEMBLE).config
    assert g.platform == "ensemble"
    assert [s.model_name for s in g.ensemble_scheduling.step] == ["add_sub"] * 3
    assert dict(g.ensemble_scheduling.step[0].output_map) == {"OUTPUT0": "sum", "OUTPUT1": "difference"}
    assert g.ensemble_scheduling.step[2].model_version == -1


def test_ensemble_statistics_list_the_composing_model(http_client):
    a, b = add_sub_data(1, seed=33)
    http_client.infer(ENSEMBLE, http_inputs(httpclient, a, b, False))
    stats = http_client.get_inference_statistics(ENSEMBLE)["model_stats"]
    assert stats[0]["name"] == ENSEMBLE and int(stats[0]["inference_count"]) >= 1
    assert "add_sub" in [s["name"] for s in stats[1:]]


def test_ensemble_is_in_the_repository_index(grpc_client):
    index = {m.name: m for m in grpc_client.get_model_repository_index().models}
    assert index[ENSEMBLE].state == "READY" and index[ENSEMBLE].version == "1"
