"""docker-compose.yaml, up for real: healthchecks, test.py, refusals, a model crash, memory.

The tests run in file order on one stack; the crash comes last but one, so that
the memory figures are those of the first model container's life.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support.docker_stack import (
    BUILD,
    IMAGE_TAG,
    MODEL_DIR,
    MODEL_VERSION,
    container_ip,
    container_memory,
    curl,
    inspect,
    save_logs,
    wait_healthy,
)
from support.paths import REPO

from devtools.stack import wait_for
from kitchenware.core.labels import CLASSES

PROJECT = "kwcompose"
MODEL = f"{PROJECT}_model_1"
GATEWAY = f"{PROJECT}_gateway_1"
PROXY = f"{PROJECT}_proxy_1"
STACK = [MODEL, GATEWAY, PROXY]
GATEWAY_URL = "http://127.0.0.1:9696"
COLD_START_LIMIT_S = 240


@pytest.fixture(scope="module")
def compose(sandbox, figures):
    box, built = sandbox
    env = box.env(
        MODEL_DOCKERFILE=built.model_dockerfile,
        PYTHON_IMAGE=built.python_image,
        NGINX_IMAGE=built.nginx_image,
        IMAGE_TAG=IMAGE_TAG,
        MODEL_DIR=MODEL_DIR,
        MODEL_VERSION=str(MODEL_VERSION),
    )
    argv = [
        "docker-compose",
        "--project-name",
        PROJECT,
        "--file",
        str(REPO / "docker-compose.yaml"),
    ]

    def compose_cmd(*args: str) -> subprocess.CompletedProcess:
        return box.in_netns([*argv, *args], env=env, cwd=REPO, capture_output=True, text=True)

    started = time.monotonic()
    # `up` returns once the model is healthy: the gateway depends on it being so.
    up = compose_cmd("up", "--detach", "--no-build")
    assert up.returncode == 0, up.stderr
    try:
        cold = wait_healthy(box, STACK, COLD_START_LIMIT_S, started)
        figures["compose_cold_start_to_healthy_s"] = cold
        yield box
    finally:
        save_logs(box, STACK, BUILD / "logs" / "compose")
        down = compose_cmd("down", "--volumes", "--timeout", "20")
        assert down.returncode == 0, down.stderr
    left = box.output(
        "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}"
    )
    assert left == "", f"containers left after down: {left}"


def test_containers_run_as_compose_and_the_images_declare(compose):
    for name, memory in ((MODEL, 2 * 1024**3), (GATEWAY, 512 * 1024**2), (PROXY, 384 * 1024**2)):
        info = inspect(compose, name)
        assert info["HostConfig"]["ReadonlyRootfs"] is True, name
        assert info["HostConfig"]["Memory"] == memory, name
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", name
        uid = compose.docker("exec", name, "id", "-u", capture_output=True, text=True).stdout
        assert uid.strip() == "10001", name
        write = compose.docker(
            "exec", name, "touch", "/probe", check=False, capture_output=True, text=True
        )
        assert write.returncode != 0 and "Read-only file system" in write.stderr, name


def test_model_status_api_answers_like_tf_serving(compose):
    answer = curl(compose, "http://127.0.0.1:8501/v1/models/kitchenware")
    assert answer.status == 200, answer.body
    (version,) = answer.json()["model_version_status"]
    assert version == {
        "version": str(MODEL_VERSION),
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    missing = curl(compose, "http://127.0.0.1:8501/v1/models/kitchenware/versions/7")
    assert missing.status == 404, missing.body


def test_test_py_classifies_photos_through_the_published_port(compose, photos):
    done = compose.in_netns(
        [sys.executable, str(REPO / "test.py"), "--gateway", GATEWAY_URL, *map(str, photos)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for photo in photos:
        line = next(line for line in done.stdout.splitlines() if photo.name in line)
        assert any(label in line for label in CLASSES), line


def test_test_py_explain_saves_overlays_through_the_published_port(compose, photos, tmp_path):
    """The baked-in export answers `explain`; the gateway container draws the overlay."""
    from PIL import Image

    copies = []
    for photo in photos[:2]:
        copies.append(tmp_path / photo.name)
        copies[-1].write_bytes(photo.read_bytes())
    done = compose.in_netns(
        [sys.executable, str(REPO / "test.py"), "--explain", "--gateway", GATEWAY_URL,
         *map(str, copies)], capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for photo in copies:
        overlay = photo.with_name(photo.stem + ".explain.png")
        assert f"overlay saved to {overlay}" in done.stdout
        assert Image.open(overlay).format == "PNG"


def test_refused_url_and_garbage_upload_get_json_errors(compose, tmp_path):
    # The namespace has no route off the machine, so even a broken guard could not connect.
    refused = curl(
        compose, f"{GATEWAY_URL}/predict", "--header", "Content-Type: application/json",
        "--data", '{"url": "http://169.254.169.254/latest/meta-data/"}',
    )  # fmt: skip
    assert refused.status == 422, refused.body
    assert refused.json()["error"]["code"] == "url_refused"
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(os.urandom(4096))
    upload = curl(compose, f"{GATEWAY_URL}/predict", "--form", f"file=@{garbage}")
    assert upload.status in (400, 415), upload.body
    assert upload.json()["error"]["message"]


def test_the_proxy_answers_refusals_in_json_and_its_probe_port_passes_only_probes(
    compose, tmp_path
):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (50 * 2**20 + 1))  # MAX_REQUEST_BYTES + 1
    too_large = curl(compose, f"{GATEWAY_URL}/predict", "--data-binary", f"@{big}",
                     "--header", "Content-Type: image/jpeg")  # fmt: skip
    assert too_large.status == 413, too_large.body
    assert too_large.json()["error"]["code"] == "too_large"
    ip = container_ip(compose, PROXY, f"{PROJECT}_default")
    assert curl(compose, f"http://{ip}:9697/healthz").status == 200
    assert curl(compose, f"http://{ip}:9697/readyz").status == 200
    refused = curl(compose, f"http://{ip}:9697/predict", "--form", f"file=@{big}")
    assert refused.status in (404, 413) and refused.json()["error"]["code"] in (
        "not_found", "too_large"
    )  # fmt: skip
    assert curl(compose, f"http://{ip}:9697/").json()["error"]["code"] == "not_found"
    # gunicorn's port is not published: only the proxy reaches it.
    assert curl(compose, "http://127.0.0.1:8000/healthz", timeout=5).status == 0
    # The web page comes from the proxy image itself (nothing passed upstream).
    page = curl(compose, f"{GATEWAY_URL}/")
    assert page.status == 200 and "app.js" in page.body
    assert curl(compose, f"{GATEWAY_URL}/static/app.js").status == 200
    # Each request is a JSON line in the proxy's log, the 413 included.
    log = compose.docker("logs", PROXY, capture_output=True, text=True).stdout
    assert '"status":413' in log and '"uri":"/predict"' in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assets = [line for line in lines if line["uri"] in ("/", "/static/app.js")]
    assert {line["uri"] for line in assets} == {"/", "/static/app.js"}
    assert {line["upstream"] for line in assets} == {""}


def test_memory_stays_under_each_limit(compose, photos, figures):
    # A burst of whole batches first, so the model's peak includes real inference.
    burst = [
        subprocess.Popen(
            [
                "nsenter",
                f"--net={compose.netns_path}",
                sys.executable,
                str(REPO / "test.py"),
                "--gateway",
                GATEWAY_URL,
                *map(str, photos),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )  # fmt: skip
        for _ in range(4)
    ]
    assert [client.wait(120) for client in burst] == [0] * len(burst)
    measured = {}
    for name in STACK:
        peak, limit = container_memory(compose, name)
        measured[name] = {"peak_mb": round(peak / 2**20), "limit_mb": round(limit / 2**20)}
        assert peak < 0.9 * limit, f"{name}: peak {peak / 2**20:.0f} MiB of {limit / 2**20:.0f}"
    figures["compose_memory"] = measured


# Uploads a photo to /predict back to back from inside the namespace and prints each
# status: one process, so the outage is sampled every ~0.1 s (a curl per poll through
# nsenter from here is too slow for a model that is back within ~2 s).
_WATCH = (
    'while :; do curl --silent --max-time 5 --output /dev/null --write-out "%{http_code}\\n" '
    '--form "file=@$1" "$2/predict"; done'
)


def test_model_crash_gives_503_then_the_restart_policy_recovers(compose, photos, figures):
    gateway_before = inspect(compose, GATEWAY)["State"]["StartedAt"]
    model = inspect(compose, MODEL)
    watcher = subprocess.Popen(
        ["nsenter", f"--net={compose.netns_path}", "bash", "-c", _WATCH, "watch",
         str(photos[0]), GATEWAY_URL],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2)  # answers 200 first
        # SIGKILL from outside, as the kernel's OOM killer would: `docker kill` marks the
        # container as stopped by hand, and restart policies ignore those.
        killed = time.monotonic()
        os.kill(model["State"]["Pid"], signal.SIGKILL)
        wait_for(
            lambda: inspect(compose, MODEL)["RestartCount"] == model["RestartCount"] + 1,
            timeout=60, what="the restart policy restarting the model", interval=0.5,
        )  # fmt: skip
        time.sleep(3)
    finally:
        watcher.terminate()
    codes = watcher.communicate(timeout=30)[0].split()
    # While the model was down the gateway answered 503 (model_unavailable), never
    # anything else: no 500, no hang (curl's 000).
    assert "503" in codes, codes
    assert set(codes) <= {"200", "503"}, codes
    assert codes[0] == "200", codes
    # Each gunicorn worker's channel reconnects on its own backoff (at most 2 s), so
    # recovery means every worker answers: 6 readiness checks in a row, over both.
    streak = {"ok": 0}

    def all_workers_ready() -> bool:
        ok = curl(compose, f"{GATEWAY_URL}/readyz", timeout=5).status == 200
        streak["ok"] = streak["ok"] + 1 if ok else 0
        return streak["ok"] >= 6

    wait_for(all_workers_ready, 180, "recovery after the model restarted", interval=0.5)
    figures["compose_model_crash_to_ready_s"] = round(time.monotonic() - killed, 1)
    after = inspect(compose, MODEL)
    assert after["RestartCount"] == model["RestartCount"] + 1
    assert inspect(compose, GATEWAY)["State"]["StartedAt"] == gateway_before, "gateway restarted"
    done = curl(compose, f"{GATEWAY_URL}/predict", "--form", f"file=@{photos[0]}")
    assert done.status == 200, done.body
    figures["compose_model_restarts"] = after["RestartCount"]
