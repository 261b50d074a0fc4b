#!/usr/bin/env python3
"""The experiment statistics through a running server (issue 17): a client that sends requests
as users, posts their outcomes back with known rates, and reads the report after every batch.

Starts `sluice serve` on a temporary repository holding add_sub at versions 1 and 2 and one
experiment endpoint per run (`aa-<i>`: both arms convert at 30 %; `ab-<i>`: control 30 %,
treatment 40 %, the design's planned effect). Each run sends the planned number of users
(the design's units per arm, times two) in batches; after each batch it posts the batch's
conversions (`POST /v2/feedback`, by unit, as a list) and reads
`GET /v2/endpoints/<name>/experiment`, a look. Per run it records:

  * sequential: whether the always-valid test concluded at any look;
  * fixed, peeked: whether the fixed-horizon p-value was below alpha at any look;
  * fixed, once: whether it was below alpha at the last look (the planned size).

A/A runs give the false-positive rates (sequential at most alpha; fixed peeked above it), the
effect runs the observed power beside the planned 0.8. Each run's users and conversions are
drawn from a seeded generator, so a rerun repeats the outcomes.

Usage:
    cargo build -p sluice      (or --release, and --sluice target/release/sluice)
    .venv/bin/python bench/experiment_feedback.py [--runs 100] [--looks 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
version_policy: { all { } }
"""
BASELINE, EFFECT, ALPHA, POWER = 0.30, 0.10, 0.05, 0.8
EXPERIMENT = """kind: experiment
unit: {{ header: x-user-id }}
arms:
  - {{ name: control, model: add_sub, version: 1, weight: 50 }}
  - {{ name: treatment, model: add_sub, version: 2, weight: 50 }}
metrics:
  - {{ name: conv, type: proportion, primary: true }}
design: {{ baseline_rate: {b}, mde: {m}, alpha: {a}, power: {p} }}
sequential: true
"""
BODY = json.dumps({"inputs": [
    {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))},
    {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))},
]}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: bytes | None = None, headers: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def run_one(base: str, name: str, rates: dict, users: int, looks: int, seed: int) -> dict:
    rng = random.Random(seed)
    batch = max(1, users // looks)
    seq = peeked = once = False
    report = {}
    for start in range(0, users, batch):
        feedback = []
        for u in range(start, min(users, start + batch)):
            user = f"{name}-u{u}"
            answer = call(f"{base}/v2/models/{name}/infer", BODY, {"x-user-id": user})
            arm = answer["parameters"]["sluice_experiment_arm"]
            if rng.random() < rates[arm]:
                feedback.append({"unit": user, "metric": "conv", "value": 1})
        if feedback:
            call(f"{base}/v2/feedback", json.dumps(feedback).encode())
        report = call(f"{base}/v2/endpoints/{name}/experiment")
        diff = report["metrics"][0]["differences"][0]
        seq |= bool(diff["concluded"])
        peeked |= diff["p_value"] is not None and diff["p_value"] < ALPHA
    diff = report["metrics"][0]["differences"][0]
    once = diff["p_value"] is not None and diff["p_value"] < ALPHA
    return {"name": name, "sequential": seq, "fixed_peeked": peeked, "fixed_once": once,
            "units": [a["units"] for a in report["arms"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100, help="A/A runs, and as many with the planned effect")
    ap.add_argument("--looks", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4, help="runs driven at once")
    ap.add_argument("--sluice", default=str(ROOT / "target/debug/sluice"))
    ap.add_argument("--json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sluice-expfb-"))
    repo = tmp / "repo"
    for v in (1, 2):
        (repo / "add_sub" / str(v)).mkdir(parents=True)
        shutil.copy(ROOT / "crates/sluice-backend/tests/data/add_sub.onnx", repo / "add_sub" / str(v) / "model.onnx")
    (repo / "add_sub/config.pbtxt").write_text(CONFIG)
    yaml = EXPERIMENT.format(b=BASELINE, m=EFFECT, a=ALPHA, p=POWER)
    names = [f"aa-{i}" for i in range(args.runs)] + [f"ab-{i}" for i in range(args.runs)]
    for n in names:
        (repo / n).mkdir()
        (repo / n / "endpoint.yaml").write_text(yaml)
    http = free_port()
    server = subprocess.Popen(
        [args.sluice, "serve", "--host", "127.0.0.1", "--model-repository", str(repo), "--state-dir", str(tmp / "state"),
         "--http-port", str(http), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
         "--shadow-log-dir", str(tmp / "shadow")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{http}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"{base}/v2/models/{names[-1]}/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        planned = call(f"{base}/v2/endpoints/{names[0]}/experiment")["planned_units_per_arm"]
        users = 2 * planned
        started = time.time()
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            for i, n in enumerate(names):
                rates = {"control": BASELINE, "treatment": BASELINE if n.startswith("aa") else BASELINE + EFFECT}
                jobs.append(pool.submit(run_one, base, n, rates, users, args.looks, 1000 + i))
            runs = [j.result() for j in jobs]
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def rate(kind: str, key: str) -> float:
        chosen = [r for r in runs if r["name"].startswith(kind)]
        return sum(r[key] for r in chosen) / len(chosen)

    summary = {
        "runs_per_case": args.runs, "looks": args.looks, "users_per_run": users, "planned_units_per_arm": planned,
        "alpha": ALPHA, "planned_power": POWER, "baseline_rate": BASELINE, "effect": EFFECT,
        "aa": {k: rate("aa", k) for k in ("sequential", "fixed_peeked", "fixed_once")},
        "effect_detected": {k: rate("ab", k) for k in ("sequential", "fixed_peeked", "fixed_once")},
        "seconds": round(time.time() - started, 1),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
