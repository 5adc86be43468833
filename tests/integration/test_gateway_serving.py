"""The gateway end to end: gunicorn + the real model server + a tiny exported model.

Every process is real and listens on 127.0.0.1: the model server
(`kitchenware model-server`), the gateway under gunicorn (in `.venv-gateway`
when present, as deployed), and a local web server for URL inputs.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
from PIL import Image
from support.paths import REPO, TINY_SIZE, guarded_gateway

from devtools.stack import ModelServer, PhotoServer, peak_rss_kb, wait_for

pytestmark = pytest.mark.slow

GRPC_TIMEOUT = 20


@pytest.fixture(scope="module")
def photos(sample_photos) -> list[Path]:
    return sample_photos


@pytest.fixture(scope="module")
def stack(exported_model, tmp_path_factory, photos):
    """Model server on a private copy of the exported model; a strict and a lenient gateway."""
    work = tmp_path_factory.mktemp("gateway-stack")
    base = work / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    server = ModelServer(base, work, poll_seconds=0.5)
    server.start()
    site_root = work / "site"
    site_root.mkdir()
    for photo in photos[:3]:
        shutil.copy(photo, site_root / photo.name)
    (site_root / "notes.txt").write_text("not an image")
    strict = guarded_gateway(work, {"TF_SERVING_HOST": server.target,
                                    "GRPC_TIMEOUT": str(GRPC_TIMEOUT),
                                    "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")},
                             workers=2)  # fmt: skip
    lenient = guarded_gateway(work, {"TF_SERVING_HOST": server.target,
                                     "GRPC_TIMEOUT": str(GRPC_TIMEOUT),
                                     "ALLOW_PRIVATE_URLS": "true",
                                     "URL_FETCH_TIMEOUT": "2"})  # fmt: skip
    try:
        strict.start()
        lenient.start()
        server.wait_ready()
        with PhotoServer(site_root, big_bytes=11 * 2**20) as site:
            yield {"server": server, "gw": strict.url, "strict": strict, "open": lenient.url,
                   "site": site, "base": base, "work": work}  # fmt: skip
    finally:
        for process in (strict, lenient, server):
            process.stop()


def post(url: str, **kwargs) -> requests.Response:
    return requests.post(url + "/predict", timeout=GRPC_TIMEOUT + 30, **kwargs)


def check_prediction(answer: dict, version: int | None = None) -> None:
    assert set(answer) == {"label", "probability", "probabilities", "model"}
    probabilities = answer["probabilities"]
    assert sorted(probabilities) == ["cup", "fork", "glass", "knife", "plate", "spoon"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert answer["label"] == max(probabilities, key=probabilities.get)
    assert answer["probability"] == probabilities[answer["label"]]
    assert answer["model"]["name"] == "kitchenware"
    if version is not None:
        assert answer["model"]["version"] == version


def error_code(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["message"] and "Traceback" not in response.text
    return body["error"]["code"]


# -- each input form ------------------------------------------------------------------


def test_multipart_upload(stack, photos):
    with photos[0].open("rb") as fh:
        response = post(stack["gw"], files={"file": (photos[0].name, fh, "image/jpeg")})
    assert response.status_code == 200, response.text
    check_prediction(response.json(), version=1)


def test_base64_json_and_raw_body(stack, photos):
    data = photos[1].read_bytes()
    as_json = post(stack["gw"], json={"image": base64.b64encode(data).decode()})
    raw = post(stack["gw"], data=data, headers={"Content-Type": "image/jpeg"})
    assert as_json.status_code == raw.status_code == 200
    check_prediction(as_json.json())
    assert as_json.json() == raw.json()


def test_a_chunked_upload_is_read_whole_and_classified(stack, photos):
    data = photos[1].read_bytes()
    pieces = (data[i : i + 4096] for i in range(0, len(data), 4096))  # requests sends chunked
    chunked = post(stack["gw"], data=pieces, headers={"Content-Type": "image/jpeg"})
    whole = post(stack["gw"], data=data, headers={"Content-Type": "image/jpeg"})
    assert chunked.status_code == 200, chunked.text
    assert chunked.json() == whole.json()


def test_url_and_url_batch_in_input_order(stack):
    site = stack["site"]
    names = sorted(p.name for p in site.root.glob("*.jpg"))
    single = post(stack["open"], json={"url": f"{site.url}/{names[0]}"})
    assert single.status_code == 200, single.text
    check_prediction(single.json())
    batch = post(stack["open"], json={"urls": [f"{site.url}/{n}" for n in names]})
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert len(predictions) == len(names)
    for name, prediction in zip(names, predictions, strict=True):
        upload = post(stack["gw"], files={"file": (name, (site.root / name).read_bytes())})
        assert prediction["probabilities"] == pytest.approx(upload.json()["probabilities"],
                                                            rel=1e-5, abs=1e-7)  # fmt: skip


def test_several_files_are_a_batch_in_input_order(stack, photos):
    chosen = [photos[5], photos[2], photos[9]]
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in chosen]
    batch = post(stack["gw"], files=files).json()["predictions"]
    singles = [post(stack["gw"], files={"file": (p.name, p.read_bytes())}).json() for p in chosen]
    for one, single in zip(batch, singles, strict=True):
        assert one["probabilities"] == pytest.approx(single["probabilities"], rel=1e-5, abs=1e-7)


def test_every_mini_data_photo_gets_six_probabilities(stack, mini_data):
    photos = sorted((mini_data / "images").glob("*.jpg"))
    batches = [photos[i : i + 32] for i in range(0, len(photos), 32)]

    def classify(batch):
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
        response = post(stack["gw"], files=files)
        assert response.status_code == 200, f"{[p.name for p in batch]}: {response.text}"
        return response.json()["predictions"]

    with ThreadPoolExecutor(2) as pool:
        answers = [a for batch in pool.map(classify, batches) for a in batch]
    assert len(answers) == len(photos)
    for answer in answers:
        check_prediction(answer)


def test_probabilities_equal_the_in_process_model(stack, photos):
    import tensorflow as tf

    from kitchenware.core.images import load_image

    photo = photos[7]
    answer = post(stack["gw"], files={"file": (photo.name, photo.read_bytes())}).json()
    loaded = tf.saved_model.load(str(stack["base"] / "1"))
    pixels = load_image(photo, size=TINY_SIZE)[np.newaxis]
    outputs = loaded.signatures["serving_default"](image=tf.constant(pixels))
    classes = [c.decode() for c in outputs["classes"].numpy()[0]]
    expected = dict(zip(classes, outputs["probabilities"].numpy()[0].tolist(), strict=True))
    assert answer["probabilities"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


# -- errors ---------------------------------------------------------------------------


def test_error_codes(stack):
    gw, site = stack["gw"], stack["site"]
    assert (
        error_code(post(gw, data=b"{", headers={"Content-Type": "application/json"}), 400)
        == "bad_request"
    )
    big = b"\xff\xd8" + b"\0" * (10 * 2**20)
    assert error_code(post(gw, files={"file": ("big.jpg", big)}), 413) == "too_large"
    assert error_code(post(gw, files={"file": ("a.txt", b"hello")}), 415) == "not_an_image"
    assert error_code(post(gw, json={"url": f"{site.url}/a.jpg"}), 422) == "url_refused"
    assert (
        error_code(post(stack["open"], json={"url": f"{site.url}/missing.jpg"}), 502)
        == "fetch_failed"
    )
    assert (
        error_code(post(stack["open"], json={"url": f"{site.url}/notes.txt"}), 415)
        == "not_an_image"
    )
    assert error_code(post(stack["open"], json={"url": f"{site.url}/big"}), 413) == "too_large"
    assert error_code(post(stack["open"], json={"url": f"{site.url}/slow"}), 502) == "fetch_failed"


SSRF = ["http://127.0.0.1:{port}/x.jpg", "http://localhost:{port}/x.jpg", "http://10.0.0.1/x.jpg",
        "http://169.254.169.254/latest/meta-data/", "http://[::1]:{port}/x.jpg",
        "file:///etc/passwd"]  # fmt: skip


@pytest.mark.parametrize("template", SSRF)
def test_ssrf_matrix_is_refused_by_default(stack, template):
    site = stack["site"]
    hits = site.hits
    response = post(stack["gw"], json={"url": template.format(port=site.port)})
    assert error_code(response, 422) == "url_refused"
    assert site.hits == hits  # the local site (a stand-in for internal services) saw nothing


def test_redirect_to_a_private_address_is_refused(stack):
    site = stack["site"]
    # Even with private URLs allowed, a redirect to cloud metadata is vetted and refused:
    # the server's fault, not the user's (502, issue 21; the user's own URL would be 422).
    to_metadata = f"{site.url}/redirect?to={quote('http://169.254.169.254/latest/', safe='')}"
    response = post(stack["open"], json={"url": to_metadata})
    assert error_code(response, 502) == "fetch_failed"
    assert "which is a cloud metadata address" in response.json()["error"]["message"]


def test_decompression_bomb_is_refused_with_bounded_memory(stack):
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")  # 144 Mpx, ~430 MB as RGB
    assert len(bomb.getvalue()) < 100_000
    workers = stack["strict"].worker_pids()
    before = {pid: peak_rss_kb(pid) for pid in workers}
    for _ in range(4):  # reach both workers
        response = post(stack["gw"], files={"file": ("bomb.png", bomb.getvalue())})
        assert error_code(response, 413) == "too_large"
        assert "12000x12000" in response.json()["error"]["message"]
    grown_mb = max(peak_rss_kb(pid) - before[pid] for pid in workers) / 1024
    assert grown_mb < 50, f"a worker's peak memory grew by {grown_mb:.0f} MB"


# -- health, readiness, metrics --------------------------------------------------------


def test_health_and_readiness(stack):
    assert requests.get(stack["gw"] + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(stack["gw"] + "/readyz", timeout=10)
    assert ready.status_code == 200 and "version 1" in ready.json()["reason"]


def test_metrics_count_requests_across_two_workers(stack, photos):
    assert post(stack["gw"], files={"file": ("a.jpg", photos[0].read_bytes())}).status_code == 200

    def scrape() -> str:
        return requests.get(stack["gw"] + "/metrics", timeout=5).text

    def count(text: str) -> float:
        prefix = 'gateway_requests_total{endpoint="/healthz",method="GET",status="200"}'
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = count(scrape())
    # Straight to gunicorn: the proxy passes one public-port probe at a time (it would
    # answer most of 8 concurrent ones 503 `overloaded`), and the subject is the workers.
    direct = stack["strict"].gunicorn.url
    with ThreadPoolExecutor(8) as pool:  # new connections, spread over both workers
        codes = list(pool.map(lambda _: requests.get(direct + "/healthz", timeout=5).status_code,
                              range(40)))  # fmt: skip
    assert codes == [200] * 40
    text = scrape()
    assert count(text) == before + 40
    # Both workers answered some of them, and /metrics is the sum of their own files.
    from prometheus_client.mmap_dict import MmapedDict

    per_worker = {}
    for db in (stack["work"] / "metrics").glob("counter_*.db"):
        per_worker[db.stem] = sum(
            value
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(db))
            if '"gateway_requests_total"' in key and '"/healthz"' in key and '"200"' in key
        )
    assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker
    assert sum(per_worker.values()) == count(text)
    assert "gateway_model_call_duration_seconds_count" in text
    assert 'gateway_request_duration_seconds_bucket{endpoint="/predict"' in text


# -- the model server going away, coming back, and changing version -------------------


def test_model_server_killed_then_restarted(stack, photos):
    server, gw = stack["server"], stack["gw"]
    photo = photos[0].read_bytes()
    assert post(gw, files={"file": ("a.jpg", photo)}).status_code == 200
    server.stop(signal.SIGKILL)
    try:
        started = time.monotonic()
        response = post(gw, files={"file": ("a.jpg", photo)})
        assert error_code(response, 503) == "model_unavailable"
        assert time.monotonic() - started < GRPC_TIMEOUT + 5  # answered within the deadline
        ready = requests.get(gw + "/readyz", timeout=GRPC_TIMEOUT)
        assert error_code(ready, 503) == "model_unavailable"
    finally:
        server.start()  # same port, same model folder; the gateway is not restarted
    server.wait_ready()

    def answers():
        return post(gw, files={"file": ("a.jpg", photo)}).status_code == 200

    wait_for(answers, 60, "the gateway to answer again after the restart", interval=0.5)

    # Each worker's channel reconnects on its own backoff once the port opens (the
    # restarted server, like TF Serving, listens only when ready): every worker gets there.
    def ready_everywhere():  # 6 in a row: both workers answer, whichever takes the call
        return all(requests.get(gw + "/readyz", timeout=10).status_code == 200 for _ in range(6))

    wait_for(ready_everywhere, 30, "/readyz to be 200 from every worker", interval=0.2)


def test_gateway_started_before_the_model_server_has_a_version(exported_model, tmp_path, photos):
    """Both shapes of "no model yet": a closed port (TF Serving's start-up) and NOT_FOUND."""
    base = tmp_path / "models" / "kitchenware"
    server = ModelServer(base, tmp_path, poll_seconds=0.5)
    env = {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "5"}
    gw = guarded_gateway(tmp_path, env)
    unknown = guarded_gateway(tmp_path, {**env, "MODEL_NAME": "not-loaded"})
    photo = photos[0].read_bytes()
    base.mkdir(parents=True)
    try:
        server.start().wait_polling()
        gw.start()
        assert server.ports_closed()
        assert (
            error_code(post(gw.url, files={"file": ("a.jpg", photo)}), 503) == "model_unavailable"
        )
        ready = requests.get(gw.url + "/readyz", timeout=GRPC_TIMEOUT)
        assert error_code(ready, 503) == "model_unavailable"
        assert "UNAVAILABLE" in ready.json()["error"]["message"]  # the refused connection

        staging = base.parent / ".1-staging"
        shutil.copytree(exported_model / "1", staging)
        staging.rename(base / "1")  # appears whole, as an export does
        server.wait_ready()

        def answers():
            return post(gw.url, files={"file": ("a.jpg", photo)}).status_code == 200

        wait_for(answers, 60, "the gateway to answer once the first version loaded", interval=0.5)
        assert requests.get(gw.url + "/readyz", timeout=10).status_code == 200

        # The server answers, but the gateway's model has no loaded version: NOT_FOUND for
        # Latest(not-loaded), as TF Serving answers for a model that is not loaded.
        unknown.start()
        response = post(unknown.url, files={"file": ("a.jpg", photo)})
        assert error_code(response, 503) == "model_unavailable"
        ready = requests.get(unknown.url + "/readyz", timeout=GRPC_TIMEOUT)
        assert error_code(ready, 503) == "model_unavailable"
        assert "not-loaded" in ready.json()["error"]["message"]
    finally:
        for process in (unknown, gw, server):
            process.stop()


def test_new_version_exported_while_serving(stack, photos):
    from kitchenware.export.savedmodel import export_saved_model
    from kitchenware.training.model import build_model

    model = build_model(size=TINY_SIZE, weights="none", inner=8, augment=False, seed=2)
    export_saved_model(model, stack["base"], version=2)
    photo = photos[0].read_bytes()

    def version_2():
        response = post(stack["gw"], files={"file": ("a.jpg", photo)})
        return response.status_code == 200 and response.json()["model"]["version"] == 2

    wait_for(version_2, 90, "answers from version 2", interval=0.5)
    # Both workers' clients follow (a second worker may still hold version 1's metadata).
    for _ in range(6):
        check_prediction(post(stack["gw"], files={"file": ("a.jpg", photo)}).json(), version=2)


def test_hung_model_server_is_a_504_at_the_deadline(stack, photos):
    quick = guarded_gateway(stack["work"], {"TF_SERVING_HOST": stack["server"].target,
                                            "GRPC_TIMEOUT": "2"})  # fmt: skip
    quick.start()
    server = stack["server"].proc
    photo = photos[0].read_bytes()
    try:
        assert post(quick.url, files={"file": ("a.jpg", photo)}).status_code == 200
        server.send_signal(signal.SIGSTOP)  # connected, but never answers
        try:
            response = post(quick.url, files={"file": ("a.jpg", photo)})
            assert error_code(response, 504) == "model_timeout"
        finally:
            server.send_signal(signal.SIGCONT)
        assert post(quick.url, files={"file": ("a.jpg", photo)}).status_code == 200
    finally:
        quick.stop()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.mark.browser
def test_web_page_in_headless_chromium(stack, photos, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed at /usr/bin/chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    photo = photos[3]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            external = []

            def block(route):  # record, never fetch: the page must not need the internet,
                external.append(route.request.url)  # and the browser must not reach 10.0.0.1
                route.abort()

            page.route(lambda url: not url.startswith((stack["gw"], "blob:", "data:")), block)
            page.goto(stack["gw"] + "/")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            label = page.text_content("#label")
            assert label in ("cup", "fork", "glass", "knife", "plate", "spoon")
            rows = page.locator("#bars li")
            assert rows.count() == 3
            widths = [float(w.rstrip("%")) for w in
                      page.eval_on_selector_all("#bars .bar span", "els => els.map(e => e.style.width)")]  # fmt: skip
            assert widths == sorted(widths, reverse=True) and widths[0] > 0
            assert page.text_content("#bars li .name") == label
            assert re.fullmatch(r"model kitchenware, version \d+", page.text_content("#model"))
            assert page.is_visible("#preview")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            # (the README's picture comes from devtools/screenshot_web.py with a trained model)
            shot = tmp_path / "web.png"
            page.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] == 390
            # A refused URL shows the gateway's message instead of a result.
            page.fill("#url", "http://10.0.0.1/cup.jpg")
            page.click("#url-form button")
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "private address" in page.text_content("#status")
            assert page.is_hidden("#result")
            assert [u for u in external if "10.0.0.1" not in u] == []
        finally:
            browser.close()


# -- test.py / kitchenware classify -----------------------------------------------------


def _classify(*argv: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "test.py", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_test_py_prints_label_probability_and_top3(stack, photos):
    site = stack["site"]
    url = f"{site.url}/{sorted(p.name for p in site.root.glob('*.jpg'))[0]}"
    proc = _classify(str(photos[0]), url, "--gateway", stack["open"])
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.strip().split("\n" + str(photos[0]))[0].splitlines()
    assert blocks[0].startswith(f"{photos[0]}: ") and "[model kitchenware v" in blocks[0]
    label = blocks[0].split(": ")[1].split(" (")[0]
    assert label in ("cup", "fork", "glass", "knife", "plate", "spoon")
    assert len([line for line in proc.stdout.splitlines() if line.startswith("    ")]) == 6
    assert f"{url}: " in proc.stdout


def test_test_py_exits_non_zero_with_the_gateways_message(stack):
    proc = _classify("http://10.0.0.1/cup.jpg", "--gateway", stack["gw"])
    assert proc.returncode == 1
    assert "HTTP 422" in proc.stderr and "private address" in proc.stderr
