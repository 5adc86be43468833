"""Decompression bombs against the real gateway under the memory limit its manifest sets.

Tiny GIF/PNG/WebP files that declare 40-megapixel canvases used to make each
worker peak at ~800 MB while decoding: under the 512 MiB limit every one was
answered by an OOM-killed worker, taking concurrent requests with it. Here
gunicorn (2 workers x 4 threads, as deployed) runs in a memory cgroup with the
manifest's limit and gets bombs and photos at once: every request must get an
HTTP answer, no worker may die, and the cgroup must never hit its limit.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support.cgroup import MemoryCgroup
from support.paths import REPO, guarded_gateway

from devtools.bombs import animated_webp, gif_screen, palette_png
from devtools.stack import ModelServer, rss_kb


def manifest_memory_limit() -> int:
    text = (REPO / "kube-config" / "base" / "gateway-deployment.yaml").read_text()
    limits = text.split("limits:", 1)[1]
    return int(re.search(r"memory:\s*(\d+)Mi", limits).group(1)) * 2**20


def post_retrying_overload(url: str, data: bytes, content_type: str) -> int:
    """POST /predict as a well-behaved client: a 503 `overloaded` (the proxy's bound on
    requests inside gunicorn) is retried after its Retry-After. The final status."""
    for _ in range(600):
        response = requests.post(f"{url}/predict", data=data, timeout=120,
                                 headers={"Content-Type": content_type})  # fmt: skip
        if response.status_code != 503 or response.json()["error"]["code"] != "overloaded":
            return response.status_code
        time.sleep(float(response.headers["Retry-After"]))
    raise AssertionError("still overloaded after 600 tries")


def cgroup_ready(exported_model, tmp_path) -> tuple:
    """(a model base path for the server, the manifest's memory limit), or skip."""
    reason = MemoryCgroup.unavailable()
    if reason:
        pytest.skip(reason)
    base = tmp_path / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    return base, manifest_memory_limit()


@pytest.mark.slow
def test_bombs_and_photos_at_once_under_the_gateway_memory_limit(
    exported_model, sample_photos, tmp_path
):
    base, limit = cgroup_ready(exported_model, tmp_path)
    bombs = {"gif": gif_screen(), "png": palette_png(), "webp": animated_webp()}
    requests_to_send = (
        [("gif", bombs["gif"])] * 8
        + [("png", bombs["png"])] * 8
        + [("webp", bombs["webp"])] * 4
        + [("photo", p.read_bytes()) for p in sample_photos[:8]]
    )
    with ModelServer(base, tmp_path) as server:
        server.wait_ready()
        gateway = guarded_gateway(
            tmp_path, {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "30"}, workers=2
        )
        with gateway, MemoryCgroup("kitchenware-gateway", limit) as cgroup:
            gateway.wait_ready()
            workers = sorted(gateway.worker_pids())
            assert len(workers) == 2
            for pid in [gateway.pid, *workers]:
                cgroup.add(pid)

            def send(item):
                kind, data = item
                return kind, post_retrying_overload(gateway.url, data, "application/octet-stream")

            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(send, requests_to_send * 2))
            peak, kills = cgroup.peak_bytes(), cgroup.oom_kills()
            assert sorted(gateway.worker_pids()) == workers, "a worker died and was replaced"
    by_kind = {}
    for kind, status in answers:
        by_kind.setdefault(kind, set()).add(status)
    assert by_kind == {"gif": {200}, "png": {200}, "webp": {413}, "photo": {200}}
    print(f"\ncgroup peak {peak / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB, OOM kills {kills}")
    assert kills == 0
    assert peak < limit


@pytest.mark.slow
def test_a_worker_gives_decode_memory_back_after_the_bombs(exported_model, tmp_path):
    """glibc keeps big freed buffers unless told otherwise (gunicorn.conf.py's post_fork):
    without that, each worker kept ~200 MB after a few bombs, twice its baseline."""
    base = tmp_path / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    with ModelServer(base, tmp_path) as server:
        gateway = guarded_gateway(
            tmp_path, {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "30"}, workers=1
        )
        with gateway:
            gateway.wait_ready()
            (worker,) = gateway.worker_pids()
            baseline = rss_kb(worker)

            def send(data):
                return post_retrying_overload(gateway.url, data, "image/gif")

            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(send, [gif_screen(), palette_png()] * 4))
            after = rss_kb(worker)
    print(f"\nworker RSS {baseline // 1024} MB before 8 bombs, {after // 1024} MB after")
    assert statuses == [200] * 8
    assert after - baseline < 60 * 1024, f"worker RSS {baseline // 1024} -> {after // 1024} MB"


