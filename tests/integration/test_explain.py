"""The `explain` signature end to end: the export's maps against an independent reference,
TTA, our model server over gRPC and REST (as TF Serving answers a named signature),
the gateway's POST /explain under gunicorn, `test.py --explain`, and the clear 501
when the served version predates `explain`.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
import requests
from PIL import Image
from support.paths import REPO, TINY_SIZE, guarded_gateway
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from devtools.stack import ModelServer, PhotoServer, wait_for
from kitchenware.core.contract import EXPLAIN_SIGNATURE, SIGNATURE
from kitchenware.core.labels import CLASSES
from kitchenware.serving.grpc_client import ExplainUnsupported, ServingClient

pytestmark = pytest.mark.slow
TIMEOUT = 60


def pixels(n: int, seed: int = 0, size: int = TINY_SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def keras_model(tiny_run):
    """The session's tiny trained MobileNetV2 (conftest.tiny_run; its augmentation is
    inactive at inference, and the export drops it)."""
    return tiny_run.model


@pytest.fixture(scope="module")
def exports(keras_model, tmp_path_factory):
    """The model exported plain and with --tta flip, loaded back with TensorFlow."""
    import tensorflow as tf

    from kitchenware.export.savedmodel import export_saved_model

    base = tmp_path_factory.mktemp("explain-export")
    folders = {
        tta: export_saved_model(keras_model, base / tta, tta=tta) for tta in ("none", "flip")
    }
    return {tta: tf.saved_model.load(str(folder)).signatures for tta, folder in folders.items()}


def reference_maps(model, images: np.ndarray) -> np.ndarray:
    """Grad-CAM computed another way: one eager gradient per class with respect to the
    pooled features (the head after the pool is all that depends on them), each weight
    the pooled gradient spread evenly over the grid's cells, as global average pooling
    spreads it."""
    import keras
    import tensorflow as tf

    from kitchenware.training.model import POOL_LAYER

    pool = model.get_layer(POOL_LAYER)
    features = keras.Model(model.input, pool.input)(images, training=False).numpy()
    after = model.layers[model.layers.index(pool) + 1 :]
    cells = features.shape[1] * features.shape[2]
    maps = np.zeros((len(images), len(CLASSES), *features.shape[1:3]), np.float32)
    for k in range(len(CLASSES)):
        pooled = tf.constant(features.mean(axis=(1, 2)))
        with tf.GradientTape() as tape:
            tape.watch(pooled)
            x = pooled
            for layer in after:
                x = layer(x, training=False)
            score = tf.reduce_sum(x[:, k])
        weights = tape.gradient(score, pooled).numpy() / cells  # d score / d A_ijc, any cell
        cam = np.maximum(np.einsum("bhwc,bc->bhw", features, weights), 0)
        peak = cam.max(axis=(1, 2), keepdims=True)
        maps[:, k] = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
    return maps


def test_explain_is_serving_default_plus_maps_that_match_a_reference(keras_model, exports):
    import tensorflow as tf

    images = pixels(4, seed=5)
    signatures = exports["none"]
    assert sorted(signatures) == [EXPLAIN_SIGNATURE, SIGNATURE]
    spec = signatures[EXPLAIN_SIGNATURE].structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, TINY_SIZE, TINY_SIZE, 3]
    served = {k: v.numpy() for k, v in signatures[EXPLAIN_SIGNATURE](image=images).items()}
    plain = signatures[SIGNATURE](image=images)
    assert sorted(served) == ["classes", "heatmap", "heatmaps", "probabilities"]
    np.testing.assert_allclose(served["probabilities"], plain["probabilities"].numpy(), atol=1e-6)
    assert (served["classes"].astype(str) == np.asarray(CLASSES)).all()

    heatmaps, heatmap = served["heatmaps"], served["heatmap"]
    grid = heatmap.shape[1:]
    assert heatmaps.shape == (4, len(CLASSES), *grid) and heatmaps.dtype == np.float32
    assert grid == (3, 3)  # MobileNetV2's last feature grid at 71 px
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    peaks = heatmaps.max(axis=(2, 3))
    assert np.all((np.abs(peaks - 1) < 1e-6) | (peaks == 0))  # normalised, or nothing spoke
    top = served["probabilities"].argmax(axis=1)
    np.testing.assert_array_equal(heatmap, heatmaps[np.arange(4), top])
    expected = reference_maps(keras_model, images)
    np.testing.assert_allclose(heatmaps, expected, atol=2e-4)
    assert len({m.tobytes() for m in heatmaps.reshape(-1, *grid)}) > len(CLASSES)  # maps differ


def test_tta_keeps_serving_default_and_its_maps_are_mirror_symmetric(exports):
    images = pixels(2, seed=7)
    mirrored = images[:, :, ::-1].copy()
    flip = exports["flip"]
    served = flip[EXPLAIN_SIGNATURE](image=images)
    np.testing.assert_allclose(
        served["probabilities"].numpy(), flip[SIGNATURE](image=images)["probabilities"].numpy(),
        atol=1e-6,
    )  # fmt: skip
    # Averaged over image and mirror, the explanation of the mirror is the mirrored explanation.
    of_mirror = flip[EXPLAIN_SIGNATURE](image=mirrored)
    np.testing.assert_allclose(
        of_mirror["heatmaps"].numpy(), served["heatmaps"].numpy()[..., ::-1], atol=1e-4
    )
    plain = exports["none"][EXPLAIN_SIGNATURE](image=images)["heatmaps"].numpy()
    assert not np.allclose(plain, served["heatmaps"].numpy(), atol=1e-3)  # TTA changed the maps


# -- the model server: a named signature over gRPC and REST, and its warm-up ------------


def old_export(base, size: int = TINY_SIZE, version: int = 2):
    """A version as exported before `explain` existed: serving_default only."""
    import tensorflow as tf

    from kitchenware.export.savedmodel import serving_function, write_warmup
    from kitchenware.training.model import build_model, inference_model

    model = inference_model(build_model(size=size, weights="none", inner=8, augment=False))
    module = tf.Module()
    module.model, module.serve = model, serving_function(model)
    staging = base / f".{version}-staging"
    tf.saved_model.save(module, str(staging), signatures={SIGNATURE: module.serve})
    write_warmup(staging, size, signatures=(SIGNATURE,))
    staging.rename(base / str(version))


@pytest.fixture(scope="module")
def stack(exported_model, sample_photos, tmp_path_factory):
    """Model server (REST on) on a private copy of the export; a gunicorn gateway.

    The server's default backend (auto: OpenVINO for this export, whose signatures all
    carry IR); OpenVINO's explain against TensorFlow's is also in test_openvino_backend.py."""
    work = tmp_path_factory.mktemp("explain-stack")
    base = work / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    site_root = work / "site"
    site_root.mkdir()
    shutil.copy(sample_photos[0], site_root / "photo.jpg")
    server = ModelServer(base, work, poll_seconds=0.5)
    gateway = guarded_gateway(work, {"TF_SERVING_HOST": f"127.0.0.1:{server.port}",
                                     "GRPC_TIMEOUT": "30", "ALLOW_PRIVATE_URLS": "true",
                                     "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")},
                              threads=8)  # fmt: skip
    # 8 threads: the proxy then passes 5 requests at once (3 kept for probes), so the
    # page's HTML, app.js and style.css, fetched together, are not shed as overload.
    (work / "metrics").mkdir()
    try:
        server.start(wait=True)
        gateway.start()
        gateway.wait_ready()
        with PhotoServer(site_root) as site:
            yield {"server": server, "gw": gateway.url, "base": base, "site": site}
    finally:
        gateway.stop()
        server.stop()


def test_grpc_predict_with_signature_name_explain_answers_like_the_savedmodel(
    stack, exported_model
):
    import tensorflow as tf

    images = pixels(2, seed=11)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kitchenware"
    request.model_spec.signature_name = EXPLAIN_SIGNATURE
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    with grpc.insecure_channel(stack["server"].target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=TIMEOUT)
        request.output_filter.append("heatmap")
        filtered = stub.Predict(request, timeout=TIMEOUT)
    assert response.model_spec.signature_name == EXPLAIN_SIGNATURE
    assert sorted(response.outputs) == ["classes", "heatmap", "heatmaps", "probabilities"]
    assert sorted(filtered.outputs) == ["heatmap"]
    expected = tf.saved_model.load(str(exported_model / "1")).signatures[EXPLAIN_SIGNATURE](
        image=tf.constant(images)
    )
    got = {name: tf.make_ndarray(response.outputs[name]) for name in response.outputs}
    if stack["server"].model_status_backends() == {1: "tensorflow"}:
        for name in ("probabilities", "heatmap", "heatmaps"):
            np.testing.assert_allclose(got[name], expected[name].numpy(), atol=1e-5)
    else:  # OpenVINO in bf16: probabilities within its tolerance, maps by shape and range
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=0.02)
        for name in ("heatmap", "heatmaps"):
            assert got[name].shape == expected[name].shape
            assert np.all((got[name] >= 0) & (got[name] <= 1 + 1e-3))
    stats = stack["server"].wait_stats(lambda s: s.get("serving_versions") == [1])
    assert stats["warmup"]["1"]["records"] == 2  # serving_default's and explain's replayed


def test_rest_predict_with_signature_name_explain(stack):
    image = pixels(1, seed=12)[0].tolist()
    url = f"http://127.0.0.1:{stack['server'].rest_port}/v1/models/kitchenware:predict"
    body = json.dumps({"signature_name": EXPLAIN_SIGNATURE, "instances": [image]}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=TIMEOUT) as r:
        answer = json.loads(r.read())
    row = answer["predictions"][0]
    assert set(row) == {"classes", "heatmap", "heatmaps", "probabilities"}
    heatmap = np.asarray(row["heatmap"])
    assert heatmap.shape == (3, 3) and 0 <= heatmap.min() and heatmap.max() <= 1
    assert np.asarray(row["heatmaps"]).shape == (6, 3, 3)


def test_client_explain_returns_prediction_and_map(stack):
    with ServingClient(stack["server"].target, timeout=TIMEOUT) as client:
        assert EXPLAIN_SIGNATURE in client.metadata().signatures
        found = client.explain(pixels(1, seed=13))
    assert found.prediction.probabilities.shape == (1, 6)
    assert found.prediction.classes == list(CLASSES)
    assert found.heatmap.shape == (1, 3, 3) and found.heatmap.max() <= 1


# -- the gateway -----------------------------------------------------------------------


def explain(gw: str, **kwargs) -> requests.Response:
    return requests.post(gw + "/explain", timeout=TIMEOUT + 30, **kwargs)


def check_explanation(answer: dict) -> Image.Image:
    assert {"label", "probability", "probabilities", "model", "explanation"} <= set(answer)
    found = answer["explanation"]
    assert found["method"] == "grad-cam" and found["label"] == answer["label"]
    grid = np.asarray(found["heatmap"])
    assert list(grid.shape) == found["grid_size"] == [3, 3]
    assert grid.min() >= 0 and grid.max() <= 1
    overlay = Image.open(io.BytesIO(base64.b64decode(found["overlay_png"])))
    assert overlay.format == "PNG" and overlay.mode == "RGB"
    return overlay


def test_gateway_explains_an_upload_base64_and_a_url(stack, sample_photos):
    photo = sample_photos[0]
    data = photo.read_bytes()
    with photo.open("rb") as fh:
        upload = explain(stack["gw"], files={"file": (photo.name, fh, "image/jpeg")})
    as_json = explain(stack["gw"], json={"image": base64.b64encode(data).decode()})
    by_url = explain(stack["gw"], json={"url": f"{stack['site'].url}/photo.jpg"})
    for response in (upload, as_json, by_url):
        assert response.status_code == 200, response.text
    answers = [r.json() for r in (upload, as_json, by_url)]
    overlay = check_explanation(answers[0])
    assert answers[0] == answers[1] == answers[2]  # same photo, same answer
    width, height = Image.open(photo).size
    assert abs(overlay.width / overlay.height - width / height) < 0.02  # the photo's own shape
    # The prediction part is exactly what /predict answers.
    predicted = requests.post(stack["gw"] + "/predict", data=data, timeout=TIMEOUT,
                              headers={"Content-Type": "image/jpeg"}).json()  # fmt: skip
    assert {k: answers[0][k] for k in predicted} == predicted
    # The overlay shows the photo: not a flat colour, and not the photo unchanged.
    photo_pixels = np.asarray(Image.open(photo).convert("RGB").resize(overlay.size), float)
    drawn = np.asarray(overlay, float)
    assert drawn.std() > 5 and np.abs(drawn - photo_pixels).mean() > 2


def test_gateway_explain_refuses_what_predict_refuses(stack, sample_photos):
    data = sample_photos[0].read_bytes()
    two = explain(stack["gw"], json={"images": [base64.b64encode(data).decode()] * 2})
    assert two.status_code == 400 and "one image per request" in two.json()["error"]["message"]
    not_image = explain(stack["gw"], data=b"not an image", headers={"Content-Type": "image/jpeg"})
    assert not_image.status_code == 415 and not_image.json()["error"]["code"] == "not_an_image"
    empty = explain(stack["gw"], json={})
    assert empty.status_code == 400
    metrics = requests.get(stack["gw"] + "/metrics", timeout=TIMEOUT).text
    assert 'gateway_requests_total{endpoint="/explain",method="POST",status="415"}' in metrics
    assert "gateway_explain_overlay_duration_seconds_count" in metrics


def test_test_py_explain_saves_the_overlay_next_to_the_photo(stack, sample_photos, tmp_path):
    photo = tmp_path / "mug.jpg"
    shutil.copy(sample_photos[1], photo)
    done = subprocess.run(
        [sys.executable, "test.py", str(photo), "--explain", "--gateway", stack["gw"]],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "mug.explain.png"
    assert f"overlay saved to {saved}" in done.stdout
    assert Image.open(saved).format == "PNG"


# -- the web page ------------------------------------------------------------------------


@pytest.mark.browser
def test_the_page_shows_the_overlay_beside_the_photo_after_why(stack, sample_photos, tmp_path):
    from support.browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed at /usr/bin/chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    gw = stack["gw"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            outside = []
            page.route(lambda url: not url.startswith((gw, "blob:", "data:")),
                       lambda route: (outside.append(route.request.url), route.abort()))  # fmt: skip
            page.goto(gw + "/")
            assert page.is_hidden("#why-panel")
            page.set_input_files("#file", str(sample_photos[2]))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            label = page.text_content("#label")
            page.click("#why")
            page.wait_for_selector("#why-panel:not([hidden])", timeout=60_000)
            page.wait_for_function("document.getElementById('overlay').complete", timeout=10_000)
            natural = page.eval_on_selector("#overlay", "e => [e.naturalWidth, e.naturalHeight]")
            assert natural[0] > 0 and natural[1] > 0
            assert f"“{label}”" in page.text_content("#why-caption")
            photo_box = page.locator("#why-photo").bounding_box()
            box = page.locator("#overlay").bounding_box()
            assert box["width"] > 50 and box["x"] > photo_box["x"]  # beside the photo
            shot = tmp_path / "why.png"
            page.screenshot(path=str(shot), full_page=True)
            background = np.asarray([0xF6, 0xF7, 0xF9], float)
            card = np.asarray([255, 255, 255], float)
            pixels_ = np.asarray(Image.open(shot).convert("RGB"), float)
            region = pixels_[int(box["y"]) : int(box["y"] + box["height"]),
                             int(box["x"]) : int(box["x"] + box["width"])]  # fmt: skip
            off_page = np.minimum(
                np.abs(region - background).sum(-1), np.abs(region - card).sum(-1)
            )
            assert (off_page > 30).mean() > 0.5  # the overlay is drawn, not page background
            # A new photo hides the previous explanation.
            page.set_input_files("#file", str(sample_photos[3]))
            page.wait_for_selector("#why-panel", state="hidden", timeout=60_000)
            assert outside == []
        finally:
            browser.close()


# -- last: rolls the served model back to a version without explain ---------------------


def test_a_version_without_explain_gets_a_clear_501_not_a_500(stack, sample_photos):
    """Roll the model back to an export made before `explain`: /predict still works,
    /explain says why it cannot, and the client raises ExplainUnsupported."""
    old_export(stack["base"], version=2)
    server = stack["server"]
    server.wait_stats(lambda s: s.get("serving_versions") == [2], timeout=120)
    with ServingClient(server.target, timeout=TIMEOUT) as client:
        wait_for(lambda: client.metadata(refresh=True).version == 2, 60, "version 2 served")
        with pytest.raises(ExplainUnsupported, match="no 'explain' signature"):
            client.explain(pixels(1))
    data = sample_photos[0].read_bytes()
    headers = {"Content-Type": "image/jpeg"}

    def answered_by_v2() -> bool:
        response = requests.post(stack["gw"] + "/predict", data=data, headers=headers, timeout=60)
        return response.status_code == 200 and response.json()["model"]["version"] == 2

    wait_for(answered_by_v2, 60, "the gateway to use version 2")
    response = explain(stack["gw"], data=data, headers=headers)
    assert response.status_code == 501, response.text
    error = response.json()["error"]
    assert error["code"] == "explain_unsupported" and "export it again" in error["message"]
