"""`make serve`: the model server and the gateway on the latest exported model, until Ctrl-C.

    python -m devtools.serve [--model-base-path models/kitchenware] [--port 9696] [--grpc-port 8500]

With no exported model under --model-base-path, a quick demo model is trained
first from synthetic sample data (the build steps of devtools.demo) and
served instead. The gateway runs under gunicorn, in the TensorFlow-free
`.venv-gateway` when it exists. Ctrl-C or SIGTERM stops both processes
gracefully (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from devtools.stack import GUNICORN_ALONE_NOTE, ServingStack, gateway_python_note
from kitchenware.core.contract import GATEWAY_PORT, GRPC_PORT, REST_PORT, versions
from kitchenware.core.errors import KitchenwareError


def demo_model(demo_dir: Path) -> Path:
    """Train and export a quick demo model with devtools.demo's build steps; its base."""
    from devtools import demo

    print(f"serve: no exported model yet; building a quick demo model in {demo_dir}/ first")
    demo.build(demo_dir)
    base = demo.model_base(demo_dir)
    if not versions(base):
        raise KitchenwareError(f"the demo's build steps exported no model under {base}")
    return base


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-base-path", type=Path, default=Path("models/kitchenware"),
                        help="folder of numbered SavedModel versions (TF Serving layout)")  # fmt: skip
    parser.add_argument("--demo-dir", type=Path, default=Path("demo"),
                        help="where to build a demo model when there is none")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="gateway address (0.0.0.0: reachable)")
    parser.add_argument("--port", type=int, default=GATEWAY_PORT, help="gateway HTTP port")
    parser.add_argument("--grpc-port", type=int, default=GRPC_PORT, help="model server gRPC port")
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
        stack = ServingStack(base, args.port, args.grpc_port, REST_PORT, args.host, args.workers)
        print(f"serve: {gateway_python_note(stack.gateway.gunicorn.python)}", flush=True)
        print(f"serve: {GUNICORN_ALONE_NOTE}", flush=True)
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
