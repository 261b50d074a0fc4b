"""Small helpers shared by the conformance tests (plain functions, no fixtures)."""

from __future__ import annotations

import json
import os
import re
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

# HTTP status (as tritonclient.http reports it) and gRPC code (as tritonclient.grpc reports it).
HTTP_NOT_FOUND = "404"
HTTP_BAD_REQUEST = "400"
GRPC_NOT_FOUND = "StatusCode.NOT_FOUND"
GRPC_INVALID_ARGUMENT = "StatusCode.INVALID_ARGUMENT"


def models_dir() -> Path:
    """The real models' folder: $SLUICE_MODELS, else $SLUICE_HOME/models, else
    ~/.local/share/sluice/models (scripts/setup.sh fills it)."""
    if os.environ.get("SLUICE_MODELS"):
        return Path(os.environ["SLUICE_MODELS"])
    home = os.environ.get("SLUICE_HOME") or os.path.expanduser("~/.local/share/sluice")
    return Path(home) / "models"


def model_path(rel: str) -> Path:
    """`rel` inside the models folder; a missing model fails the test (never skips it)."""
    path = models_dir() / rel
    if not path.exists():
        pytest.fail(
            f"{path} does not exist: the real models are missing. Run `bash scripts/setup.sh` "
            "or set SLUICE_MODELS to a folder that holds them",
            pytrace=False,
        )
    return path


def add_sub_data(rows: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-10, 10, size=(rows, 16)).astype(np.float32)
    b = rng.uniform(-10, 10, size=(rows, 16)).astype(np.float32)
    return a, b


def http_inputs(client_mod, a: np.ndarray, b: np.ndarray, binary: bool):
    """INPUT0/INPUT1 for add_sub with tritonclient.http (binary or JSON data)."""
    i0 = client_mod.InferInput("INPUT0", list(a.shape), "FP32")
    i0.set_data_from_numpy(a, binary_data=binary)
    i1 = client_mod.InferInput("INPUT1", list(b.shape), "FP32")
    i1.set_data_from_numpy(b, binary_data=binary)
    return [i0, i1]


def grpc_inputs(client_mod, a: np.ndarray, b: np.ndarray):
    i0 = client_mod.InferInput("INPUT0", list(a.shape), "FP32")
    i0.set_data_from_numpy(a)
    i1 = client_mod.InferInput("INPUT1", list(b.shape), "FP32")
    i1.set_data_from_numpy(b)
    return [i0, i1]


def expect_error(fn: Callable[[], Any], *needles: str, status: str | tuple[str, ...] | None = None):
    """Call fn, which must raise InferenceServerException whose message names every needle
    (case-insensitive) and whose status is `status` (one of them, if a tuple)."""
    with pytest.raises(InferenceServerException) as info:
        fn()
    e = info.value
    msg = e.message() or ""
    for n in needles:
        assert n.lower() in msg.lower(), f"error message {msg!r} does not mention {n!r}"
    if status is not None:
        allowed = (status,) if isinstance(status, str) else status
        assert e.status() in allowed, f"status {e.status()!r} not in {allowed} (message {msg!r})"
    # The server's message must be its own text, not a client-side decoding failure.
    assert "exception occurred in the client" not in msg, msg
    return e


def mentions_shape(msg: str, shape: list[int]) -> bool:
    """Does msg show this shape, written as [1,3], [1, 3], (1, 3) or 1x3?"""
    sep = r"\s*[,x×]\s*"
    pat = r"(?<![\d-])" + sep.join(re.escape(str(d)) for d in shape) + r"(?!\d)"
    return re.search(pat, msg) is not None


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def flat(x) -> list:
    return np.asarray(x).reshape(-1).tolist()


def as_bytes_list(arr) -> list[bytes]:
    """A BYTES tensor as returned by tritonclient (str in JSON mode, bytes in binary mode)."""
    out = []
    for v in np.asarray(arr, dtype=object).reshape(-1):
        out.append(v.encode("utf-8") if isinstance(v, str) else bytes(v))
    return out


def split_binary_response(body: bytes, header_len: int | None) -> tuple[dict, bytes]:
    """Split an HTTP inference response into its JSON header and the binary tail."""
    if header_len is None:
        return json.loads(body), b""
    return json.loads(body[:header_len]), body[header_len:]


def binary_outputs(header: dict, tail: bytes) -> dict[str, bytes]:
    """name -> raw bytes for every output that carries binary_data_size, in order."""
    out = {}
    off = 0
    for o in header.get("outputs", []):
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        out[o["name"]] = tail[off : off + int(size)]
        off += int(size)
    assert off == len(tail), f"binary section is {len(tail)} bytes, outputs claim {off}"
    return out


def serialize_bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


# --- Prometheus text format ---------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        samples.append((m.group(1), labels, value))
    return samples


def scrape(metrics_base: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"{metrics_base}/metrics", timeout=10) as r:
        assert r.status == 200
        return parse_metrics(r.read().decode("utf-8"))


def metric_sum(samples, name: str, **labels: str) -> float:
    """Sum of all samples of `name` whose labels include `labels`."""
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == val for k, val in labels.items())
    )
