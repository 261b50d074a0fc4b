#!/usr/bin/env python3
"""Serving overhead of Sluice on add_sub versus the transport limit (bench/echo-server).

Starts the release builds of `sluice serve --model-repository examples/models` and
`echo-server` (a minimal axum server returning a fixed add_sub answer), then drives both with
the same C load generators so that the client is not the bottleneck:

  * HTTP JSON and HTTP binary (Triton's binary tensor extension): `wrk` with keep-alive
    connections, one connection per unit of concurrency, a pre-built request body;
  * gRPC: `perf_analyzer -i grpc` (Triton's own load generator), Sluice only.

Each cell runs for --seconds, in --rounds interleaved rounds (echo and Sluice alternate, so
machine noise hits both); the table reports medians and the Sluice/echo ratio.

With --baseline BIN (the `sluice` binary of another commit), that build is served beside this
one and measured in the same rounds, so that a change's cost is read as a ratio of two builds
under the same machine noise (the "baseline" rows and the sluice/baseline column).

Usage:
    cargo build --release -p sluice -p echo-server
    .venv/bin/python bench/transport.py [--seconds 5] [--rounds 3] [--concurrency 1,8,32]
                                        [--baseline OLD/target/release/sluice] [--json OUT]
Needs `wrk` (apt-get install wrk) and perf_analyzer (scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLUICE_HOME = Path(os.environ.get("SLUICE_HOME", Path.home() / ".local/share/sluice"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def bodies(tmp: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    a = [float(i) for i in range(16)]
    b = [1.0] * 16
    js = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": b}]}).encode()
    head = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}],
        "parameters": {"binary_data_output": True}}).encode()
    binary = head + struct.pack("<16f", *a) + struct.pack("<16f", *b)
    out = {}
    for mode, body, headers in [
        ("http-json", js, {"Content-Type": "application/json"}),
        ("http-binary", binary, {"Content-Type": "application/octet-stream",
                                 "Inference-Header-Content-Length": str(len(head))}),
    ]:
        p = tmp / f"{mode}.bin"
        p.write_bytes(body)
        out[mode] = (p, headers)
    return out


LUA = """
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
wrk.method = "POST"
{headers}
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %f %f %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def run_wrk(url: str, body: Path, headers: dict[str, str], conc: int, seconds: int, tmp: Path) -> dict:
    script = tmp / "req.lua"
    hdr = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script.write_text(LUA.replace("{body}", str(body)).replace("{headers}", hdr))
    threads = min(conc, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"RESULT (\S+) (\S+) (\S+) (\d+)", out)
    if not m:
        raise RuntimeError(out)
    return {"rps": float(m.group(1)), "p50_ms": float(m.group(2)) / 1000, "p99_ms": float(m.group(3)) / 1000,
            "errors": int(m.group(4))}


