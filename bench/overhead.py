#!/usr/bin/env python3
"""Serving overhead of Sluice on the trivial add_sub model: requests/s, p50 and p99 latency.

Drives `add_sub` (examples/models) at several concurrency levels over HTTP with JSON tensors,
HTTP with Triton's binary tensor extension, and gRPC, for a fixed time each, and prints a
markdown table. Optionally drives an "echo" server too (a server that answers
POST /v2/models/add_sub/infer with a fixed body, bench/echo_server), which shows what the HTTP
stack alone costs on this machine, so that Sluice's own overhead is the difference.

Usage (server started with `sluice serve --model-repository examples/models`):

    .venv/bin/python bench/overhead.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001
    .venv/bin/python bench/overhead.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 \\
        --echo 127.0.0.1:9000 --seconds 10 --concurrency 1,8,32
    .venv/bin/python bench/overhead.py --tool perf_analyzer --http 127.0.0.1:8000 \\
        --grpc 127.0.0.1:8001 --json bench/results/overhead.json

Options:
    --http HOST:PORT       Sluice HTTP endpoint (modes http-json, http-binary)
    --grpc HOST:PORT       Sluice gRPC endpoint (mode grpc)
    --echo HOST:PORT       an echo server's HTTP endpoint, driven with the same HTTP modes
    --echo-grpc HOST:PORT  an echo server's gRPC endpoint, if it has one
    --modes LIST           any of http-json,http-binary,grpc (default: all that have a URL)
    --concurrency LIST     concurrency levels (default 1,8,32)
    --seconds N            measured seconds per cell (default 5), after --warmup seconds (default 1)
    --batch N              rows per request (default 1; add_sub allows up to 8)
    --model NAME           model to drive (default add_sub; it must have add_sub's I/O)
    --tool python|perf_analyzer
                           python (default): in-process load with threads, keep-alive
                           http.client connections and pre-serialized requests, raw gRPC stub
                           calls with one channel per worker. On a 2-core machine the Python
                           client (GIL) can be the bottleneck at high concurrency; compare with
                           --tool perf_analyzer, Triton's C++ load generator, which this runs
                           once per cell and whose CSV report (-f) it parses. perf_analyzer
                           also needs model metadata, config and statistics from the target,
                           so an echo server must answer those too to be driven by it.
    --perf-analyzer PATH   default $SLUICE_HOME/bin/perf_analyzer (installed by scripts/setup.sh)
    --pa-args "ARGS"       extra perf_analyzer arguments (e.g. "--stability-percentage 50")
    --json FILE            also write the results as JSON

Columns: req/s = completed requests per second (inferences/s = req/s x batch); p50, p99 =
client-side request latency in milliseconds; errors = failed requests (python tool only).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MODES = ("http-json", "http-binary", "grpc")


@dataclass
class Result:
    target: str
    mode: str
    concurrency: int
    tool: str
    requests_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    requests: int = 0
    errors: int = 0
    note: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# request bodies


def make_data(batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=(batch, 16)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(batch, 16)).astype(np.float32)
    return a, b


def http_request(mode: str, batch: int) -> tuple[bytes, dict[str, str]]:
    a, b = make_data(batch)
    if mode == "http-json":
        body = {
            "inputs": [
                {"name": "INPUT0", "shape": [batch, 16], "datatype": "FP32", "data": a.reshape(-1).tolist()},
                {"name": "INPUT1", "shape": [batch, 16], "datatype": "FP32", "data": b.reshape(-1).tolist()},
            ]
        }
        return json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": "application/json"}
    header = {
        "inputs": [
            {"name": "INPUT0", "shape": [batch, 16], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "INPUT1", "shape": [batch, 16], "datatype": "FP32", "parameters": {"binary_data_size": b.nbytes}},
        ],
        "parameters": {"binary_data_output": True},
    }
    hdr = json.dumps(header, separators=(",", ":")).encode()
    return hdr + a.tobytes() + b.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(hdr)),
    }


def check_http_response(mode: str, batch: int, status: int, headers, data: bytes) -> None:
    """Raise if a Sluice response is not the right answer (used on each worker's first reply)."""
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
    a, b = make_data(batch)
    hlen = headers.get("Inference-Header-Content-Length")
    if mode == "http-json":
        outs = {o["name"]: np.array(o["data"], dtype=np.float32) for o in json.loads(data)["outputs"]}
    else:
        if hlen is None:
            raise RuntimeError("binary response without Inference-Header-Content-Length")
        head = json.loads(data[: int(hlen)])
        outs, off = {}, int(hlen)
        for o in head["outputs"]:
            n = int(o["parameters"]["binary_data_size"])
            outs[o["name"]] = np.frombuffer(data[off : off + n], dtype="<f4")
            off += n
    if not (np.allclose(outs["OUTPUT0"].reshape(batch, 16), a + b) and np.allclose(outs["OUTPUT1"].reshape(batch, 16), a - b)):
        raise RuntimeError("wrong answer from the server")


def grpc_request(model: str, batch: int):
    from tritonclient.grpc import service_pb2

    a, b = make_data(batch)
    req = service_pb2.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        t = req.inputs.add()
        t.name, t.datatype = name, "FP32"
        t.shape.extend([batch, 16])
    req.raw_input_contents.extend([a.tobytes(), b.tobytes()])
    return req


# --------------------------------------------------------------------------------------------
# python load generator


class Connection(http.client.HTTPConnection):
    """Keep-alive HTTP/1.1 connection with TCP_NODELAY (no Nagle delay on small requests)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def split_hostport(hp: str) -> tuple[str, int]:
    host, _, port = hp.rpartition(":")
    return host or "127.0.0.1", int(port)


def run_python(target: str, url: str, mode: str, concurrency: int, args) -> Result:
    res = Result(target, mode, concurrency, "python")
    verify = target == "sluice" and not args.no_verify
    t_begin = [0.0]
    # Workers connect (and check one answer) first; the clock starts when all are ready.
    barrier = threading.Barrier(concurrency + 1, action=lambda: t_begin.__setitem__(0, time.perf_counter()))
    records: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []

    if mode == "grpc":
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        request = grpc_request(args.model, args.batch)

        def worker(k: int) -> None:
            channel = grpc.insecure_channel(url)
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelInfer
            rec = records[k]
            try:
                if verify:
                    try:
                        resp = call(request, timeout=30)
                        got = np.frombuffer(resp.raw_output_contents[0], dtype="<f4")
                        a, b = make_data(args.batch)
                        names = [o.name for o in resp.outputs]
                        if names[0] != "OUTPUT0" or not np.allclose(got.reshape(a.shape), a + b):
                            raise RuntimeError("wrong answer from the server")
                    except grpc.RpcError as e:
                        first_error.append(f"{e.code()}: {e.details()}")
                    except Exception as e:  # noqa: BLE001
                        first_error.append(f"{type(e).__name__}: {e}")
                barrier.wait()
                stop = t_begin[0] + args.warmup + args.seconds
                while True:
                    t0 = time.perf_counter()
                    if t0 >= stop:
                        break
                    try:
                        call(request, timeout=30)
                    except grpc.RpcError as e:
                        errors[k] += 1
                        if not first_error:
                            first_error.append(f"{e.code()}: {e.details()}")
                        continue
                    rec.append((t0, time.perf_counter() - t0))
            finally:
                channel.close()

    else:
        host, port = split_hostport(url)
        body, headers = http_request(mode, args.batch)
        path = f"/v2/models/{args.model}/infer"

        def worker(k: int) -> None:
            conn = Connection(host, port, timeout=30)
            rec = records[k]
            try:
                if verify:
                    try:
                        conn.request("POST", path, body=body, headers=headers)
                        r = conn.getresponse()
                        check_http_response(mode, args.batch, r.status, r.headers, r.read())
                    except Exception as e:  # noqa: BLE001
                        first_error.append(f"{type(e).__name__}: {e}")
                        conn.close()
                        conn = Connection(host, port, timeout=30)
                barrier.wait()
                stop = t_begin[0] + args.warmup + args.seconds
                while True:
                    t0 = time.perf_counter()
                    if t0 >= stop:
                        break
                    try:
                        conn.request("POST", path, body=body, headers=headers)
                        r = conn.getresponse()
                        r.read()
                        ok = r.status == 200
                        if r.will_close:
                            conn.close()
                    except (OSError, http.client.HTTPException) as e:
                        ok = False
                        conn.close()
                        conn = Connection(host, port, timeout=30)
                        if not first_error:
                            first_error.append(f"{type(e).__name__}: {e}")
                    if ok:
                        rec.append((t0, time.perf_counter() - t0))
                    else:
                        errors[k] += 1
            finally:
                conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(args.warmup + args.seconds + 60)

    window_start = t_begin[0] + args.warmup
    window_end = window_start + args.seconds
    lat = np.array([d for rec in records for (t0, d) in rec if t0 >= window_start and t0 + d <= window_end])
    res.requests = int(lat.size)
    res.errors = sum(errors)
    res.requests_per_s = lat.size / args.seconds
    if lat.size:
        res.p50_ms = float(np.percentile(lat, 50) * 1e3)
        res.p99_ms = float(np.percentile(lat, 99) * 1e3)
    if first_error:
        res.note = first_error[0][:200]
    return res


# --------------------------------------------------------------------------------------------
# perf_analyzer


def parse_pa_csv(path: Path) -> list[dict]:
    """perf_analyzer's -f report: one row per concurrency; latencies in microseconds."""
    with open(path, newline="") as f:
        return [{k.strip(): v.strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def run_perf_analyzer(target: str, url: str, mode: str, concurrency: int, args) -> Result:
    res = Result(target, mode, concurrency, "perf_analyzer")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "pa.csv"
        cmd = [
            args.perf_analyzer,
            "-m", args.model,
            "-u", url,
            "-i", "grpc" if mode == "grpc" else "http",
            "-b", str(args.batch),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(int(args.seconds * 1000)),
            "--max-threads", str(max(16, concurrency)),
            "-f", str(report),
            "--verbose-csv",
        ]  # fmt: skip
        if mode == "http-json":
            cmd += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
        cmd += shlex.split(args.pa_args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 30 + 120)
        except subprocess.TimeoutExpired:
            res.note = "perf_analyzer timed out"
            return res
        if proc.returncode != 0 or not report.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            res.note = f"perf_analyzer exit {proc.returncode}: {' | '.join(tail)}"[:300]
            return res
        rows = parse_pa_csv(report)
    row = next((r for r in rows if int(r.get("Concurrency", -1)) == concurrency), rows[-1] if rows else None)
    if row is None:
        res.note = "empty perf_analyzer report"
        return res
    res.requests_per_s = float(row["Inferences/Second"]) / args.batch
    res.p50_ms = float(row["p50 latency"]) / 1e3
    res.p99_ms = float(row["p99 latency"]) / 1e3
    server_us = sum(
        float(row.get(k, 0) or 0)
        for k in ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")
    )
    res.extra = {"server_us": server_us}  # queue + compute, from the server's statistics
    if row.get("Avg latency"):
        res.extra["avg_latency_ms"] = float(row["Avg latency"]) / 1e3
    return res


# --------------------------------------------------------------------------------------------


def markdown(results: list[Result]) -> str:
    lines = [
        "| target | mode | concurrency | tool | req/s | p50 ms | p99 ms | errors | note |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.target} | {r.mode} | {r.concurrency} | {r.tool} | {r.requests_per_s:,.0f} | "
            f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.errors} | {' '.join(r.note.split()).replace('|', '/')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", help="Sluice HTTP host:port")
    ap.add_argument("--grpc", help="Sluice gRPC host:port")
    ap.add_argument("--echo", help="echo server HTTP host:port")
    ap.add_argument("--echo-grpc", help="echo server gRPC host:port")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--model", default="add_sub")
    ap.add_argument("--tool", choices=("python", "perf_analyzer"), default="python")
    home = Path(os.environ.get("SLUICE_HOME", Path.home() / ".local/share/sluice"))
    ap.add_argument("--perf-analyzer", default=str(home / "bin" / "perf_analyzer"))
    ap.add_argument("--pa-args", default="", help="extra perf_analyzer arguments")
    ap.add_argument("--no-verify", action="store_true", help="do not check Sluice's answers")
    ap.add_argument("--json", help="write the results as JSON to this file")
    args = ap.parse_args()

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = set(modes) - set(MODES)
    if bad:
        ap.error(f"unknown modes {sorted(bad)}; choose from {', '.join(MODES)}")
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not (args.http or args.grpc or args.echo or args.echo_grpc):
        ap.error("give at least one of --http, --grpc, --echo, --echo-grpc")
    if args.tool == "perf_analyzer" and not os.access(args.perf_analyzer, os.X_OK):
        ap.error(f"perf_analyzer not found at {args.perf_analyzer} (run scripts/setup.sh)")

    plan = []
    for target, http_url, grpc_url in (("sluice", args.http, args.grpc), ("echo", args.echo, args.echo_grpc)):
        for mode in modes:
            url = grpc_url if mode == "grpc" else http_url
            if url:
                plan += [(target, url, mode, c) for c in levels]

    run = run_perf_analyzer if args.tool == "perf_analyzer" else run_python
    results = []
    for target, url, mode, c in plan:
        print(f"{target} {mode} concurrency {c} ({args.tool}, {args.seconds:g}s) ...", file=sys.stderr, flush=True)
        r = run(target, url, mode, c, args)
        print(
            f"  {r.requests_per_s:,.0f} req/s, p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms"
            + (f", {r.errors} errors" if r.errors else "")
            + (f" [{' '.join(r.note.split())}]" if r.note else ""),
            file=sys.stderr,
            flush=True,
        )
        results.append(r)

    print(
        f"\nadd_sub overhead, batch {args.batch}, {args.seconds:g} s per cell, tool {args.tool}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(markdown(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(r).items()} for r in results]
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(r.requests_per_s == 0 for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
