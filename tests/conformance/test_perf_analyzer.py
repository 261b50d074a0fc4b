"""Triton's perf_analyzer (C++, from the tritonclient wheel) drives Sluice over HTTP and gRPC.

perf_analyzer uses model metadata, model config and statistics besides inference, so this is a
compatibility check of all of them. Installed by scripts/setup.sh as $SLUICE_HOME/bin/perf_analyzer
(override with PERF_ANALYZER).
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

SLUICE_HOME = Path(os.environ.get("SLUICE_HOME", Path.home() / ".local/share/sluice"))
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", SLUICE_HOME / "bin" / "perf_analyzer"))
LINE = re.compile(r"Concurrency:\s*(\d+),\s*throughput:\s*([0-9.]+)\s*infer/sec")


# add_sub_twice is a Triton ensemble (an endpoint): perf_analyzer finds its statistics under its
# own name, followed by the composing model's.
@pytest.mark.parametrize("model", ["add_sub", "add_sub_twice"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer(server, protocol, model, tmp_path):
    if not (PERF_ANALYZER.is_file() and os.access(PERF_ANALYZER, os.X_OK)):
        pytest.fail(f"perf_analyzer not installed at {PERF_ANALYZER} (run scripts/setup.sh)", pytrace=False)
    url = server.http_url if protocol == "http" else server.grpc_url
    report = tmp_path / f"pa-{model}-{protocol}.csv"
    cmd = [
        str(PERF_ANALYZER),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "--concurrency-range", "1:2",
        "--measurement-interval", "1000",
        # Short windows of at least 100 requests; loose stability so a shared 2-core machine
        # settles within a few windows. This checks compatibility, not speed.
        "--measurement-mode", "count_windows",
        "--measurement-request-count", "100",
        "--stability-percentage", "100",
        "--max-trials", "20",
        "-f", str(report),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"$ {shlex.join(cmd)}\nexit {proc.returncode}\n{out[-4000:]}"

    found = {int(c): float(t) for c, t in LINE.findall(out)}
    assert set(found) == {1, 2}, f"no throughput lines for concurrency 1 and 2 in:\n{out[-4000:]}"
    assert all(t > 0 for t in found.values()), found

    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["Concurrency"]) for r in rows) == [1, 2], rows
    for r in rows:
        assert float(r["Inferences/Second"]) > 0
        assert float(r["p99 latency"]) >= float(r["p50 latency"]) > 0
