"""`make serve`: the model server and the gateway on the latest exported model, until Ctrl-C.

    python scripts/serve.py [--model-base-path models/kitchenware] [--port 9696] [--grpc-port 8500]

With no exported model under --model-base-path, a quick demo model is trained
first from synthetic sample data (the build steps of scripts/demo.py) and
served instead. The gateway runs under gunicorn, in the TensorFlow-free
`.venv-gateway` when it exists. Ctrl-C or SIGTERM stops both processes
gracefully (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kitchenware.core.contract import versions  # noqa: E402
from kitchenware.core.errors import KitchenwareError  # noqa: E402

GATEWAY_VENV_PYTHON = REPO / ".venv-gateway" / "bin" / "python"
READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for background stacks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gateway_python() -> str:
    """The TF-free gateway environment when built (`make gateway-venv`), else this one."""
    return str(GATEWAY_VENV_PYTHON) if GATEWAY_VENV_PYTHON.is_file() else sys.executable


class ServingStack:
    """Model server + gunicorn gateway as child processes (a context manager)."""

    def __init__(
        self,
        model_base: Path,
        port: int = 9696,
        grpc_port: int = 8500,
        host: str = "127.0.0.1",
        workers: int = 2,
        log_file: Path | None = None,
        gateway_env: dict[str, str] | None = None,
        server_args: list[str] | None = None,
    ) -> None:
        self.model_base = Path(model_base)
        self.server_args = list(server_args or [])
        self.host = host
        self.port = port
        self.grpc_port = grpc_port
        self.workers = workers
        self.log_file = log_file
        self.gateway_env = gateway_env or {}
        self.url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        self.processes: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        out = self.log_file.open("ab") if self.log_file else None
        # A session of their own: Ctrl-C reaches only us, and we stop them in order.
        self.processes[name] = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )  # fmt: skip
        if out:
            out.close()

    def start(self) -> ServingStack:
        base_env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        self._spawn(
            "model server",
            [sys.executable, "-m", "kitchenware.cli", "model-server",
             "--model-base-path", str(self.model_base), "--host", "127.0.0.1",
             "--port", str(self.grpc_port), *self.server_args],
            base_env,
        )  # fmt: skip
        gateway_env = dict(
            base_env,
            TF_SERVING_HOST=f"127.0.0.1:{self.grpc_port}",
            GUNICORN_BIND=f"{self.host}:{self.port}",
            GUNICORN_WORKERS=str(self.workers),
            **self.gateway_env,
        )
        self._spawn(
            "gateway",
            [gateway_python(), "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway:app"],
            gateway_env,
        )
        return self

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                hint = f"; see {self.log_file}" if self.log_file else ""
                raise KitchenwareError(f"the {name} exited with code {proc.returncode}{hint}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the gateway's /readyz is 200: both processes up, model loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise KitchenwareError(f"the model server and gateway were not ready within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM to the gateway, then the model server; SIGKILL whatever is left."""
        for name in ("gateway", "model server"):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                print(f"serve: the {name} did not stop in {STOP_GRACE_S:g} s; killing it")
                proc.kill()
                proc.wait()

    def __enter__(self) -> ServingStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def demo_model(demo_dir: Path) -> Path:
    """Train and export a quick demo model with scripts/demo.py's build steps; its model base."""
    sys.path.insert(0, str(REPO / "scripts"))
    import demo

    print(f"serve: no exported model yet; building a quick demo model in {demo_dir}/ first")
    demo.build(demo_dir)
    base = demo.model_base(demo_dir)
    if not versions(base):
        raise KitchenwareError(f"scripts/demo.py's build steps exported no model under {base}")
    return base


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-base-path", type=Path, default=Path("models/kitchenware"),
                        help="folder of numbered SavedModel versions (TF Serving layout)")  # fmt: skip
    parser.add_argument("--demo-dir", type=Path, default=Path("demo"),
                        help="where to build a demo model when there is none")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="gateway address (0.0.0.0: reachable)")
    parser.add_argument("--port", type=int, default=9696, help="gateway HTTP port")
    parser.add_argument("--grpc-port", type=int, default=8500, help="model server gRPC port")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum
        raise KeyboardInterrupt

    # Explicit for SIGINT too: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        base = args.model_base_path
        if not versions(base):
            base = demo_model(args.demo_dir)
        stack = ServingStack(base, args.port, args.grpc_port, args.host, args.workers)
        with stack:
            print(f"serve: model server on 127.0.0.1:{args.grpc_port} serving {base} "
                  f"(versions {versions(base)}); waiting until ready ...", flush=True)  # fmt: skip
            stack.wait_ready()
            print(
                f"\nserve: ready.\n  web page  {stack.url}/\n  API       POST {stack.url}/predict\n"
                f"  health    {stack.url}/healthz  {stack.url}/readyz  {stack.url}/metrics\n"
                f"  try       python test.py path/to/photo.jpg --gateway {stack.url}\n"
                "Ctrl-C stops both.",
                flush=True,
            )
            while True:
                stack.check_alive()
                time.sleep(0.5)
    except KeyboardInterrupt:  # the `with` block has stopped both processes by now
        print("\nserve: stopped the gateway and the model server", flush=True)
        return 0
    except KitchenwareError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
