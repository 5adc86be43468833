"""What the Docker tests ask of containers in the sandbox's namespace.

The published ports and the containers' addresses exist only inside the
loopback-only namespace, so every client here (curl, test.py, a gRPC probe)
runs through `Sandbox.in_netns`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.docker_sandbox import Sandbox
from support.paths import REPO

# Images and containers live on their own data root, never the host's /var/lib/docker.
DATA_ROOT = Path(os.environ.get("KITCHENWARE_DOCKER_ROOT", "/var/lib/kitchenware-docker"))
BUILD = REPO / "build" / "compose-test"
# Relative to the checkout: the Dockerfiles COPY it from the build context.
MODEL_DIR = "build/compose-test/models/kitchenware"
MODEL_VERSION = 1
# The production input size: memory and image size as users will get them.
MODEL_SIZE = 299
IMAGE_TAG = "compose-test"


@dataclass
class Answer:
    status: int
    body: str

    def json(self) -> dict:
        return json.loads(self.body)


def curl(box: Sandbox, url: str, *options: str, timeout: float = 30) -> Answer:
    """One HTTP request from inside the namespace: status code and body."""
    done = box.in_netns(
        ["curl", "--silent", "--show-error", "--max-time", str(timeout),
         "--write-out", "\n%{http_code}", *options, url],
        capture_output=True, text=True,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    return Answer(int(status or 0), body if done.returncode == 0 else done.stderr)


def inspect(box: Sandbox, container: str) -> dict:
    return json.loads(box.output("inspect", container))[0]


def health(box: Sandbox, container: str) -> str:
    state = inspect(box, container)["State"]
    return state.get("Health", {}).get("Status", state["Status"])


def wait_healthy(
    box: Sandbox, containers: list[str], timeout: float, started: float | None = None
) -> dict[str, float]:
    """Seconds until each container's Docker healthcheck said healthy (from `started`)."""
    started = time.monotonic() if started is None else started
    seen: dict[str, float] = {}
    while len(seen) < len(containers):
        for name in containers:
            if name not in seen and health(box, name) == "healthy":
                seen[name] = round(time.monotonic() - started, 1)
        if time.monotonic() - started > timeout:
            states = {name: health(box, name) for name in containers}
            raise AssertionError(f"not healthy within {timeout:g} s: {states}")
        time.sleep(0.5)
    return seen


def container_memory(box: Sandbox, container: str) -> tuple[int, int]:
    """(peak bytes used, limit bytes) from the container's memory cgroup (v1 or v2)."""
    full_id = inspect(box, container)["Id"]
    for folder, peak, limit in (
        (Path("/sys/fs/cgroup/memory/docker") / full_id, "memory.max_usage_in_bytes",
         "memory.limit_in_bytes"),
        (Path("/sys/fs/cgroup/system.slice") / f"docker-{full_id}.scope", "memory.peak",
         "memory.max"),
    ):  # fmt: skip
        if (folder / peak).is_file():
            return int((folder / peak).read_text()), int((folder / limit).read_text())
    raise AssertionError(f"no memory cgroup found for {container} ({full_id[:12]})")


def save_logs(box: Sandbox, containers: list[str], folder: Path) -> None:
    """Each container's output, for the reader of a failed run."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in containers:
        done = box.docker("logs", name, check=False, capture_output=True, text=True)
        (folder / f"{name}.log").write_text(done.stdout + done.stderr)


def container_ip(box: Sandbox, container: str, network: str) -> str:
    return inspect(box, container)["NetworkSettings"]["Networks"][network]["IPAddress"]


def probe_once(box: Sandbox, container: str, ip: str, ports: dict[str, int], probe: dict) -> str:
    """'' when one run of a Kubernetes probe passes, else why it failed (kubelet's rules)."""
    timeout = probe.get("timeoutSeconds", 1)
    try:
        if "exec" in probe:
            done = box.docker("exec", container, *probe["exec"]["command"], check=False,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
            return "" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()}"
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = ports.get(get["port"], get["port"])
            answer = curl(box, f"http://{ip}:{port}{get.get('path', '/')}", timeout=timeout)
            return "" if 200 <= answer.status < 400 else f"HTTP {answer.status}"
        if "tcpSocket" in probe:
            port = ports.get(probe["tcpSocket"]["port"], probe["tcpSocket"]["port"])
            code = f"import socket; socket.create_connection(({ip!r}, {port}), {timeout}).close()"
        elif "grpc" in probe:
            port = probe["grpc"]["port"]
            code = (
                "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
                f"c = grpc.insecure_channel('{ip}:{port}'); "
                f"r = g.HealthStub(c).Check(h.HealthCheckRequest(service={probe['grpc'].get('service', '')!r}), timeout={timeout}); "
                "assert r.status == h.HealthCheckResponse.SERVING, r"
            )
        else:
            raise AssertionError(f"probe kind not implemented: {sorted(probe)}")
        done = box.in_netns([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=timeout + 5)  # fmt: skip
        return "" if done.returncode == 0 else done.stderr.strip().splitlines()[-1]
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"


def await_probe(box, container, ip, ports, probe, kind: str, deadline_s: float) -> float:
    """Run a probe every periodSeconds as kubelet does; seconds until it passed.

    Startup and liveness probes fail the test after failureThreshold failures in a
    row (kubelet would restart the container); readiness keeps trying until deadline_s.
    """
    started = time.monotonic()
    time.sleep(probe.get("initialDelaySeconds", 0))
    failures, threshold = 0, probe.get("failureThreshold", 3)
    while True:
        problem = probe_once(box, container, ip, ports, probe)
        if not problem:
            return round(time.monotonic() - started, 1)
        failures += 1
        if kind != "readinessProbe" and failures >= threshold:
            raise AssertionError(f"{container} {kind}: {failures} failures in a row: {problem}")
        if time.monotonic() - started > deadline_s:
            raise AssertionError(
                f"{container} {kind}: not passing after {deadline_s:g} s: {problem}"
            )
        time.sleep(probe.get("periodSeconds", 10))
