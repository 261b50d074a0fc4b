"""Fixtures for the conformance suite: start the real `sluice` binary and hand out clients.

The suite checks Sluice against the KServe V2 / Open Inference Protocol and Triton's extensions
with the real `tritonclient` (HTTP and gRPC), `requests` and `perf_analyzer`.

Environment:
  SLUICE_BIN          the server binary (default target/release/sluice, then target/debug/sluice)
  SLUICE_EXTRA_ARGS   extra arguments appended to `sluice serve ...` (shell-quoted)
  ORT_DYLIB_PATH      libonnxruntime.so for the server; defaults to
                      $SLUICE_HOME/lib/libonnxruntime.so when that exists (scripts/setup.sh)
  SLUICE_READY_TIMEOUT  seconds to wait for /v2/health/ready (default 60)
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "examples" / "models"
SLUICE_HOME = Path(os.environ.get("SLUICE_HOME", Path.home() / ".local/share/sluice"))
READY_TIMEOUT = float(os.environ.get("SLUICE_READY_TIMEOUT", "60"))

_started: list["SluiceServer"] = []


def sluice_binary() -> Path:
    env = os.environ.get("SLUICE_BIN")
    if env:
        p = Path(env)
        if not p.is_absolute():
            p = REPO_ROOT / p
        return p
    for p in (REPO_ROOT / "target/release/sluice", REPO_ROOT / "target/debug/sluice"):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return REPO_ROOT / "target/release/sluice"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all sockets held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SluiceServer:
    """One `sluice serve` process on free ports, with its log in a file."""

    def __init__(self, log_dir: Path, extra_args: list[str] | None = None, name: str = "sluice"):
        self.binary = sluice_binary()
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.host = "127.0.0.1"
        # tritonclient wants host:port without a scheme.
        self.http_url = f"{self.host}:{self.http_port}"
        self.grpc_url = f"{self.host}:{self.grpc_port}"
        self.metrics_url = f"{self.host}:{self.metrics_port}"
        self.base = f"http://{self.http_url}"
        self.metrics_base = f"http://{self.metrics_url}"
        self.log_path = log_dir / f"{name}-{self.http_port}.log"
        self.args = [
            str(self.binary),
            "serve",
            "--model-repository",
            str(MODEL_REPOSITORY),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            "--host",
            self.host,
            # Each server keeps its jobs apart: an embedded store has one owner at a time.
            "--state-dir",
            str(log_dir / f"{name}-{self.http_port}-state"),
            # Nothing balances load in front of these servers: they stop at once.
            "--drain-delay-secs",
            "0",
            *(extra_args or []),
            *shlex.split(os.environ.get("SLUICE_EXTRA_ARGS", "")),
        ]
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "SluiceServer":
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            pytest.fail(
                f"sluice binary not found at {self.binary}: build it with "
                "`cargo build --release -p sluice` or set SLUICE_BIN",
                pytrace=False,
            )
        env = dict(os.environ)
        ort = SLUICE_HOME / "lib" / "libonnxruntime.so"
        if "ORT_DYLIB_PATH" not in env and ort.exists():
            env["ORT_DYLIB_PATH"] = str(ort)
        env.setdefault("RUST_BACKTRACE", "1")
        self._log = open(self.log_path, "wb")
        self._log.write(("$ " + shlex.join(self.args) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _started.append(self)
        self._wait_ready()
        return self

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"sluice exited with status {self.proc.returncode} before becoming ready\n"
                    f"command: {shlex.join(self.args)}\nlog ({self.log_path}):\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                r = requests.get(f"{self.base}/v2/health/ready", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                last = type(e).__name__
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"sluice not ready after {READY_TIMEOUT:.0f}s (last: {last})\n"
            f"command: {shlex.join(self.args)}\nlog ({self.log_path}):\n{self.log_tail()}",
            pytrace=False,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="session")
def sluice_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sluice-logs")


@pytest.fixture(scope="session")
def start_sluice(sluice_logs) -> Iterator[Callable[..., SluiceServer]]:
    """Factory: start another server with extra arguments; all are stopped at session end."""
    servers: list[SluiceServer] = []

    def start(*extra_args: str, name: str = "sluice-extra") -> SluiceServer:
        s = SluiceServer(sluice_logs, list(extra_args), name=name)
        servers.append(s)
        return s.start()

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(sluice_logs) -> Iterator[SluiceServer]:
    """The main server on examples/models."""
    s = SluiceServer(sluice_logs, name="sluice").start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def http_url(server) -> str:
    return server.http_url


@pytest.fixture(scope="session")
def grpc_url(server) -> str:
    return server.grpc_url


@pytest.fixture(scope="session")
def base_url(server) -> str:
    """http://127.0.0.1:PORT of the main server's HTTP endpoint."""
    return server.base


@pytest.fixture(scope="session")
def metrics_base(server) -> str:
    return server.metrics_base


@pytest.fixture(scope="session")
def http_client(server):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server.http_url, network_timeout=30.0)
    yield c
    c.close()


@pytest.fixture(scope="session")
def grpc_client(server):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0 and _started:
        terminalreporter.section("sluice server logs")
        for s in _started:
            terminalreporter.write_line(f"{shlex.join(s.args)}")
            terminalreporter.write_line(f"log: {s.log_path}")
            terminalreporter.write_line(s.log_tail(40))
