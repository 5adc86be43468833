"""Real serving processes on 127.0.0.1 for tests, benchmarks, `make serve` and `make demo`.

One place that starts the model server, the gunicorn gateway and a local web
server for URL inputs, picks free ports, waits the way production does and
reads process memory. TensorFlow-free at import: the model server is a child
process, and `export_untrained_model` imports TensorFlow only when called.
The gateway needs the checkout (gateway.py, gunicorn.conf.py at its root).

    python -m devtools.stack export-untrained BASE [--size 96] [--version 1]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from kitchenware.core.contract import MODEL_NAME
from kitchenware.core.errors import KitchenwareError

# The checkout: gunicorn runs gateway.py and gunicorn.conf.py from its root.
REPO = Path(__file__).resolve().parents[1]
GATEWAY_VENV_PYTHON = REPO / ".venv-gateway" / "bin" / "python"
# The OpenVINO model server's TensorFlow-free environment (make model-venv), as in its image.
MODEL_VENV_PYTHON = REPO / ".venv-model" / "bin" / "python"
LOG_TAIL_CHARS = 6000
# A cold model server (TensorFlow import + SavedModel load) takes ~10 s on 2 busy cores.
STACK_READY_TIMEOUT_S = 300.0
STACK_STOP_GRACE_S = 20.0


class StackError(KitchenwareError):
    """A child process exited early, or something did not happen in time."""


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port, never the same one twice in this process.

    The kernel may hand back a port it just gave us if the first caller has not
    bound it yet; remembering what we handed out rules that race out.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """predicate()'s first truthy result; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except OSError as exc:  # also urllib's and requests' errors
            last = exc
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:g} s waiting for {what} (last error: {last})")


