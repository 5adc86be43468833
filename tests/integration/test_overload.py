"""An overloaded model server: the gateway answers fast 503s, not a storm of gRPC retries.

The model server gets the smallest queue TF Serving's batching allows (one batch of
one row waiting, one batch thread), so most concurrent requests are refused with
UNAVAILABLE, the code TF Serving uses for a full queue. The gateway's client retries
UNAVAILABLE, throttled; the server's stats file counts every Predict RPC it received,
so the test can bound how many RPCs each HTTP request cost without timing anything.
"""

from __future__ import annotations

import collections
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from support.paths import TINY_SIZE, guarded_gateway

from devtools.stack import PROBE_RESERVE_THREADS, ModelServer
from kitchenware.core.images import encode_jpeg
from kitchenware.serving.grpc_client import RETRY_MAX_TOKENS, RETRY_TOKEN_RATIO

pytestmark = pytest.mark.slow

REQUESTS = 240
WORKERS = 2
THREADS = 12  # per gateway worker
# The proxy passes this many requests to gunicorn at once (the rest of its threads are
# kept for probes): each client here always has a request inside the gateway.
CLIENTS = WORKERS * THREADS - PROBE_RESERVE_THREADS
TINY_QUEUE = """
max_batch_size { value: 1 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1 }
num_batch_threads { value: 1 }
"""


@pytest.fixture
def overloaded_stack(exported_model, tmp_path):
    base = tmp_path / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    params = tmp_path / "batching_parameters.txt"
    params.write_text(TINY_QUEUE)
    server = ModelServer(base, tmp_path, extra=["--batching-parameters-file", str(params)])
    gateway = guarded_gateway(
        tmp_path,
        {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "60"},
        workers=WORKERS,
        threads=THREADS,
    )
    try:
        server.start(wait=True)
        gateway.start()
        gateway.wait_ready()
        yield server, gateway
    finally:
        gateway.stop()
        server.stop()


def test_overload_gives_503s_and_a_bounded_number_of_rpcs(overloaded_stack):
    server, gateway = overloaded_stack
    pixels = np.random.default_rng(0).integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    photo = encode_jpeg(pixels)
    before = server.stats()["stats"]

    def send(_):
        response = requests.post(
            gateway.url + "/predict",
            data=photo,
            headers={"Content-Type": "image/jpeg"},
            timeout=120,
        )
        body = response.json()
        return response.status_code, body.get("error", {}).get("code")

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = collections.Counter(pool.map(send, range(REQUESTS)))
    after = server.wait_stats(lambda s: s["stats"]["in_flight"] == 0)["stats"]

    calls = after["predict_calls"] - before["predict_calls"]
    refused = after["queue_full"] - before["queue_full"]
    report = f"answers {dict(answers)}, {calls} Predict RPCs, {refused} refused queue-full"
    # Only these two answers: served, or a clean 503 in the documented error shape.
    assert set(answers) <= {(200, None), (503, "model_unavailable")}, report
    # The load really overloaded the server (otherwise the bound below proves nothing).
    assert refused >= REQUESTS // 10, report
    # Unthrottled, each refused request came back up to 5 times. Throttled, retries stop
    # once a worker's tokens fall to half: a burst of RETRY_MAX_TOKENS / 2 failures (plus
    # the calls already in flight) and then RETRY_TOKEN_RATIO retries per success.
    burst = WORKERS * (RETRY_MAX_TOKENS / 2 + THREADS)
    bound = REQUESTS * (1 + 2 * RETRY_TOKEN_RATIO) + burst
    assert REQUESTS <= calls <= bound, report
    # What is refused reaches the client as a 503 instead of being retried into a success.
    assert answers[(503, "model_unavailable")] >= REQUESTS // 10, report
    print(f"{REQUESTS} requests: {report}; {calls / REQUESTS:.2f} RPCs per request")