def run_perf_analyzer(url: str, conc: int, seconds: int, tmp: Path, model: str = "add_sub") -> dict:
    csv_path = tmp / "pa.csv"
    pa = SLUICE_HOME / "bin/perf_analyzer"
    cmd = [str(pa), "-m", model, "-u", url, "-i", "grpc", "--concurrency-range", f"{conc}:{conc}",
           "--measurement-interval", str(seconds * 1000), "--stability-percentage", "100",
           "--max-trials", "3", "-f", str(csv_path)]
    # perf_analyzer exits non-zero when a window is unstable on this noisy machine: try again.
    for attempt in range(3):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            break
        if attempt == 2:
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows = list(csv.DictReader(csv_path.open()))
    row = rows[-1]
    return {"rps": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1000,
            "p99_ms": float(row["p99 latency"]) / 1000, "errors": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--baseline", type=Path, help="another build's sluice binary, measured in the same rounds")
    args = ap.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    sluice_bin = ROOT / "target/release/sluice"
    echo_bin = ROOT / "target/release/echo-server"
    for b in (sluice_bin, echo_bin):
        if not b.exists():
            sys.exit(f"{b} missing: cargo build --release -p sluice -p echo-server")
    if args.baseline and not args.baseline.exists():
        sys.exit(f"{args.baseline} missing")

    def serve(binary: Path) -> tuple[subprocess.Popen, int, int]:
        hp, gp, mp = free_port(), free_port(), free_port()
        proc = subprocess.Popen([str(binary), "serve", "--model-repository", str(ROOT / "examples/models"),
                                 "--host", "127.0.0.1", "--http-port", str(hp), "--grpc-port", str(gp),
                                 "--metrics-port", str(mp), "--state-dir", tempfile.mkdtemp(prefix="sluice-state-")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "SLUICE_LOG": "warn"})
        return proc, hp, gp

    ep = free_port()
    sluice_proc, hp, gp = serve(sluice_bin)
    procs = [sluice_proc, subprocess.Popen([str(echo_bin), str(ep)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)]
    # (name, HTTP port, gRPC port) of every server measured; echo has no gRPC.
    servers = [("echo", ep, None), ("sluice", hp, gp)]
    if args.baseline:
        base_proc, bhp, bgp = serve(args.baseline)
        procs.append(base_proc)
        servers.append(("baseline", bhp, bgp))
    results: dict[tuple[str, str, int], list[dict]] = {}
    try:
        for _, port, _ in servers:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            reqs = bodies(tmp)
            for r in range(args.rounds):
                for conc in concs:
                    for mode, (body, headers) in reqs.items():
                        for target, port, _ in servers:
                            url = f"http://127.0.0.1:{port}/v2/models/add_sub/infer"
                            res = run_wrk(url, body, headers, conc, args.seconds, tmp)
                            results.setdefault((target, mode, conc), []).append(res)
                    for target, _, grpc_port in servers:
                        if grpc_port is not None:
                            res = run_perf_analyzer(f"127.0.0.1:{grpc_port}", conc, args.seconds, tmp)
                            results.setdefault((target, "grpc", conc), []).append(res)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
            p.wait()

    def med(key, field):
        return statistics.median(x[field] for x in results[key])

    print("| mode | concurrency | echo req/s | sluice req/s | sluice/echo | echo p50 ms | sluice p50 ms | echo p99 ms | sluice p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in ("http-json", "http-binary", "grpc"):
        for conc in concs:
            s = ("sluice", mode, conc)
            e = ("echo", mode, conc)
            has_echo = e in results
            cells = [mode, str(conc),
                     f"{med(e, 'rps'):.0f}" if has_echo else "-",
                     f"{med(s, 'rps'):.0f}",
                     f"{med(s, 'rps') / med(e, 'rps'):.2f}" if has_echo else "-",
                     f"{med(e, 'p50_ms'):.3f}" if has_echo else "-",
                     f"{med(s, 'p50_ms'):.3f}",
                     f"{med(e, 'p99_ms'):.3f}" if has_echo else "-",
                     f"{med(s, 'p99_ms'):.3f}"]
            print("| " + " | ".join(cells) + " |")
    if args.baseline:
        print(f"\nthis build against the baseline ({args.baseline}), same rounds:\n")
        print("| mode | concurrency | baseline req/s | sluice req/s | sluice/baseline | baseline p50 ms | sluice p50 ms | baseline p99 ms | sluice p99 ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in ("http-json", "http-binary", "grpc"):
            for conc in concs:
                s, b = ("sluice", mode, conc), ("baseline", mode, conc)
                print("| " + " | ".join([mode, str(conc), f"{med(b, 'rps'):.0f}", f"{med(s, 'rps'):.0f}",
                                         f"{med(s, 'rps') / med(b, 'rps'):.3f}", f"{med(b, 'p50_ms'):.3f}",
                                         f"{med(s, 'p50_ms'):.3f}", f"{med(b, 'p99_ms'):.3f}",
                                         f"{med(s, 'p99_ms'):.3f}"]) + " |")
    errors = sum(x["errors"] for v in results.values() for x in v)
    print(f"\nerrors: {errors}; medians of {args.rounds} rounds of {args.seconds} s per cell")
    if args.json:
        args.json.write_text(json.dumps({f"{k[0]}/{k[1]}/{k[2]}": v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
