#!/usr/bin/env python3
"""What an endpoint costs on the cheapest model there is (issue 16): add_sub directly against a
split endpoint over add_sub alone (`kind: split`, one target of weight 1), same server, same
requests, interleaved rounds.

Starts the release build of `sluice serve` on a temporary repository holding a link to
examples/models/add_sub and `add_sub_split/endpoint.yaml`, checks that the endpoint answers under
its own name with `sluice_model` = add_sub, then drives both names with the load generators of
bench/transport.py at one concurrency:

  * HTTP JSON and HTTP binary (Triton's binary tensor extension): `wrk`, keep-alive connections,
    one per unit of concurrency, a pre-built body;
  * gRPC: `spam-bench serve-load --grpc` (tonic, one connection per client, a one-thread tokio
    runtime), for both names, so that both go through the same client. The script probes
    perf_analyzer on the endpoint once and records what it said (before commit 866892a an
    endpoint's statistics lacked its own entry and perf_analyzer stopped with "failed to find the
    requested model version"); `--grpc-client perf_analyzer` uses perf_analyzer instead.

Beside throughput, the server's own CPU time per request: the sluice process's user + system
time (/proc/PID/stat) over the cell divided by the inferences add_sub counted
(/v2/models/add_sub/stats), warmup included on both sides. On a machine shared with other work
this moves far less than throughput does, since another process taking the cores slows the
server without making each of its requests cost more CPU (much).

Each round runs every mode against both names; which name goes first alternates by round and by
mode, so machine noise hits both. The table reports, per mode, medians over rounds, the ratio
split / direct as the median of per-round ratios (with its spread), and the ratio of medians.
Target: less than 5 % throughput lost through the endpoint.

Usage:
    cargo build --release -p sluice -p spam-bench
    .venv/bin/python bench/endpoint_overhead.py [--seconds 3] [--rounds 11] [--concurrency 8]
                                                [--modes http-json,http-binary,grpc] [--json OUT]
Needs `wrk` and perf_analyzer (scripts/setup.sh installs both).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transport  # noqa: E402  (bench/transport.py: free_port, wait_ready, bodies, run_wrk, run_perf_analyzer)

ROOT = transport.ROOT
DIRECT = "add_sub"
SPLIT = "add_sub_split"
SPLIT_YAML = f"# Written by bench/endpoint_overhead.py.\nkind: split\ntargets:\n  - {{ model: {DIRECT}, weight: 1 }}\n"


def check_split(port: int) -> dict:
    """One JSON request to the endpoint: it must answer as itself, served by add_sub."""
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [float(i) for i in range(16)]},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{SPLIT}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        v = json.load(r)
    params = v.get("parameters", {})
    if v.get("model_name") != SPLIT or params.get("sluice_model") != DIRECT:
        raise RuntimeError(f"{SPLIT} did not answer through the endpoint: {v}")
    out0 = next(o for o in v["outputs"] if o["name"] == "OUTPUT0")["data"]
    if out0 != [float(i) + 1.0 for i in range(16)]:
        raise RuntimeError(f"{SPLIT}: wrong OUTPUT0 {out0}")
    return {"model_name": v["model_name"], "parameters": params}


def run_tonic(spam_bench: Path, hp: int, gp: int, name: str, conc: int, seconds: int) -> dict:
    """gRPC load from spam-bench's closed-loop tonic client (1 s unmeasured warmup)."""
    out = subprocess.run([str(spam_bench), "serve-load", "--url", f"127.0.0.1:{hp}", "--grpc-url", f"127.0.0.1:{gp}",
                          "--model", name, "--concurrency", str(conc), "--seconds", str(seconds), "--warmup", "1",
                          "--grpc", "--workload", "add-sub"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"concurrency \d+: (\S+) req/s, p50 (\S+) ms, p99 (\S+) ms, errors (\d+)", out)
    if not m:
        raise RuntimeError(out)
    return {"rps": float(m.group(1)), "p50_ms": float(m.group(2)), "p99_ms": float(m.group(3)),
            "errors": int(m.group(4))}


def probe_perf_analyzer(gp: int, tmp: Path) -> str:
    """Whether perf_analyzer can drive the endpoint over gRPC at all (a 1 s try)."""
    try:
        transport.run_perf_analyzer(f"127.0.0.1:{gp}", 1, 1, tmp, model=SPLIT)
        return "works"
    except Exception as e:  # noqa: BLE001 (any failure is the answer)
        last = [line.strip() for line in str(e).splitlines() if line.strip()]
        return f"fails: {last[-1] if last else e}"


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def inferences(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{DIRECT}/stats", timeout=10) as r:
        return sum(int(m["inference_count"]) for m in json.load(r)["model_stats"])


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--modes", default="http-json,http-binary,grpc")
    ap.add_argument("--sluice-bin", type=Path, default=ROOT / "target/release/sluice")
    ap.add_argument("--spam-bench", type=Path, default=ROOT / "target/release/spam-bench")
    ap.add_argument("--grpc-client", choices=["spam-bench", "perf_analyzer"], default="spam-bench")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/endpoint-overhead.json")
    ap.add_argument("--target-loss", type=float, default=0.05, help="throughput lost through the endpoint, at most")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("http-json", "http-binary", "grpc"):
            sys.exit(f"unknown mode {m}")
    if not args.sluice_bin.exists():
        sys.exit(f"{args.sluice_bin} missing: cargo build --release -p sluice")
    if "grpc" in modes and args.grpc_client == "spam-bench" and not args.spam_bench.exists():
        sys.exit(f"{args.spam_bench} missing: cargo build --release -p spam-bench")
    started = time.time()

    with tempfile.TemporaryDirectory(prefix="endpoint-overhead-") as t:
        tmp = Path(t)
        repo = tmp / "models"
        repo.mkdir()
        (repo / DIRECT).symlink_to(ROOT / "examples/models" / DIRECT)
        (repo / SPLIT).mkdir()
        (repo / SPLIT / "endpoint.yaml").write_text(SPLIT_YAML)
        hp, gp, mp = transport.free_port(), transport.free_port(), transport.free_port()
        log = open(tmp / "sluice.log", "wb")
        proc = subprocess.Popen([str(args.sluice_bin), "serve", "--model-repository", str(repo),
                                 "--host", "127.0.0.1", "--http-port", str(hp), "--grpc-port", str(gp),
                                 "--metrics-port", str(mp), "--state-dir", str(tmp / "state")],
                                stdout=log, stderr=log, env={**os.environ, "SLUICE_LOG": "warn"})
        results: dict[tuple[str, str], list[dict]] = {}
        orders = []
        try:
            transport.wait_ready(f"http://127.0.0.1:{hp}/v2/health/ready")
            check = check_split(hp)
            pa_probe = probe_perf_analyzer(gp, tmp) if "grpc" in modes else "not tried"
            print(f"perf_analyzer -i grpc on {SPLIT}: {pa_probe}", file=sys.stderr)
            reqs = transport.bodies(tmp)
            for r in range(args.rounds):
                for k, mode in enumerate(modes):
                    names = [DIRECT, SPLIT] if (r + k) % 2 == 0 else [SPLIT, DIRECT]
                    orders.append({"round": r, "mode": mode, "order": names})
                    for name in names:
                        load = loadavg()
                        cpu0, n0 = cpu_seconds(proc.pid), inferences(hp)
                        if mode == "grpc" and args.grpc_client == "spam-bench":
                            res = run_tonic(args.spam_bench, hp, gp, name, args.concurrency, args.seconds)
                        elif mode == "grpc":
                            res = transport.run_perf_analyzer(f"127.0.0.1:{gp}", args.concurrency, args.seconds,
                                                              tmp, model=name)
                        else:
                            body, headers = reqs[mode]
                            res = transport.run_wrk(f"http://127.0.0.1:{hp}/v2/models/{name}/infer", body, headers,
                                                    args.concurrency, args.seconds, tmp)
                        res["loadavg_before"] = load
                        cpu, n = cpu_seconds(proc.pid) - cpu0, inferences(hp) - n0
                        res["server_cpu_s"], res["inferences"] = cpu, n
                        res["cpu_us_per_request"] = cpu * 1e6 / n if n else float("nan")
                        results.setdefault((mode, name), []).append(res)
                        print(f"round {r + 1} {mode} {name}: {res['rps']:.0f} req/s, p50 {res['p50_ms']:.3f} ms, "
                              f"p99 {res['p99_ms']:.3f} ms, errors {res['errors']}, server CPU {res['cpu_us_per_request']:.1f} us/request "
                              f"(load {load})", file=sys.stderr)
        except BaseException:
            log.flush()
            sys.stderr.write((tmp / "sluice.log").read_text(errors="replace")[-3000:])
            raise
        finally:
            proc.terminate()
            proc.wait()

    machine = f"{os.cpu_count()} CPU(s), " + next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown CPU")
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    summary = {}
    lines = [f"Machine: {machine}. add_sub, concurrency {args.concurrency}, {args.rounds} interleaved rounds of "
             f"{args.seconds} s per cell. split / direct: median of per-round ratios (min–max); target: less than "
             f"{args.target_loss * 100:.0f} % lost.", "",
             "| mode | direct req/s | split req/s | split / direct, per round: median (min–max) | ratio of medians "
             "| rounds within | direct p50 / p99 ms | split p50 / p99 ms | server CPU µs/request direct / split "
             "(split / direct per round: median, min–max) | errors | verdict |",
             "|---|---:|---:|---|---:|---:|---|---|---|---:|---|"]
    for mode in modes:
        d, s = results[(mode, DIRECT)], results[(mode, SPLIT)]
        ratios = [b["rps"] / a["rps"] for a, b in zip(d, s)]
        within = sum(1 for x in ratios if x >= 1 - args.target_loss)
        m = statistics.median(ratios)
        misses = len(ratios) - within
        verdict = ("met" if m >= 1 - args.target_loss and within * 2 > len(ratios)
                   else "not met" if misses * 2 > len(ratios) else "at the edge")
        errors = sum(x["errors"] for x in d + s)
        cpu_ratios = [b["cpu_us_per_request"] / a["cpu_us_per_request"] for a, b in zip(d, s)]
        summary[mode] = {
            "direct": {"rps": med(d, "rps"), "p50_ms": med(d, "p50_ms"), "p99_ms": med(d, "p99_ms")},
            "split": {"rps": med(s, "rps"), "p50_ms": med(s, "p50_ms"), "p99_ms": med(s, "p99_ms")},
            "per_round_ratio": ratios, "ratio": spread(ratios),
            "ratio_of_medians": med(s, "rps") / med(d, "rps"),
            "rounds_within": within, "errors": errors, "verdict": verdict,
            "cpu_us_per_request": {"direct": med(d, "cpu_us_per_request"), "split": med(s, "cpu_us_per_request"),
                                   "per_round_ratio": cpu_ratios, "ratio": spread(cpu_ratios)},
        }
        lines.append(f"| {mode} | {med(d, 'rps'):.0f} | {med(s, 'rps'):.0f} | {m:.3f} ({min(ratios):.3f}–"
                     f"{max(ratios):.3f}) | {med(s, 'rps') / med(d, 'rps'):.3f} | {within} of {len(ratios)} | "
                     f"{med(d, 'p50_ms'):.3f} / {med(d, 'p99_ms'):.3f} | {med(s, 'p50_ms'):.3f} / "
                     f"{med(s, 'p99_ms'):.3f} | {med(d, 'cpu_us_per_request'):.1f} / {med(s, 'cpu_us_per_request'):.1f} "
                     f"({statistics.median(cpu_ratios):.3f}, {min(cpu_ratios):.3f}–{max(cpu_ratios):.3f}) | {errors} "
                     f"| {verdict} |")
    table = "\n".join(lines)
    print(table)
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "concurrency": args.concurrency, "rounds": args.rounds, "seconds": args.seconds,
        "endpoint_yaml": SPLIT_YAML, "check": check, "target_loss": args.target_loss,
        "load_generators": {"http-json": "wrk", "http-binary": "wrk",
                            "grpc": "spam-bench serve-load --grpc" if args.grpc_client == "spam-bench"
                            else "perf_analyzer -i grpc"},
        "perf_analyzer_on_endpoint": pa_probe,
        "summary": summary,
        "order": orders,
        "per_round": {f"{mode}/{name}": v for (mode, name), v in results.items()},
        "table": table,
        "wall_s": round(time.time() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