def status_kb(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (Linux) in KiB: VmRSS now, VmHWM the peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise StackError(f"no {field} for pid {pid}")


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    return status_kb(pid, "VmHWM")


def children(pid: int) -> list[int]:
    """The direct children of `pid` (gunicorn's workers, for its master)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _pythonpath(extra: Sequence[str | os.PathLike]) -> str:
    return os.pathsep.join([str(REPO), *map(str, extra)])


class Process:
    """A child process with its output in a log file (its tail goes into every error)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path | None,
                 own_session: bool = False) -> None:  # fmt: skip
        self.name = name
        self.argv = argv
        self.env = env
        # None: the output goes to this process's stdout (a terminal, for `make serve`).
        self.log_path = None if log_dir is None else Path(log_dir) / f"{name}.log"
        # A session of its own: a terminal's Ctrl-C reaches only the parent, which stops it.
        self.own_session = own_session
        self.cwd = REPO
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        if self.log_path is None:
            self._popen(None)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                self._popen(log)
        return self

    def _popen(self, log) -> None:
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdout=log,
            stderr=None if log is None else subprocess.STDOUT, start_new_session=self.own_session,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except (OSError, AttributeError):  # not written yet, or no log file at all
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise StackError(f"the {self.name} exited (code {code}); its log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send `sig` and wait; SIGKILL after `timeout`. The exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def __enter__(self):
        return self.start() if not self.alive() else self

    def __exit__(self, *exc) -> None:
        self.stop()


class ModelServer(Process):
    """`kitchenware model-server` on 127.0.0.1, with a stats file and its own REST port.

    Ready means what the production probe (serving/model-healthcheck.sh) checks: the
    REST model status lists a version as AVAILABLE. With `ready="grpc"` (REST port
    off or taken), GetModelMetadata answering instead, as the gateway's /readyz asks.
    """

    def __init__(self, base: Path, log_dir: Path | None, *, port: int | None = None,
                 rest_port: int | None = None, model_name: str = MODEL_NAME,
                 poll_seconds: float = 0.5, batching: bool = True,
                 extra: Sequence[str] = (), ready: str = "rest",
                 own_session: bool = False, backend: str | None = None) -> None:  # fmt: skip
        """`backend`: --backend for the server (None: its default); "openvino" runs it in
        .venv-model, without TensorFlow, when that environment exists."""
        self.base = Path(base)
        self.backend = backend
        self.port = port or free_port()
        self.rest_port = free_port() if rest_port is None else rest_port
        self.model_name = model_name
        if ready not in ("rest", "grpc"):
            raise StackError(f"ready must be 'rest' or 'grpc', got {ready!r}")
        self.ready = "grpc" if self.rest_port == 0 else ready
        self.target = f"127.0.0.1:{self.port}"
        self.stats_file = (
            None if log_dir is None else Path(log_dir) / f"model-server-{self.port}-stats.json"
        )
        argv = [
            model_server_python(backend), "-m", "kitchenware.cli", "model-server",
            "--model-base-path", str(self.base), "--model-name", model_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--rest-api-port", str(self.rest_port), "--poll-seconds", str(poll_seconds),
            *([] if self.stats_file is None else ["--stats-file", str(self.stats_file)]),
            *([] if batching else ["--no-batching"]),
            *([] if backend is None else ["--backend", backend]), *extra,
        ]  # fmt: skip
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=_pythonpath([]))
        super().__init__(f"model-server-{self.port}", argv, env, log_dir, own_session)

    def start(self, wait: bool = False, timeout: float = 180.0) -> ModelServer:
        """Start (again: same ports, same folder); with `wait`, until ready."""
        if self.stats_file is not None:
            self.stats_file.unlink(missing_ok=True)
        super().start()
        if wait:
            self.wait_ready(timeout)
        return self

    def __enter__(self) -> ModelServer:
        return self.start(wait=True) if not self.alive() else self

    def model_status(self, timeout: float = 2.0) -> tuple[int, dict]:
        """(HTTP status, JSON body) of GET /v1/models/NAME on the REST port."""
        url = f"http://127.0.0.1:{self.rest_port}/v1/models/{self.model_name}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}

    def model_status_backends(self, timeout: float = 2.0) -> dict[int, str]:
        """{version: backend} from the REST status's X-Kitchenware-Backend header."""
        url = f"http://127.0.0.1:{self.rest_port}/v1/models/{self.model_name}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            header = response.headers.get("X-Kitchenware-Backend", "")
        pairs = (item.split("=", 1) for item in header.split(",") if "=" in item)
        return {int(version): name for version, name in pairs}

    def is_ready(self) -> bool:
        self.check_alive()
        if self.ready == "grpc":
            # Imported here: in the main environment the protos bring TensorFlow along.
            from kitchenware.serving.grpc_client import ServingClient

            with ServingClient(self.target, timeout=2.0) as client:
                return client.check_ready(timeout=2.0)[0]
        status, body = self.model_status()
        states = [v.get("state") for v in body.get("model_version_status", [])]
        return status == 200 and "AVAILABLE" in states

    def ports_closed(self) -> bool:
        """Neither the gRPC nor the REST port accepts a connection (as before a version loads)."""
        ports = [self.port] + ([self.rest_port] if self.rest_port else [])
        for port in ports:
            with socket.socket() as probe:
                probe.settimeout(2.0)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return False
        return True

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_for(self.is_ready, timeout, f"the model server on {self.target}", interval=0.3)

    def wait_polling(self, timeout: float = 90.0) -> None:
        """Until the server has started and looks for its first version (ports still closed)."""

        def polling() -> bool:
            self.check_alive()
            return "waiting for a version" in self.log()

        wait_for(polling, timeout, f"the model server on {self.target} to poll for a version")

    def stats(self) -> dict:
        """The --stats-file: serving versions, load failures, batch counts ({} before its first)."""
        from kitchenware.model_server.stats import read_stats  # numpy: only when asked

        return {} if self.stats_file is None else read_stats(self.stats_file)

    def wait_stats(self, predicate: Callable[[dict], bool], timeout: float = 30.0) -> dict:
        """The stats once predicate(stats) holds (the server rewrites the file on changes)."""
        return wait_for(lambda: (s := self.stats()) and predicate(s) and s, timeout,
                        f"the model server's stats to match; its log:\n{self.log()}")  # fmt: skip