def json_attacks(photo: bytes) -> list[tuple[str, bytes, int]]:
    """(name, JSON body, the status it must get) for the JSON worst cases of issue 21:
    each one grew a worker by hundreds of MB when the body was parsed whole."""
    spaced = b'{"image": "' + b"AA " * (16 * 2**20 // 3) + b'"}'  # 16 MiB, the reported one
    grouped = b'{"image": "' + b"AAAA " * (16 * 2**20 // 5) + b'"}'  # 16 MiB, 9.6 MiB decoded
    strings = b'{"images": [' + b'"ab", ' * (45 * 2**20 // 6) + b'"ab"]}'  # 45 MiB of "ab"
    bare_list = b"[" + b'"ab", ' * (45 * 2**20 // 6) + b'"ab"]'
    noise = base64.b64encode(os.urandom(10 * 2**20 - 4096))
    largest = b'{"images": ["' + b'", "'.join([noise] * 3) + b'"]}'  # 40 MiB, 30 MiB decoded
    real = json.dumps({"image": base64.b64encode(photo).decode()}).encode()
    return [
        ("'AA AA ...' base64", spaced, 400),  # 11,184,810 characters: not a multiple of 4
        ("'AAAA AAAA ...' base64", grouped, 415),
        ("list of 'ab'", strings, 400),
        ("bare list", bare_list, 400),
        ("three 10 MiB images", largest, 415),
        ("photo", real, 200),
    ]


@pytest.mark.slow
def test_json_worst_case_under_the_gateway_memory_limit(exported_model, sample_photos, tmp_path):
    """workers x threads of the largest JSON attacks at once, straight into gunicorn
    (no proxy in front to bound them), under the manifest's memory limit: no worker
    dies, the cgroup never reaches its limit, every request gets its documented answer
    (a 503 `overloaded` from the worker's memory budget is retried, as clients do)."""
    base, limit = cgroup_ready(exported_model, tmp_path)
    attacks = json_attacks(sample_photos[0].read_bytes())
    workers, threads = 2, 4
    with ModelServer(base, tmp_path) as server:
        server.wait_ready()
        gateway = guarded_gateway(
            tmp_path, {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "30"},
            workers=workers, threads=threads, proxy=False,
        )  # fmt: skip
        with gateway, MemoryCgroup("kitchenware-gateway-json", limit) as cgroup:
            gateway.wait_ready()
            pids = sorted(gateway.worker_pids())
            assert len(pids) == workers
            # A cgroup v2 charges memory when it is allocated, not when a process moves in:
            # what the processes hold already is added to the cgroup's peak by hand.
            baseline = sum(rss_kb(pid) for pid in [gateway.pid, *pids]) * 1024
            for pid in [gateway.pid, *pids]:
                cgroup.add(pid)

            def send(attack):
                name, body, _ = attack
                try:
                    return name, post_retrying_overload(gateway.url, body, "application/json")
                except requests.ConnectionError:  # the worker died under the request
                    return name, "no answer"

            with ThreadPoolExecutor(workers * threads) as pool:
                answers = list(pool.map(send, [a for a in attacks for _ in range(3)]))
            peak, kills = cgroup.peak_bytes(), cgroup.oom_kills()
            replaced = sorted(gateway.worker_pids()) != pids
    print(f"\nRSS before {baseline / 2**20:.0f} MiB + cgroup peak {peak / 2**20:.0f} MiB = "
          f"{(baseline + peak) / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB; OOM kills {kills}, "
          f"workers replaced: {replaced}; answers {sorted(Counter(answers).items(), key=str)}")  # fmt: skip
    expected = {name: status for name, _, status in attacks}
    assert kills == 0 and not replaced
    assert set(answers) == set(expected.items())
    assert baseline + peak < limit
