#!/usr/bin/env python3
"""Asynchronous jobs end to end: add_sub jobs per second from the first submit to the last
completion, through the embedded store and through Redis, at a few producer concurrencies; the
raw Redis round-trip rate of this machine beside it (redis-benchmark, same run); and the latency
a job adds over a synchronous request.

Starts its own servers (release build) and its own redis-server (AOF, fsync every second) on
free ports. Usage:
    cargo build --release -p sluice
    .venv/bin/python bench/jobs.py [--jobs 2000] [--producers 1,4,16] [--workers 4] [--rounds 2]
                                   [--json bench/results/jobs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def body(i: int) -> dict:
    return {"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [float(i + k) for k in range(16)]},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}


class Server:
    def __init__(self, sluice: str, workers: int, queue: str | None, tmp: Path):
        self.http, self.metrics = free_port(), free_port()
        args = [sluice, "serve", "--model-repository", str(ROOT / "examples/models"), "--host", "127.0.0.1",
                "--http-port", str(self.http), "--grpc-port", str(free_port()), "--metrics-port", str(self.metrics),
                "--workers", str(workers), "--state-dir", tempfile.mkdtemp(dir=tmp)]
        if queue:
            args += ["--queue", queue]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "SLUICE_LOG": "warn"})
        self.base = f"http://127.0.0.1:{self.http}"
        wait(f"{self.base}/v2/health/ready")

    def completed(self) -> int:
        text = requests.get(f"http://127.0.0.1:{self.metrics}/metrics").text
        m = re.search(r'sluice_jobs_ended_total\{model="add_sub",status="completed"\} (\d+)', text)
        return int(m.group(1)) if m else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def throughput(server: Server, jobs: int, producers: int) -> float:
    """Jobs per second from the first submit to the last completion."""
    start_done = server.completed()
    per = jobs // producers
    errors: list[str] = []

    def produce(p: int) -> None:
        s = requests.Session()
        for i in range(per):
            r = s.post(f"{server.base}/v2/models/add_sub/jobs", json=body(p * per + i))
            if r.status_code != 202:
                errors.append(r.text)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while server.completed() - start_done < per * producers:
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} submits failed: {errors[0]}")
    return per * producers / elapsed


def added_latency(server: Server, samples: int) -> tuple[float, float]:
    """Median ms: a synchronous request; a job from submit to the client seeing it completed."""
    s = requests.Session()
    sync, job = [], []
    for i in range(samples):
        t0 = time.perf_counter()
        s.post(f"{server.base}/v2/models/add_sub/infer", json=body(i)).raise_for_status()
        sync.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        jid = s.post(f"{server.base}/v2/models/add_sub/jobs", json=body(i)).json()["job_id"]
        while s.get(f"{server.base}/v2/jobs/{jid}").json()["status"] != "completed":
            time.sleep(0.0005)
        job.append((time.perf_counter() - t0) * 1000)
    return statistics.median(sync), statistics.median(job)


def redis_benchmark(port: int) -> dict[str, float]:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-q", "-n", "100000", "-c", "8",
                          "-t", "ping_mbulk,set"], capture_output=True, text=True, check=True).stdout
    rates = {}
    for line in out.replace("\r", "\n").splitlines():
        m = re.match(r"(\S+): ([\d.]+) requests per second", line.strip())
        if m:
            rates[m.group(1)] = float(m.group(2))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--producers", default="1,4,16")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency-samples", type=int, default=50)
    ap.add_argument("--sluice", default=str(ROOT / "target/release/sluice"))
    ap.add_argument("--json", type=Path, help="write every round's figures here")
    args = ap.parse_args()
    producers = [int(p) for p in args.producers.split(",")]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        rport = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(tmp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        results: dict[tuple[str, int], list[float]] = {}
        latency: dict[str, list[tuple[float, float]]] = {}
        rb: list[dict[str, float]] = []
        try:
            for rnd in range(args.rounds):
                for store, queue in [("embedded", None), ("redis", f"redis://127.0.0.1:{rport}/0")]:
                    server = Server(args.sluice, args.workers, queue, tmp)
                    try:
                        throughput(server, 200, 4)  # warm-up
                        for p in producers:
                            results.setdefault((store, p), []).append(throughput(server, args.jobs, p))
                        latency.setdefault(store, []).append(added_latency(server, args.latency_samples))
                    finally:
                        server.stop()
                rb.append(redis_benchmark(rport))
                print(f"round {rnd + 1}/{args.rounds} done", flush=True)
        finally:
            redis.terminate()
            redis.wait()
    print(f"\n| store | producers | jobs/s (median of {args.rounds}) |\n|---|---:|---:|")
    for (store, p), v in sorted(results.items()):
        print(f"| {store} | {p} | {statistics.median(v):.0f} |")
    print("\n| store | sync request p50 ms | job submit→seen completed p50 ms | added ms |\n|---|---:|---:|---:|")
    for store, v in latency.items():
        sync = statistics.median(x for x, _ in v)
        job = statistics.median(y for _, y in v)
        print(f"| {store} | {sync:.2f} | {job:.2f} | {job - sync:.2f} |")
    keys = sorted({k for r in rb for k in r})
    print("\nredis-benchmark (8 clients, requests/s, median): " +
          ", ".join(f"{k} {statistics.median(r[k] for r in rb if k in r):.0f}" for k in keys))
    if args.json:
        args.json.write_text(json.dumps({
            "jobs": args.jobs,
            "workers": args.workers,
            "rounds": args.rounds,
            "jobs_per_second": {f"{store}/{p}": v for (store, p), v in sorted(results.items())},
            "latency_ms_sync_vs_job": latency,
            "redis_benchmark": rb,
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
