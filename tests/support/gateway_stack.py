"""Real processes for the gateway tests: model server, gunicorn gateway, a local web server.

Everything listens on 127.0.0.1 only. The gateway runs under the TensorFlow-free
`.venv-gateway` when it exists (as in production), else under this interpreter.
Gateways started here may open connections to loopback addresses only (tests/support/netguard),
so a refused-URL test cannot reach the network even if the gateway's guard broke.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from support.paths import NETGUARD, REPO

GATEWAY_VENV_PYTHON = REPO / ".venv-gateway" / "bin" / "python"


def gateway_python() -> str:
    """.venv-gateway's python when it can run gunicorn, else the test interpreter."""
    if GATEWAY_VENV_PYTHON.is_file():
        probe = subprocess.run(
            [str(GATEWAY_VENV_PYTHON), "-c", "import gunicorn, flask, grpc, prometheus_client"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return str(GATEWAY_VENV_PYTHON)
    return sys.executable


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (requests.RequestException, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last error: {last})")


class Process:
    """A child process with its output in a log file (shown when something fails)."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited early:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ModelServer(Process):
    def __init__(self, base: Path, port: int, log_dir: Path, extra: list[str] = ()) -> None:
        argv = [
            sys.executable, "-m", "kitchenware.cli", "model-server",
            "--model-base-path", str(base), "--model-name", "kitchenware",
            "--port", str(port), *extra,
        ]  # fmt: skip
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
        super().__init__(f"model-server-{port}", argv, env, log_dir)
        self.port = port
        self.target = f"127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        from kitchenware.serving.grpc_client import ServingClient

        with ServingClient(self.target, timeout=2.0) as client:

            def ready():
                self.check_alive()
                return client.check_ready(timeout=2.0)[0]

            wait_for(ready, timeout, f"model server on {self.target}", interval=0.5)


class Gateway(Process):
    def __init__(
        self, port: int, log_dir: Path, env: dict[str, str], workers: int = 1, threads: int = 4
    ) -> None:
        python = gateway_python()
        argv = [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway:app"]
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS", "GUNICORN"))
        }
        full_env.update(
            # tests/support/netguard's sitecustomize: the workers may connect to loopback only.
            PYTHONPATH=os.pathsep.join([str(REPO), str(NETGUARD)]),
            GUNICORN_BIND=f"127.0.0.1:{port}",
            GUNICORN_WORKERS=str(workers),
            GUNICORN_THREADS=str(threads),
            **env,
        )
        super().__init__(f"gateway-{port}", argv, full_env, log_dir)
        self.python = python
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        super().start()

        def up():
            self.check_alive()
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200

        wait_for(up, 60, f"gateway on {self.url}")

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in children.split()]


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


class PhotoServer:
    """A local web server for URL inputs: serves files from a folder, plus test routes.

    /redirect?to=URL answers 302 to URL; /slow dribbles bytes forever; /hang accepts the
    request and never answers (until the server stops); /big sends `big_bytes` bytes
    without a Content-Length. `hits` counts requests received.
    """

    def __init__(self, root: Path, big_bytes: int = 0) -> None:
        self.root = root
        self.hits = 0
        self.big_bytes = big_bytes
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.hits += 1
                path, _, query = self.path.partition("?")
                if path == "/redirect":
                    target = query.removeprefix("to=")
                    self.send_response(302)
                    self.send_header("Location", requests.utils.unquote(target))
                    self.end_headers()
                elif path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    try:
                        for _ in range(600):
                            self.wfile.write(b"\xff")
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        pass
                elif path == "/hang":
                    server.stopping.wait(120)
                elif path == "/big":
                    self.send_response(200)
                    self.end_headers()
                    chunk = b"\0" * 65536
                    try:
                        for _ in range(server.big_bytes // len(chunk) + 1):
                            self.wfile.write(chunk)
                    except OSError:
                        pass
                else:
                    file = (server.root / path.lstrip("/")).resolve()
                    if not file.is_file() or server.root.resolve() not in file.parents:
                        self.send_error(404)
                        return
                    data = file.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PhotoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
