"""Gateway settings from the environment, and the HTTP layer's handling of bad requests.

The request tests use Flask's test client against the real app with no model
server: every one of them must be answered before the model server is needed.
"""

from __future__ import annotations

import base64
import io
import subprocess

import pytest
from PIL import Image
from support.paths import REPO

from devtools.stack import free_port, gateway_python
from kitchenware.gateway import config, create_app
from kitchenware.gateway.config import ConfigError, Settings


def test_defaults_match_the_documented_values():
    s = Settings.from_env({})
    assert (s.tf_serving_host, s.model_name, s.grpc_timeout) == (
        "localhost:8500",
        "kitchenware",
        10.0,
    )
    assert s.max_image_bytes == 10_485_760 and s.max_image_pixels == 40_000_000
    assert (s.url_fetch_timeout, s.allow_private_urls, s.max_batch) == (5.0, False, 32)


def test_values_are_read_from_the_named_variables():
    env = {
        config.TF_SERVING_HOST: "dns:///model:8500",
        config.MODEL_NAME: "pots",
        config.GRPC_TIMEOUT: "2.5",
        config.MAX_IMAGE_BYTES: "1000",
        config.MAX_IMAGE_PIXELS: "1_000_000",
        config.URL_FETCH_TIMEOUT: "1",
        config.ALLOW_PRIVATE_URLS: "TRUE",
        config.MAX_BATCH: "4",
        config.GRPC_MAX_MESSAGE_BYTES: "8388608",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        tf_serving_host="dns:///model:8500",
        model_name="pots",
        grpc_timeout=2.5,
        max_image_bytes=1000,
        max_image_pixels=1_000_000,
        url_fetch_timeout=1.0,
        allow_private_urls=True,
        max_batch=4,
        grpc_max_message_bytes=8388608,
    )


@pytest.mark.parametrize(
    "name, value, message",
    [
        (config.GRPC_TIMEOUT, "soon", "GRPC_TIMEOUT='soon' is not valid"),
        (config.GRPC_TIMEOUT, "0", "GRPC_TIMEOUT='0' is not valid: must be greater than 0"),
        (config.MAX_BATCH, "2.5", "MAX_BATCH='2.5' is not valid: expected a whole number"),
        (config.MAX_IMAGE_BYTES, "-1", "MAX_IMAGE_BYTES='-1' is not valid: must be greater than 0"),
        (config.ALLOW_PRIVATE_URLS, "maybe", "ALLOW_PRIVATE_URLS='maybe' is not valid"),
        (config.URL_FETCH_TIMEOUT, "nan", "URL_FETCH_TIMEOUT='nan' is not valid"),
    ],
)
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})


def test_gunicorn_refuses_to_start_with_a_bad_setting():
    proc = subprocess.run(
        [gateway_python(), "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway:app"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MAX_BATCH": "lots",
             "GUNICORN_BIND": f"127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "MAX_BATCH='lots' is not valid: expected a whole number" in proc.stderr + proc.stdout


# -- bad requests, answered before any model server is needed -----------------------


@pytest.fixture(scope="module")
def client():
    settings = Settings(tf_serving_host="127.0.0.1:1", grpc_timeout=1.0, max_image_bytes=50_000,
                        max_request_bytes=200_000, max_batch=4)  # fmt: skip
    return create_app(settings).test_client()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "JPEG")
    return buf.getvalue()


def _error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(data="{not json", content_type="application/json"), "not valid JSON"),
        (
            dict(data="[" * 50_000 + "]" * 50_000, content_type="application/json"),
            "expected a JSON object",
        ),
        (dict(json=["http://x"]), "expected a JSON object"),
        (dict(json={"link": "http://x"}), "exactly one of the keys"),
        (dict(json={"url": "http://x", "image": "aGk="}), "found: url, image"),
        (dict(json={"url": 5}), "'url' must be a non-empty string"),
        (dict(json={"urls": "http://x"}), "'urls' must be a list"),
        (dict(json={"urls": []}), "contains no image"),
        (
            dict(json={"urls": ["http://x"] * 5}),
            "more than 4 images in one request; the limit is 4",
        ),
        (dict(json={"image": "not base64!"}), "not valid base64"),
        (dict(data="hello", content_type="text/plain"), "unsupported request (text/plain)"),
        (dict(data={"photo": (io.BytesIO(b"x"), "a.jpg")}), "form field named 'file'"),
        (dict(data={"file": (io.BytesIO(b""), "a.jpg")}), "upload a.jpg is empty"),
    ],
)
def test_malformed_requests_are_400(client, kwargs, fragment):
    assert fragment in _error(client.post("/predict", **kwargs), 400, "bad_request")


def test_too_large_inputs_are_413(client):
    big = b"\xff" * 60_000
    _error(
        client.post("/predict", json={"image": base64.b64encode(big).decode()}), 413, "too_large"
    )
    _error(client.post("/predict", data={"file": (io.BytesIO(big), "a.jpg")}), 413, "too_large")
    message = _error(client.post("/predict", data=b"\0" * 300_000, content_type="image/jpeg"),
                     413, "too_large")  # fmt: skip
    assert "200,000 bytes" in message


def test_refused_urls_are_422_before_the_model_server_is_asked(client):
    for url in ("http://127.0.0.1/a.jpg", "file:///etc/passwd", "http://[::1]/"):
        _error(client.post("/predict", json={"url": url}), 422, "url_refused")


def test_non_images_and_bombs_are_refused_from_the_header_without_the_model_server(client):
    body = base64.b64encode(b"plain text, not a photo").decode()
    _error(client.post("/predict", json={"image": body}), 415, "not_an_image")
    bomb = io.BytesIO()
    Image.new("1", (7000, 7000)).save(bomb, "PNG")  # 49 Mpx in a few kB
    message = _error(client.post("/predict", data={"file": (io.BytesIO(bomb.getvalue()), "b.png")}),
                     413, "too_large")  # fmt: skip
    assert "7000x7000" in message
    # A real photo passes the header check; only then is the model server needed: 503.
    _error(client.post("/predict", json={"image": base64.b64encode(_jpeg()).decode()}), 503,
           "model_unavailable")  # fmt: skip


def test_unknown_routes_and_methods_answer_json(client):
    _error(client.get("/nowhere"), 404, "not_found")
    response = client.get("/predict")
    _error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_invented_methods_do_not_grow_the_metrics(client):
    for method in ("BREW", "X1", "X2"):
        _error(client.open("/predict", method=method), 405, "method_not_allowed")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'method="other",status="405"} 3.0' in metrics
    assert "BREW" not in metrics and "X1" not in metrics


def test_health_and_page_need_no_model_server(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and b"<title>Kitchenware classifier</title>" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    # no external CDN: every script and stylesheet comes from this server
    assert b"http" not in page.data.replace(b"https://example.com/photo.jpg", b"")


def test_development_server_command_serves_the_app(tmp_path):
    import sys
    import time

    import requests

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kitchenware.cli", "gateway", "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TF_SERVING_HOST": "127.0.0.1:1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert response.json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(10)
