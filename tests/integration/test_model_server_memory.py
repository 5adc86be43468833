"""The model server survives the worst case the gateway can send, inside its memory limit.

The gateway sends at most MAX_BATCH images per request, and at most workers x threads
requests at once (gunicorn.conf.py defaults, as in the manifests). The model server
runs with the shipped serving/batching_parameters.txt at 299 px, its process in a
memory cgroup with the limit kube-config/base/model-deployment.yaml gives it; every
request must be answered and nothing OOM-killed.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from support.cgroup import MemoryCgroup
from support.paths import REPO

from devtools.stack import ModelServer, export_untrained_model
from kitchenware.gateway.config import Settings

pytestmark = pytest.mark.slow

SIZE = 299
WORKERS, THREADS = 2, 4  # gunicorn.conf.py defaults, kept by the manifests and compose


def model_memory_limit() -> int:
    text = (REPO / "kube-config" / "base" / "model-deployment.yaml").read_text()
    limits = text.split("limits:", 1)[1]
    return int(re.search(r"memory:\s*(\d+)Gi", limits).group(1)) * 2**30


def test_worst_case_batches_fit_the_model_memory_limit(tmp_path):
    reason = MemoryCgroup.unavailable()
    if reason:
        pytest.skip(reason)
    from kitchenware.serving.grpc_client import ServingClient

    base = tmp_path / "models" / "kitchenware"
    export_untrained_model(base, SIZE)
    limit = model_memory_limit()
    batch = Settings().max_batch
    params = REPO / "serving" / "batching_parameters.txt"
    # TensorFlow: the memory worst case (the OpenVINO image peaks far lower; make compose-test
    # checks its container against the same limit).
    server = ModelServer(
        base, tmp_path, extra=["--batching-parameters-file", str(params)], backend="tensorflow"
    )
    pixels = np.random.default_rng(0).integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)
    with MemoryCgroup("kitchenware-model", limit) as cgroup:
        # Inside the cgroup from its first byte: TensorFlow's start-up is charged too.
        server.argv = ["sh", "-c", f'echo $$ > {cgroup.path}/cgroup.procs && exec "$@"', "sh",
                       *server.argv]  # fmt: skip
        server.start(wait=True)
        with ServingClient(server.target, timeout=300) as client:

            def send(_):
                try:
                    return len(client.predict(pixels).probabilities)
                except Exception as exc:  # noqa: BLE001 (reported below, with the peak)
                    return f"{type(exc).__name__}: {exc}"[:200]

            with ThreadPoolExecutor(WORKERS * THREADS) as pool:
                rows = list(pool.map(send, range(WORKERS * THREADS)))
        alive = server.alive()
        peak, kills = cgroup.peak_bytes(), cgroup.oom_kills()
        server.stop()
    print(f"\nmodel server cgroup peak {peak / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB "
          f"({WORKERS * THREADS} requests x {batch} images at {SIZE} px), OOM kills {kills}; answers {rows}")  # fmt: skip
    assert rows == [batch] * (WORKERS * THREADS)
    assert alive and kills == 0
