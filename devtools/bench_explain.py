"""What an explanation costs: `explain` against `predict` at batch 1, side by side.

    python -m devtools.bench_explain [--size 299] [--requests 20] [--rounds 3]

Exports an untrained Xception (weights none: the timing does not depend on the
weights) at --size, starts `kitchenware model-server` (batching off: one request
is one model call) and a gunicorn gateway on 127.0.0.1, then alternates, for
--rounds rounds, --requests turns of sequential one-image calls, one of each kind
per turn:

- model server: gRPC Predict on `serving_default` vs on `explain` (ServingClient);
- gateway: POST /predict vs POST /explain with one real photo (the latter
  includes drawing and encoding the overlay PNG).

Last, in this process, the export's own choice: `explain` with the maps of all
six classes vs a variant that computes the top class's map only (the signature
returns all six only because that costs at most 1.5x).

Prints median latencies, the explain/predict ratios (per round, then their
median), the CPU model and its flags; JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from devtools.benchlib import MINI_DATA, machine
from devtools.stack import Gateway, ModelServer, export_untrained_model
from kitchenware.core.contract import DEFAULT_IMAGE_SIZE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FLAGS_OF_INTEREST = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni",
                     "avx512f", "avx2", "fma")  # fmt: skip


def cpu_flags() -> list[str]:
    """The flags of /proc/cpuinfo that decide TensorFlow's CPU speed (AMX, AVX-512, AVX2)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS_OF_INTEREST if f in present]
    except OSError:
        pass
    return []


def photo_bytes() -> bytes:
    """One real photo (kitchenware-mini) when present, else a drawn one."""
    photos = sorted((MINI_DATA / "images").glob("*.jpg"))
    if photos:
        return photos[0].read_bytes()
    from kitchenware.core.images import encode_jpeg
    from kitchenware.dataprep.drawing import draw_photo

    return encode_jpeg(draw_photo("cup", np.random.default_rng(0), 512, 384))


def interleaved(calls: dict, count: int) -> dict:
    """Median seconds of each call, the calls taking turns `count` times (after one untimed
    turn), so that load from other processes hits every call alike."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def in_process_maps(size: int, count: int) -> dict:
    """Median ms at batch 1 of serving_default, explain with all six maps, and top-only."""
    import tensorflow as tf

    from kitchenware.training.gradcam import explain
    from kitchenware.training.model import build_model, inference_model

    model = inference_model(build_model(size=size, weights="none", inner=100, augment=False))
    spec = [tf.TensorSpec([None, size, size, 3], tf.uint8)]
    top = tf.function(lambda x: explain(model, x, maps="top"), input_signature=spec)
    every = tf.function(lambda x: explain(model, x, maps="all"), input_signature=spec)
    plain = tf.function(lambda x: tf.nn.softmax(model(x, training=False)), input_signature=spec)
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (1, size, size, 3), np.uint8))
    calls = {name: (lambda fn=fn: tf.nest.map_structure(np.asarray, fn(image)))
             for name, fn in (("predict", plain), ("top_map", top), ("all_maps", every))}  # fmt: skip
    return {name: seconds * 1000 for name, seconds in interleaved(calls, 3 * count).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE, help="image size")
    parser.add_argument("--requests", type=int, default=20, help="calls of each kind per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)

    import requests

    from kitchenware.serving.grpc_client import ServingClient

    workdir = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    server = gateway = None
    rounds = []
    photo = photo_bytes()
    try:
        base = workdir / "kitchenware"
        export_untrained_model(base, args.size)
        server = ModelServer(base, workdir, poll_seconds=0, batching=False,
                             extra=["--log-level", "WARNING"])  # fmt: skip
        server.start(wait=True, timeout=300)
        gateway = Gateway(workdir, {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "60"})
        gateway.start()
        gateway.wait_ready()
        pixels = np.random.default_rng(1).integers(0, 256, (1, args.size, args.size, 3), np.uint8)
        headers = {"Content-Type": "image/jpeg"}
        with ServingClient(server.target, timeout=60) as client, requests.Session() as http:

            def post(path: str):
                response = http.post(gateway.url + path, data=photo, headers=headers, timeout=60)
                response.raise_for_status()

            calls = {
                "server_predict": lambda: client.predict(pixels),
                "server_explain": lambda: client.explain(pixels),
                "gateway_predict": lambda: post("/predict"),
                "gateway_explain": lambda: post("/explain"),
            }
            for _ in range(args.rounds):
                row = interleaved(calls, args.requests)
                rounds.append({k: round(v * 1000, 1) for k, v in row.items()})
                print(json.dumps(rounds[-1]), file=sys.stderr)
    finally:
        for process in (gateway, server):
            if process is not None:
                process.stop()
    maps = in_process_maps(args.size, args.requests)
    shutil.rmtree(workdir, ignore_errors=True)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 1)

    def ratio(numerator: str, denominator: str) -> float:
        return round(statistics.median(r[numerator] / r[denominator] for r in rounds), 3)

    result = {
        "command": "python -m devtools.bench_explain " + " ".join(argv or sys.argv[1:]),
        **machine(),
        "cpu_flags": cpu_flags(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "size": args.size,
        "batch": 1,
        "rounds_ms": rounds,
        "server_predict_ms": median("server_predict"),
        "server_explain_ms": median("server_explain"),
        "gateway_predict_ms": median("gateway_predict"),
        "gateway_explain_ms": median("gateway_explain"),
        "ratio_server_explain_to_predict": ratio("server_explain", "server_predict"),
        "ratio_gateway_explain_to_predict": ratio("gateway_explain", "gateway_predict"),
        "in_process_ms": {k: round(v, 1) for k, v in maps.items()},
        "ratio_all_maps_to_top_map": round(maps["all_maps"] / maps["top_map"], 3),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