def model_server_python(backend: str | None) -> str:
    """.venv-model's python for the OpenVINO backend (TF-free, as deployed), else this one."""
    if backend == "openvino" and MODEL_VENV_PYTHON.is_file():
        return str(MODEL_VENV_PYTHON)
    return sys.executable


@functools.cache
def gateway_python() -> str:
    """.venv-gateway's python (TF-free, as deployed) when it can run gunicorn, else this one."""
    if GATEWAY_VENV_PYTHON.is_file():
        probe = subprocess.run(
            [str(GATEWAY_VENV_PYTHON), "-c", "import gunicorn, flask, grpc, prometheus_client"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return str(GATEWAY_VENV_PYTHON)
    return sys.executable


def gateway_python_note(python: str) -> str:
    """One line for the user: does the gateway run TF-free, as its image does?"""
    if python == str(GATEWAY_VENV_PYTHON):
        return "gateway: gunicorn in .venv-gateway (TensorFlow-free, as in its image)"
    return (
        "gateway: WARNING .venv-gateway is missing or broken, so gunicorn runs in this venv, "
        "where each worker imports TensorFlow through the protos (~600 MB instead of ~80 MB); "
        "`make gateway-venv` builds it"
    )


PROXY_DIR = REPO / "proxy"
PROXY_TEMPLATE = PROXY_DIR / "nginx.conf.template"
# Files the rendered config includes, copied beside it (as proxy/render.sh does).
PROXY_INCLUDES = ("json-errors.conf", "page.conf")
# The folder holding static/, the web page nginx serves itself.
PAGE_ROOT = REPO / "kitchenware" / "gateway"
_TEMPLATE_NAME = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
# What the proxy keeps free for probes out of gunicorn's workers x threads: one
# public-port probe and two of kubelet's (proxy/nginx.conf.template's upstreams).
PROBE_RESERVE_THREADS = 3


def proxy_settings(env: dict[str, str], *, workers: int, threads: int) -> dict[str, str]:
    """The proxy's template values for a gateway of `workers` x `threads`, `env` winning.

    MAX_REQUEST_BYTES defaults to the gateway's own default (one number for both); the
    upstream bound leaves PROBE_RESERVE_THREADS threads free (at least one request passes).
    """
    from kitchenware.gateway.config import Settings

    values = {
        "MAX_REQUEST_BYTES": str(Settings().max_request_bytes),
        "PROXY_UPSTREAM_CONNS": str(max(1, workers * threads - PROBE_RESERVE_THREADS)),
        "PROXY_HEADER_TIMEOUT": "10",
        "PROXY_BODY_TIMEOUT": "30",
        "PROXY_PAGE_ROOT": str(PAGE_ROOT),
    }
    values.update(
        {k: v for k, v in env.items() if k == "MAX_REQUEST_BYTES" or k.startswith("PROXY_")}
    )
    return values


def render_proxy_config(values: dict[str, str]) -> str:
    """proxy/nginx.conf.template with every ${NAME} replaced, as proxy/render.sh does."""
    template = PROXY_TEMPLATE.read_text()
    missing = sorted({name for name in _TEMPLATE_NAME.findall(template) if not values.get(name)})
    if missing:
        raise StackError(f"proxy: configuration error: set {' '.join(missing)}")
    return _TEMPLATE_NAME.sub(lambda m: values[m.group(1)], template)


def copy_proxy_includes(folder: Path) -> None:
    """Put the files the rendered config includes into `folder`, beside it."""
    for name in PROXY_INCLUDES:
        shutil.copyfile(PROXY_DIR / name, Path(folder) / name)


def nginx_binary() -> str:
    """Debian installs nginx in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if not found:
        raise StackError("nginx is not installed: `make system-deps` installs nginx-light")
    return found


class Proxy(Process):
    """nginx on 127.0.0.1 with the deployments' config, in front of gunicorn at `upstream`.

    Rendered into a folder of its own under `log_dir` (a temporary one without):
    config, pid, request-body buffers and the overload socket. Its access log
    (one JSON line per request, docu/RELIABILITY.md) is this process's log.
    """

    def __init__(self, log_dir: Path | None, *, upstream: str, settings: dict[str, str],
                 port: int | None = None, probe_port: int | None = None,
                 own_session: bool = False) -> None:  # fmt: skip
        self.port = port or free_port()
        self.probe_port = probe_port or free_port()
        base = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="kw-proxy-"))
        self.run_dir = base / f"proxy-{self.port}"
        self.values = dict(settings, PROXY_RUN_DIR=str(self.run_dir), GATEWAY_UPSTREAM=upstream,
                           PROXY_PORT=f"127.0.0.1:{self.port}",
                           PROXY_PROBE_PORT=f"127.0.0.1:{self.probe_port}")  # fmt: skip
        config = self.run_dir / "nginx.conf"
        argv = [nginx_binary(), "-e", "stderr", "-p", str(self.run_dir), "-c", str(config),
                "-g", "daemon off;" + (" user root root;" if os.geteuid() == 0 else "")]  # fmt: skip
        # As root (containers, CI), nginx would run its worker as `nobody`, which cannot
        # write request bodies into a test's private folder: the worker keeps our user.
        super().__init__(f"proxy-{self.port}", argv, dict(os.environ), log_dir, own_session)
        self.url = f"http://127.0.0.1:{self.port}"
        self.probe_url = f"http://127.0.0.1:{self.probe_port}"

    def start(self) -> Proxy:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "nginx.conf").write_text(render_proxy_config(self.values))
        copy_proxy_includes(self.run_dir)
        (self.run_dir / "overloaded.sock").unlink(missing_ok=True)
        super().start()
        return self


class Gunicorn(Process):
    """gunicorn alone (gunicorn.conf.py, stock gthread worker), configured by `env`.

    PROMETHEUS_* and GUNICORN_* settings of this process are not inherited. `pythonpath`
    entries go after the checkout (tests add a sitecustomize that guards connections).
    """

    def __init__(self, log_dir: Path | None, env: dict[str, str], *, port: int | None = None,
                 host: str = "127.0.0.1", workers: int = 1, threads: int = 4,
                 python: str | None = None, pythonpath: Sequence[str | os.PathLike] = (),
                 own_session: bool = False, checkout: Path = REPO) -> None:  # fmt: skip
        self.port = port or free_port()
        self.workers, self.threads = workers, threads
        self.python = python or gateway_python()
        argv = [self.python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway:app"]
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS", "GUNICORN"))
        }
        full_env.update(
            PYTHONPATH=os.pathsep.join([str(checkout), _pythonpath(pythonpath)]),
            GUNICORN_BIND=f"{host}:{self.port}",
            GUNICORN_WORKERS=str(workers),
            GUNICORN_THREADS=str(threads),
            **env,
        )
        super().__init__(f"gunicorn-{self.port}", argv, full_env, log_dir, own_session)
        # Another checkout's gateway.py and gunicorn.conf.py (before/after comparisons).
        self.cwd = Path(checkout)
        self.url = f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        return children(self.pid)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class Gateway:
    """The gateway as deployed: nginx (proxy/nginx.conf.template) in front of gunicorn.

    `url` and `port` are the proxy's public listener, `probe_url` its kubelet listener,
    `gunicorn` the process behind it. With `proxy=False`, gunicorn alone on `url`
    (`make serve`, the demo). `env` configures both, as in a deployment: the proxy reads
    MAX_REQUEST_BYTES, PROXY_* and the gateway the rest.
    """

    def __init__(self, log_dir: Path | None, env: dict[str, str], *, port: int | None = None,
                 host: str = "127.0.0.1", workers: int = 1, threads: int = 4,
                 python: str | None = None, pythonpath: Sequence[str | os.PathLike] = (),
                 own_session: bool = False, proxy: bool = True,
                 checkout: Path = REPO) -> None:  # fmt: skip
        self.gunicorn = Gunicorn(
            log_dir,
            env,
            port=None if proxy else port,
            host="127.0.0.1" if proxy else host,
            workers=workers,
            threads=threads,
            python=python,
            pythonpath=pythonpath,
            own_session=own_session,
            checkout=checkout,
        )
        self.proxy = None
        if proxy:
            settings = proxy_settings(env, workers=workers, threads=threads)
            self.proxy = Proxy(log_dir, upstream=f"127.0.0.1:{self.gunicorn.port}",
                               port=port, settings=settings, own_session=own_session)  # fmt: skip
        front = self.proxy or self.gunicorn
        self.port = front.port
        self.url = front.url
        self.probe_url = self.proxy.probe_url if self.proxy else self.url
        self.name = front.name

    @property
    def pid(self) -> int:
        """gunicorn's master."""
        return self.gunicorn.pid

    @property
    def proc(self):
        return self.gunicorn.proc

    def processes(self) -> list[Process]:
        return [self.gunicorn] + ([self.proxy] if self.proxy else [])

    def log(self) -> str:
        """gunicorn's log (the proxy's: `proxy.log()`)."""
        return self.gunicorn.log()

    def alive(self) -> bool:
        return all(p.alive() for p in self.processes())

    def check_alive(self) -> None:
        for process in self.processes():
            process.check_alive()

    def http_status(self, path: str) -> int:
        self.check_alive()
        return http_status(self.url + path)

    def start(self, wait: bool = True, timeout: float = 60.0) -> Gateway:
        """Start; with `wait`, until /healthz answers 200 through the front (the stack serves)."""
        for process in self.processes():
            process.start()
        if wait:
            wait_for(lambda: self.http_status("/healthz") == 200, timeout, f"gateway on {self.url}")
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until /readyz is 200: the gateway reaches the model server and a model is loaded."""
        wait_for(lambda: self.http_status("/readyz") == 200, timeout,
                 f"{self.url}/readyz", interval=0.5)  # fmt: skip

    def worker_pids(self) -> list[int]:
        return self.gunicorn.worker_pids()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """The proxy first (no new requests), then gunicorn; gunicorn's exit code."""
        if self.proxy:
            self.proxy.stop(timeout=timeout)
        return self.gunicorn.stop(sig, timeout)

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> Gateway:
        return self.start() if not self.alive() else self

    def __exit__(self, *exc) -> None:
        self.stop()


GUNICORN_ALONE_NOTE = (
    "gateway: gunicorn alone, without the nginx proxy every deployment puts in front of it "
    "(slow clients, overload and oversized requests are handled there: docu/RELIABILITY.md)"
)


class ServingStack:
    """Model server + gunicorn gateway as child processes (a context manager).

    What `make serve`, the demo and the gateway benchmark run: started together, ready
    when the gateway's /readyz is 200, stopped gateway first (SIGTERM, then SIGKILL).
    """

    def __init__(
        self,
        model_base: Path,
        port: int | None = None,
        grpc_port: int | None = None,
        rest_port: int | None = None,
        host: str = "127.0.0.1",
        workers: int = 2,
        log_dir: Path | None = None,  # None: both write to this terminal
        gateway_env: dict[str, str] | None = None,
        server_args: list[str] | None = None,
        backend: str | None = None,
    ) -> None:
        # Their own sessions: Ctrl-C reaches only us, and we stop them in order.
        self.server = ModelServer(model_base, log_dir, port=grpc_port, rest_port=rest_port,
                                  extra=server_args or [], own_session=True,
                                  backend=backend)  # fmt: skip
        env = {"TF_SERVING_HOST": self.server.target, **(gateway_env or {})}
        # gunicorn alone (GUNICORN_ALONE_NOTE): `make serve`, the demo, the benchmarks.
        self.gateway = Gateway(log_dir, env, port=port, host=host, workers=workers,
                               own_session=True, proxy=False)  # fmt: skip
        self.url = self.gateway.url

    def start(self) -> ServingStack:
        self.server.start()
        self.gateway.start(wait=False)
        return self

    def check_alive(self) -> None:
        self.server.check_alive()
        self.gateway.check_alive()

    def wait_ready(self, timeout: float = STACK_READY_TIMEOUT_S) -> None:
        """Until the gateway's /readyz is 200: both processes up, model loaded."""

        def ready() -> bool:
            self.server.check_alive()
            return self.gateway.http_status("/readyz") == 200

        wait_for(ready, timeout, f"{self.url}/readyz", interval=0.5)

    def stop(self) -> None:
        """SIGTERM to the gateway, then the model server; SIGKILL whatever is left."""
        for process in (self.gateway, self.server):
            process.stop(timeout=STACK_STOP_GRACE_S)

    def __enter__(self) -> ServingStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class PhotoServer:
    """A local web server for URL inputs: serves files from a folder, plus test routes.

    /redirect?to=URL answers 302 to URL; /slow dribbles bytes forever; /hang accepts the
    request and never answers (until the server stops); /big sends `big_bytes` bytes
    without a Content-Length. `hits` counts requests received.
    """

    def __init__(self, root: Path, big_bytes: int = 0) -> None:
        self.root = Path(root)
        self.hits = 0
        self.big_bytes = big_bytes
        self.stopping = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.hits += 1
                path, _, query = self.path.partition("?")
                try:
                    route = getattr(server, f"_route_{path.strip('/')}", None)
                    (route or server._file)(self, path, query)
                except OSError:  # the client went away: nothing to answer
                    pass

            def log_message(self, *args):
                pass

        return Handler

    def _route_redirect(self, handler, path: str, query: str) -> None:
        handler.send_response(302)
        handler.send_header("Location", urllib.parse.unquote(query.removeprefix("to=")))
        handler.end_headers()

    def _route_slow(self, handler, path: str, query: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        for _ in range(600):
            handler.wfile.write(b"\xff")
            handler.wfile.flush()
            time.sleep(0.2)

    def _route_hang(self, handler, path: str, query: str) -> None:
        self.stopping.wait(120)

    def _route_big(self, handler, path: str, query: str) -> None:
        handler.send_response(200)
        handler.end_headers()
        chunk = b"\0" * 65536
        for _ in range(self.big_bytes // len(chunk) + 1):
            handler.wfile.write(chunk)

    def _file(self, handler, path: str, query: str) -> None:
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_file() or self.root.resolve() not in file.parents:
            handler.send_error(404)
            return
        data = file.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def __enter__(self) -> PhotoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def export_untrained_model(base: Path, size: int, version: int = 1, seed: int = 1,
                           in_process: bool = False) -> Path:  # fmt: skip
    """An untrained Xception (weights none: timings do not depend on weights) as BASE/VERSION.

    By default in a child process: building a Keras model would load TensorFlow here
    and slow this process's later calls (measured 2x in bench_gateway).
    """
    if in_process:
        from kitchenware.export.savedmodel import export_saved_model
        from kitchenware.training.model import build_model

        model = build_model(size=size, weights="none", inner=8, augment=False, seed=seed)
        export_saved_model(model, base, version=version)
        return Path(base) / str(version)
    argv = [sys.executable, "-m", "devtools.stack", "export-untrained", str(base),
            "--size", str(size), "--version", str(version), "--seed", str(seed)]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=_pythonpath([]))
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"exporting an untrained model failed:\n{done.stderr[-3000:]}")
    return Path(base) / str(version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-untrained", help="export an untrained Xception")
    export.add_argument("base", type=Path, help="model base folder (TF Serving layout)")
    export.add_argument("--size", type=int, default=96, help="input size (Xception minimum 71)")
    export.add_argument("--version", type=int, default=1)
    export.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    export_untrained_model(args.base, args.size, args.version, args.seed, in_process=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
