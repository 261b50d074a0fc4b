#!/usr/bin/env python3
"""How long a reload of the real spam-accurate model takes, and what it does to request latency.

Starts `target/release/sluice` on a temporary repository holding spam-accurate (a symlink to
spam-accurate/model.onnx in $SLUICE_MODELS, which scripts/setup.sh fills, and a config with
dynamic batching and ragged inputs), drives it with closed-loop HTTP clients posting one fixed tokenized email, and after a
steady-state window reloads the model several times through the repository API
(`POST /v2/repository/models/spam-accurate/load`). It reports:

- reload time: how long the load call takes, from the request until the new version serves and
  the old one has drained (the client's view of the whole reload);
- request latency p50/p99 before any reload, for requests sent while a reload was running, and
  for those sent in the second after it (the new version's first requests);
- errors: any answer other than 200 (there must be none).

With --warmup the config also has a `model_warmup` sample (the same email, batch 1), so the new
version runs once before it takes traffic.

    cargo build --release -p sluice
    .venv/bin/python bench/reload.py --reloads 5
"""

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
MODEL = "spam-accurate"

CONFIG = """
name: "spam-accurate"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true }
]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "label" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } }
]
dynamic_batching { }
"""

WARMUP = """
model_warmup [ {
  name: "email"
  batch_size: 1
  inputs { key: "input_ids" value: { data_type: TYPE_INT64 dims: [ %d ] input_data_file: "input_ids.bin" } }
  inputs { key: "attention_mask" value: { data_type: TYPE_INT64 dims: [ %d ] input_data_file: "mask.bin" } }
} ]
"""


def models_dir():
    """$SLUICE_MODELS, else $SLUICE_HOME/models, else ~/.local/share/sluice/models."""
    if os.environ.get("SLUICE_MODELS"):
        return Path(os.environ["SLUICE_MODELS"])
    return Path(os.environ.get("SLUICE_HOME") or os.path.expanduser("~/.local/share/sluice")) / "models"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def email_tokens(n):
    """A fixed 'email': [CLS], n-2 word-piece ids from the ordinary vocabulary, [SEP]."""
    rng = random.Random(7)
    return [101] + [rng.randrange(1996, 29612) for _ in range(n - 2)] + [102]


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Load:
    """Closed-loop clients; each records (start, end, status) of every request."""

    def __init__(self, url, body, clients):
        self.url, self.body, self.clients = url, body, clients
        self.stop = threading.Event()
        self.records = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self):
        s = requests.Session()
        data = json.dumps(self.body)
        headers = {"Content-Type": "application/json"}
        mine = []
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                r = s.post(self.url, data=data, headers=headers, timeout=30)
                status = r.status_code
                if status == 200:
                    r.json()["outputs"]
            except Exception as e:  # noqa: BLE001 - every failure counts as an error
                status = repr(e)
            mine.append((t0, time.perf_counter(), status))
        with self.lock:
            self.records.extend(mine)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.records


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sluice", default=str(ROOT / "target/release/sluice"))
    ap.add_argument("--model", default=str(models_dir() / "spam-accurate/model.onnx"))
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--before", type=float, default=10.0, help="seconds of steady state before the first reload")
    ap.add_argument("--gap", type=float, default=4.0, help="seconds between reloads")
    ap.add_argument("--warmup", action="store_true", help="add a model_warmup sample to the config")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    if not Path(args.model).is_file():
        sys.exit(f"{args.model} does not exist: run scripts/setup.sh (it fills $SLUICE_MODELS) or pass --model")
    tokens = email_tokens(args.tokens)
    tmp = Path(tempfile.mkdtemp(prefix="sluice-reload-"))
    mdir = tmp / "models" / MODEL
    (mdir / "1").mkdir(parents=True)
    (mdir / "1" / "model.onnx").symlink_to(Path(args.model).resolve())
    config = CONFIG
    if args.warmup:
        config += WARMUP % (len(tokens), len(tokens))
        (mdir / "warmup").mkdir()
        (mdir / "warmup" / "input_ids.bin").write_bytes(b"".join(t.to_bytes(8, "little") for t in tokens))
        (mdir / "warmup" / "mask.bin").write_bytes(b"".join((1).to_bytes(8, "little") for _ in tokens))
    (mdir / "config.pbtxt").write_text(config)

    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(Path.home() / ".local/share/sluice/lib/libonnxruntime.so"))
    env["SLUICE_LOG"] = "warn"
    log = open(tmp / "server.log", "w")
    cmd = [args.sluice, "serve", "--model-repository", str(tmp / "models"), "--host", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--model-control-mode", "explicit", "--load-model", MODEL, "--state-dir", str(tmp / "state")]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{base}/v2/models/{MODEL}/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"the server did not become ready; see {tmp / 'server.log'}")
            time.sleep(0.1)

        body = {"inputs": [
            {"name": "input_ids", "shape": [1, len(tokens)], "datatype": "INT64", "data": tokens},
            {"name": "attention_mask", "shape": [1, len(tokens)], "datatype": "INT64", "data": [1] * len(tokens)},
        ]}
        load = Load(f"{base}/v2/models/{MODEL}/infer", body, args.clients)
        load.start()
        time.sleep(args.before)
        reloads = []
        for _ in range(args.reloads):
            t0 = time.perf_counter()
            r = requests.post(f"{base}/v2/repository/models/{MODEL}/load", json={}, timeout=120)
            t1 = time.perf_counter()
            if r.status_code != 200:
                sys.exit(f"reload failed: {r.status_code} {r.text}")
            reloads.append((t0, t1))
            time.sleep(args.gap)
        records = load.finish()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    first = reloads[0][0]
    ms = lambda rs: [(e - s) * 1e3 for s, e, _ in rs]  # noqa: E731
    before = [r for r in records if r[0] < first]
    during = [r for r in records if any(t0 <= r[0] <= t1 for t0, t1 in reloads)]
    after = [r for r in records if any(t1 < r[0] <= t1 + 1.0 for _, t1 in reloads)]
    errors = [r for r in records if r[2] != 200]
    durations = [(t1 - t0) * 1e3 for t0, t1 in reloads]
    result = {
        "reload_ms": {"median": statistics.median(durations), "all": [round(d, 1) for d in durations]},
        "before": {"n": len(before), "p50_ms": percentile(ms(before), 50), "p99_ms": percentile(ms(before), 99)},
        "during": {"n": len(during), "p50_ms": percentile(ms(during), 50), "p99_ms": percentile(ms(during), 99)},
        "first_second_after": {"n": len(after), "p50_ms": percentile(ms(after), 50),
                               "p99_ms": percentile(ms(after), 99)},
        "requests": len(records),
        "errors": len(errors),
        "clients": args.clients,
        "tokens": len(tokens),
        "warmup": args.warmup,
    }
    print(f"reload of {MODEL} ({args.reloads} times, {args.clients} clients, {len(tokens)} tokens, "
          f"warmup {'on' if args.warmup else 'off'})")
    print(f"  reload time: median {result['reload_ms']['median']:.0f} ms  (all: {result['reload_ms']['all']})")
    for k in ("before", "during", "first_second_after"):
        v = result[k]
        print(f"  {k:<19} n={v['n']:<6} p50 {v['p50_ms']:7.1f} ms   p99 {v['p99_ms']:7.1f} ms")
    print(f"  requests {len(records)}, errors {len(errors)}" + (f": {errors[:3]}" if errors else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
