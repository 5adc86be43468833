"""Model server throughput vs the same SavedModel in-process, batching on and off.

    python -m devtools.bench_serving [--size 299] [--clients 8] [--requests 12]

Exports an untrained Xception (weights none: the timing does not depend on the
weights) at --size, measures the in-process `serving_default` throughput at
batch 32, starts `kitchenware model-server` twice on 127.0.0.1 (batching on, batching
off) and measures the throughput of --clients concurrent clients that each send
--requests one-image Predict calls. The three measurements alternate for
--rounds rounds; it prints images/s and the ratios served / offline (per round,
side by side, then the median).
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
from datetime import date
from pathlib import Path

from devtools.benchlib import cpu_model, run_in_threads
from devtools.stack import ModelServer, export_untrained_model
from kitchenware.core.contract import DEFAULT_IMAGE_SIZE, SIGNATURE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def offline_throughput(model_dir: Path, size: int, batch: int, repeats: int) -> float:
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE]
    pixels = tf.constant(
        np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    )
    serve(image=pixels)  # warm-up (graph build)
    started = time.perf_counter()
    for _ in range(repeats):
        serve(image=pixels)["probabilities"].numpy()
    return batch * repeats / (time.perf_counter() - started)


def served_throughput(target: str, size: int, clients: int, requests: int) -> float:
    """Images/s of `clients` threads, each with its own channel, sending one-image Predicts."""
    import numpy as np

    from kitchenware.serving.grpc_client import ServingClient

    pixels = np.random.default_rng(1).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    per_client = [ServingClient(target, timeout=300) for _ in range(clients)]
    for client in per_client:  # connect + metadata + one warm request each
        client.predict(pixels)

    def work(client) -> None:
        for _ in range(requests):
            client.predict(pixels)

    elapsed, errors = run_in_threads(work, per_client)
    for client in per_client:
        client.close()
    if errors:
        raise SystemExit(f"{len(errors)} clients failed, first: {errors[0]}")
    return clients * requests / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=int, default=DEFAULT_IMAGE_SIZE, help="image size (Xception minimum 71)"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=12, help="one-image requests per client")
    parser.add_argument("--batch", type=int, default=32, help="offline batch size")
    parser.add_argument("--repeats", type=int, default=3, help="offline batches timed")
    parser.add_argument("--batch-timeout-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--num-batch-threads", type=int, default=1, help="server batch threads")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    servers = []
    rounds = []
    try:
        base = workdir / "kitchenware"
        export_untrained_model(base, args.size, in_process=True)
        batching = [
            "--max-batch-size",
            str(args.batch),
            "--batch-timeout-ms",
            str(args.batch_timeout_ms),
            "--num-batch-threads",
            str(args.num_batch_threads),
        ]
        servers = [
            ModelServer(base, workdir, poll_seconds=0, extra=[*batching, "--log-level", "WARNING"]),
            ModelServer(base, workdir, poll_seconds=0, batching=False,
                        extra=["--log-level", "WARNING"]),
        ]  # fmt: skip
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(300)
        # Rounds interleave the three measurements so that load from other
        # processes on the machine hits all of them alike.
        for _ in range(args.rounds):
            offline = offline_throughput(base / "1", args.size, args.batch, args.repeats)
            on = served_throughput(servers[0].target, args.size, args.clients, args.requests)
            off = served_throughput(servers[1].target, args.size, args.clients, args.requests)
            rounds.append({"offline": offline, "on": on, "off": off})
            print(json.dumps({k: round(v, 2) for k, v in rounds[-1].items()}), file=sys.stderr)
        rows_per_batch = servers[0].stats().get("stats", {}).get("rows_per_batch")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def median(values):
        return statistics.median(values)

    result = {
        "command": "python -m devtools.bench_serving " + " ".join(sys.argv[1:]),
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "size": args.size,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "offline_batch": args.batch,
        "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
        "offline_images_per_s": round(median([r["offline"] for r in rounds]), 2),
        "served_batching_on_images_per_s": round(median([r["on"] for r in rounds]), 2),
        "served_batching_off_images_per_s": round(median([r["off"] for r in rounds]), 2),
        # Ratios within each round (side by side), then the median over rounds.
        "ratio_batching_on": round(median([r["on"] / r["offline"] for r in rounds]), 3),
        "ratio_batching_off": round(median([r["off"] / r["offline"] for r in rounds]), 3),
        "batching_on_rows_per_batch": rows_per_batch,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
