"""Health, server and model metadata, model configuration, repository index, load / unload."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from v2util import expect_error, wait_until

# Extensions the rest of this suite relies on; Triton names them so in server metadata.
REQUIRED_EXTENSIONS = {"binary_tensor_data", "model_repository", "model_configuration", "statistics"}

ADD_SUB_IO = {
    "inputs": {"INPUT0": ("FP32", [-1, 16]), "INPUT1": ("FP32", [-1, 16])},
    "outputs": {"OUTPUT0": ("FP32", [-1, 16]), "OUTPUT1": ("FP32", [-1, 16])},
}


# --- health -----------------------------------------------------------------------------------


def test_http_live_and_ready(http_client, base_url):
    assert http_client.is_server_live()
    assert http_client.is_server_ready()
    for path, key in (("live", "live"), ("ready", "ready")):
        r = requests.get(f"{base_url}/v2/health/{path}", timeout=10)
        assert r.status_code == 200, r.text
        # Triton answers with an empty body; the OIP spec shows {"live": true}. Either is fine,
        # but a JSON body must not say false.
        if r.content.strip():
            assert r.json().get(key, True) is True, r.text


def test_grpc_live_and_ready(grpc_client):
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()


def test_model_ready(http_client, grpc_client, base_url):
    assert http_client.is_model_ready("add_sub")
    assert http_client.is_model_ready("add_sub", "1")
    assert grpc_client.is_model_ready("add_sub")
    assert grpc_client.is_model_ready("add_sub", "1")
    r = requests.get(f"{base_url}/v2/models/add_sub/ready", timeout=10)
    assert r.status_code == 200
    if r.content.strip():
        assert r.json().get("ready", True) is True
    assert not http_client.is_model_ready("no_such_model")


# --- server metadata --------------------------------------------------------------------------


def test_http_server_metadata(http_client):
    md = http_client.get_server_metadata()
    assert isinstance(md["name"], str) and md["name"]
    assert isinstance(md["version"], str) and md["version"]
    ext = md["extensions"]
    assert isinstance(ext, list) and all(isinstance(e, str) for e in ext)
    missing = REQUIRED_EXTENSIONS - set(ext)
    assert not missing, f"extensions {ext} lack {sorted(missing)}"


def test_grpc_server_metadata(grpc_client):
    md = grpc_client.get_server_metadata()
    assert md.name and md.version
    missing = REQUIRED_EXTENSIONS - set(md.extensions)
    assert not missing, f"extensions {list(md.extensions)} lack {sorted(missing)}"


# --- model metadata ---------------------------------------------------------------------------


def _io(tensors) -> dict:
    return {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in tensors}


@pytest.mark.parametrize("version", ["", "1"])
def test_http_model_metadata_add_sub(http_client, version):
    md = http_client.get_model_metadata("add_sub", model_version=version)
    assert md["name"] == "add_sub"
    assert md["platform"] == "onnxruntime_onnx"
    if "versions" in md:
        assert "1" in md["versions"]
    assert _io(md["inputs"]) == ADD_SUB_IO["inputs"]
    assert _io(md["outputs"]) == ADD_SUB_IO["outputs"]


@pytest.mark.parametrize("version", ["", "1"])
def test_grpc_model_metadata_add_sub(grpc_client, version):
    md = grpc_client.get_model_metadata("add_sub", model_version=version)
    assert md.name == "add_sub"
    assert md.platform == "onnxruntime_onnx"
    assert "1" in md.versions
    got_in = {t.name: (t.datatype, list(t.shape)) for t in md.inputs}
    got_out = {t.name: (t.datatype, list(t.shape)) for t in md.outputs}
    assert got_in == ADD_SUB_IO["inputs"]
    assert got_out == ADD_SUB_IO["outputs"]


def test_model_metadata_bytes_and_autocompleted(http_client):
    md = http_client.get_model_metadata("identity_bytes")
    assert _io(md["inputs"]) == {"INPUT0": ("BYTES", [-1])}
    assert _io(md["outputs"]) == {"OUTPUT0": ("BYTES", [-1])}
    # identity has no config file: everything below comes from the ONNX model (auto-complete).
    md = http_client.get_model_metadata("identity")
    assert [(t["name"], t["datatype"]) for t in md["inputs"]] == [("INPUT0", "INT32")]
    assert [(t["name"], t["datatype"]) for t in md["outputs"]] == [("OUTPUT0", "INT32")]
    assert md["inputs"][0]["shape"][0] == -1


# --- model configuration ----------------------------------------------------------------------


def _dims(t) -> list[int]:
    return [int(d) for d in t.get("dims", [])]


def test_http_model_config_add_sub(http_client):
    cfg = http_client.get_model_config("add_sub")
    assert cfg["name"] == "add_sub"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert int(cfg["max_batch_size"]) == 8
    assert {t["name"]: (t["data_type"], _dims(t)) for t in cfg["input"]} == {
        "INPUT0": ("TYPE_FP32", [16]),
        "INPUT1": ("TYPE_FP32", [16]),
    }
    assert {t["name"]: (t["data_type"], _dims(t)) for t in cfg["output"]} == {
        "OUTPUT0": ("TYPE_FP32", [16]),
        "OUTPUT1": ("TYPE_FP32", [16]),
    }
    assert "dynamic_batching" in cfg
    assert int(cfg["dynamic_batching"].get("max_queue_delay_microseconds", 0)) == 0  # `dynamic_batching { }`: no delay
    groups = cfg.get("instance_group", [])
    assert sum(int(g.get("count", 1)) for g in groups) == 1
    assert all(g.get("kind", "KIND_CPU") == "KIND_CPU" for g in groups)


def test_http_model_config_versioned_path(base_url):
    r = requests.get(f"{base_url}/v2/models/add_sub/versions/1/config", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "add_sub"


def test_grpc_model_config_add_sub(grpc_client):
    cfg = grpc_client.get_model_config("add_sub").config
    assert cfg.name == "add_sub"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        ("INPUT0", model_config_pb2.TYPE_FP32, [16]),
        ("INPUT1", model_config_pb2.TYPE_FP32, [16]),
    ]
    assert sorted(t.name for t in cfg.output) == ["OUTPUT0", "OUTPUT1"]
    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    # The JSON rendering that tritonclient offers must work too.
    js = grpc_client.get_model_config("add_sub", as_json=True)["config"]
    assert js["name"] == "add_sub" and int(js["max_batch_size"]) == 8


def test_model_config_from_yaml(http_client):
    cfg = http_client.get_model_config("iris")
    assert cfg["name"] == "iris"
    assert int(cfg["max_batch_size"]) == 16
    assert [(t["name"], t["data_type"], _dims(t)) for t in cfg["input"]] == [("input", "TYPE_FP32", [4])]
    outs = {t["name"]: t for t in cfg["output"]}
    assert set(outs) == {"label", "probabilities"}
    assert outs["label"]["data_type"] == "TYPE_INT64"
    assert outs["probabilities"]["data_type"] == "TYPE_FP32"
    assert _dims(outs["probabilities"]) == [3]


def test_model_config_autocompleted(http_client, grpc_client):
    cfg = http_client.get_model_config("identity")
    assert cfg["name"] == "identity"
    assert [(t["name"], t["data_type"]) for t in cfg["input"]] == [("INPUT0", "TYPE_INT32")]
    assert [(t["name"], t["data_type"]) for t in cfg["output"]] == [("OUTPUT0", "TYPE_INT32")]
    g = grpc_client.get_model_config("identity").config
    assert [t.name for t in g.input] == ["INPUT0"]
    assert g.input[0].data_type == model_config_pb2.TYPE_INT32


# --- repository -------------------------------------------------------------------------------

SERVED = ("add_sub", "identity", "identity_bytes", "iris")


def test_http_repository_index(http_client):
    index = http_client.get_model_repository_index()
    assert isinstance(index, list)
    by_name = {}
    for entry in index:
        by_name.setdefault(entry["name"], []).append(entry)
    for m in SERVED:
        assert m in by_name, f"{m} missing from repository index {index}"
        assert any(e.get("state") == "READY" for e in by_name[m]), by_name[m]
    assert any(e.get("version") == "1" for e in by_name["add_sub"]), by_name["add_sub"]


def test_http_repository_index_ready_filter(base_url):
    r = requests.post(f"{base_url}/v2/repository/index", json={"ready": True}, timeout=10)
    assert r.status_code == 200, r.text
    entries = r.json()
    assert {"add_sub", "iris"} <= {e["name"] for e in entries}
    assert all(e.get("state") == "READY" for e in entries), entries


def test_grpc_repository_index(grpc_client):
    index = grpc_client.get_model_repository_index()
    states = {}
    for m in index.models:
        states.setdefault(m.name, set()).add(m.state)
    for m in SERVED:
        assert "READY" in states.get(m, set()), f"{m}: {states.get(m)}"


def _identity_shape(client, n: int) -> list[int]:
    """Request shape for n INT32 elements: [n] when the auto-completed input is [-1], or
    [n, 1, ...] when the server auto-completed extra unit dims (Triton's reshape convention)."""
    shape = client.get_model_metadata("identity")["inputs"][0]["shape"]
    return [n] + [1] * (len(shape) - 1)


def _identity_infer_http(client) -> None:
    x = np.array([7, -1, 2**31 - 1], dtype=np.int32)
    shape = _identity_shape(client, 3)
    i = httpclient.InferInput("INPUT0", shape, "INT32")
    i.set_data_from_numpy(x.reshape(shape), binary_data=False)
    r = client.infer("identity", [i])
    assert r.as_numpy("OUTPUT0").reshape(-1).tolist() == x.tolist()


def _grpc_ready(client, name: str) -> bool:
    try:
        return client.is_model_ready(name)
    except Exception:
        return False


def test_http_unload_then_load(http_client):
    try:
        http_client.unload_model("identity")
        assert wait_until(lambda: not http_client.is_model_ready("identity"), 15), (
            "identity still ready 15 s after unload"
        )
        index = {e["name"]: e for e in http_client.get_model_repository_index()}
        assert "identity" in index, "an unloaded model stays listed in the repository index"
        assert index["identity"].get("state") != "READY", index["identity"]
        i = httpclient.InferInput("INPUT0", [1], "INT32")
        i.set_data_from_numpy(np.array([1], dtype=np.int32), binary_data=False)
        with pytest.raises(InferenceServerException):
            http_client.infer("identity", [i])
    finally:
        http_client.load_model("identity")
    assert wait_until(lambda: http_client.is_model_ready("identity"), 30)
    index = {e["name"]: e for e in http_client.get_model_repository_index()}
    assert index["identity"].get("state") == "READY"
    _identity_infer_http(http_client)


def test_grpc_unload_then_load(grpc_client, http_client):
    try:
        grpc_client.unload_model("identity")
        assert wait_until(lambda: not _grpc_ready(grpc_client, "identity"), 15)
        assert not http_client.is_model_ready("identity")
    finally:
        grpc_client.load_model("identity")
    assert wait_until(lambda: _grpc_ready(grpc_client, "identity"), 30)
    shape = _identity_shape(http_client, 3)
    x = np.array([1, 2, 3], dtype=np.int32)
    i = grpcclient.InferInput("INPUT0", shape, "INT32")
    i.set_data_from_numpy(x.reshape(shape))
    r = grpc_client.infer("identity", [i])
    assert r.as_numpy("OUTPUT0").reshape(-1).tolist() == [1, 2, 3]


def test_load_of_ready_model_is_harmless(http_client):
    # Triton reloads (or keeps) a model that is already loaded; it stays ready.
    http_client.load_model("add_sub")
    assert wait_until(lambda: http_client.is_model_ready("add_sub"), 30)


def test_load_unknown_model_fails(http_client):
    expect_error(lambda: http_client.load_model("no_such_model"), "no_such_model")
