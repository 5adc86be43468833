"""Start and stop a real `kitchenware model-server` process on 127.0.0.1 (reusable by any test).

    from support.serving_helpers import ModelServerProcess, copy_version
    with ModelServerProcess(base_path) as server:     # waits until health says SERVING
        client = ServingClient(server.target)

`stats()` reads the server's --stats-file (served versions, load failures,
batch counts); `stop()` sends SIGTERM and returns the exit code; `kill()` is SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kitchenware.model_server.stats import read_stats
from support.paths import REPO, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


def copy_version(source_version_dir: Path, base: Path, version: int) -> Path:
    """Put a copy of an exported version at BASE/<version> atomically (staging + rename), as
    `kitchenware export` does, so a polling server never sees a half-written folder."""
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=base))
    shutil.copytree(source_version_dir, staging, dirs_exist_ok=True)
    target = base / str(version)
    os.rename(staging, target)
    return target


def health_status(target: str, service: str = "", timeout: float = 1.0):
    """The grpc.health.v1 status of `service`, or None when the server does not answer."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            return stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            ).status
        except grpc.RpcError:
            return None


class ModelServerProcess:
    """`python -m kitchenware.cli model-server ...` as a child process."""

    def __init__(
        self,
        base_path: Path,
        *extra_args: str,
        port: int | None = None,
        model_name: str = "kitchenware",
        poll_seconds: float = 0.5,
        workdir: Path | None = None,
    ):
        self.base_path = Path(base_path)
        self.port = port or free_port()
        self.model_name = model_name
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="model-server-"))
        self.stats_file = self.workdir / f"stats-{self.port}.json"
        self.log_file = self.workdir / f"server-{self.port}.log"
        self.args = [
            sys.executable, "-m", "kitchenware.cli", "model-server",
            "--model-base-path", str(self.base_path),
            "--model-name", model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--poll-seconds", str(poll_seconds),
            "--stats-file", str(self.stats_file),
            *extra_args,
        ]  # fmt: skip
        if "--rest-api-port" not in extra_args:  # parallel servers never race for 8501
            self.args += ["--rest-api-port", str(free_port())]
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait_serving: bool = True, timeout: float = 90.0) -> ModelServerProcess:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
        self.stats_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                self.args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait_serving:
            self.wait_for(SERVING, timeout)
        else:
            self.wait_for(None, timeout, answering=True)
        return self

    def wait_for(self, status=SERVING, timeout: float = 90.0, answering: bool = False) -> None:
        """Wait until the health service reports `status` (or just answers, with answering=True)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"model server exited with {self.process.returncode}:\n{self.log()}"
                )
            current = health_status(self.target, self.model_name)
            if (answering and current is not None) or (current == status and status is not None):
                return
            time.sleep(0.2)
        raise TimeoutError(f"model server not {status} after {timeout} s:\n{self.log()}")

    def wait_stats(self, predicate, timeout: float = 30.0) -> dict:
        """Wait until predicate(stats()) is true (the server rewrites the file on changes)."""
        deadline = time.monotonic() + timeout
        stats = {}
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats and predicate(stats):
                return stats
            time.sleep(0.2)
        raise TimeoutError(f"stats never matched; last {stats}\n{self.log()}")

    def stats(self) -> dict:
        return read_stats(self.stats_file)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ModelServerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.kill()
