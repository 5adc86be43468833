"""/predict and the health routes in process: Flask's test client, a fake model client.

The fake stands where the gRPC ServingClient stands (metadata / predict /
check_ready) and records what the gateway sent it, so these tests check the
gateway's own work (input forms, decoding to the model's size, the answer's
shape, error mapping, metrics) in milliseconds. The real client against a real
model server is tests/integration/test_gateway_serving.py.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from kitchenware.core.labels import CLASSES
from kitchenware.gateway import create_app
from kitchenware.gateway.config import ConfigError, Settings
from kitchenware.serving.grpc_client import (
    ModelContractError,
    ModelMetadata,
    ModelServerError,
    ModelServerTimeout,
    ModelServerUnavailable,
    Prediction,
)

SIZE = 32


def metadata(size: int = SIZE, version: int = 3) -> ModelMetadata:
    return ModelMetadata(
        name="kitchenware",
        version=version,
        signature="serving_default",
        input_name="image",
        input_dtype="uint8",
        image_size=size,
        output_names=("classes", "probabilities"),
        probabilities_output="probabilities",
        classes_output="classes",
    )


class FakeModelClient:
    """Answers like a served model whose favourite class is `best`; or fails with `error`."""

    def __init__(self, best: int = 2, error: Exception | None = None) -> None:
        self.best = best
        self.error = error
        self.meta = metadata()  # what the server serves now
        self.cached = self.meta  # what a client that has not refreshed still believes
        self.sent: list[np.ndarray] = []
        self.metadata_calls: list[bool] = []
        self.fail_next_predict: Exception | None = None

    def metadata(self, refresh: bool = False, timeout: float | None = None) -> ModelMetadata:
        self.metadata_calls.append(refresh)
        if self.error is not None:
            raise self.error
        if refresh:
            self.cached = self.meta
        return self.cached

    def predict(self, pixels: np.ndarray) -> Prediction:
        self.sent.append(pixels)
        if self.fail_next_predict is not None:
            error, self.fail_next_predict = self.fail_next_predict, None
            raise error
        if self.error is not None:
            raise self.error
        rows = np.full((len(pixels), len(CLASSES)), 0.02, dtype=np.float32)
        rows[:, self.best] = 1.0 - 0.02 * (len(CLASSES) - 1)
        return Prediction(probabilities=rows, classes=list(CLASSES), version=self.meta.version)

    def check_ready(self, timeout: float | None = None) -> tuple[bool, str]:
        if self.error is not None:
            return False, str(self.error)
        return True, f"model kitchenware version {self.meta.version} loaded"


def photo(width: int = 40, height: int = 30, fmt: str = "JPEG", colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def model() -> FakeModelClient:
    return FakeModelClient()


@pytest.fixture
def client(model, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(Settings(max_batch=4, max_image_bytes=200_000), model_client=model)
    return app.test_client()


def test_one_upload_answers_one_prediction_in_the_documented_shape(client, model):
    response = client.post("/predict", data=photo(), content_type="image/jpeg")
    assert response.status_code == 200
    answer = response.get_json()
    assert list(answer) == ["label", "probability", "probabilities", "model"]
    assert answer["label"] == CLASSES[model.best]
    assert answer["probability"] == pytest.approx(0.9)
    assert list(answer["probabilities"]) == list(CLASSES)
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
    assert answer["model"] == {"name": "kitchenware", "version": 3}


def test_pixels_are_resized_to_the_size_the_model_declares(client, model):
    assert (
        client.post("/predict", data=photo(400, 300), content_type="image/png").status_code == 200
    )
    (sent,) = model.sent
    assert sent.dtype == np.uint8 and sent.shape == (1, SIZE, SIZE, 3)
    assert [int(v) for v in sent[0, SIZE // 2, SIZE // 2]] == pytest.approx([200, 30, 30], abs=3)


@pytest.mark.parametrize("form", ["images", "multipart"])
def test_a_batch_answers_predictions_in_request_order(client, model, form):
    images = [photo(colour=(i * 40, 0, 0)) for i in range(3)]
    if form == "images":
        body = {"images": [base64.b64encode(data).decode() for data in images]}
        response = client.post("/predict", json=body)
    else:
        files = [(io.BytesIO(data), f"{i}.jpg") for i, data in enumerate(images)]
        response = client.post("/predict", data={"file": files}, content_type="multipart/form-data")
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 3 and len(model.sent) == 1 and len(model.sent[0]) == 3
    reds = [int(model.sent[0][i, 0, 0, 0]) for i in range(3)]
    assert reds == sorted(reds) and reds[0] < reds[2]


def test_a_data_url_prefix_is_accepted(client):
    encoded = "data:image/png;base64," + base64.b64encode(photo(fmt="PNG")).decode()
    assert client.post("/predict", json={"image": encoded}).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"nothing": 1}}, 400, "bad_request"),
        ({"json": {"image": "not base64!"}}, 400, "bad_request"),
        ({"json": {"images": []}}, 400, "bad_request"),
        ({"data": b"plain words", "content_type": "text/plain"}, 400, "bad_request"),
        ({"data": b"", "content_type": "image/jpeg"}, 400, "bad_request"),
        ({"data": b"GIF89a but not really", "content_type": "image/gif"}, 415, "not_an_image"),
        ({"data": b"x" * 200_001, "content_type": "image/jpeg"}, 413, "too_large"),
    ],
    ids=["unknown-key", "bad-base64", "empty-list", "text", "empty-body", "fake-gif", "too-big"],
)
def test_bad_requests_get_the_documented_error_and_never_reach_the_model(
    client, model, kwargs, status, code
):
    response = client.post("/predict", **kwargs)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    assert model.sent == []


def test_more_images_than_max_batch_are_refused(client, model):
    body = {"images": [base64.b64encode(photo()).decode()] * 5}
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == (
        "more than 4 images in one request; the limit is 4"
    )
    assert model.sent == []


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(model, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(Settings(max_image_pixels=1000), model_client=model)
    response = app.test_client().post("/predict", data=photo(50, 50), content_type="image/jpeg")
    assert response.status_code == 413
    assert "2,500 pixels" in response.get_json()["error"]["message"]
    assert model.sent == []


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ModelServerUnavailable("connection refused"), 503, "model_unavailable"),
        (ModelServerTimeout("deadline exceeded"), 504, "model_timeout"),
        (ModelServerError("INVALID_ARGUMENT: bad"), 502, "model_server_error"),
        (ModelContractError("no probabilities output"), 502, "model_server_error"),
    ],
    ids=["unavailable", "timeout", "server-error", "contract"],
)
def test_model_server_failures_map_to_documented_gateway_errors(client, model, error, status, code):
    model.error = error
    response = client.post("/predict", data=photo(), content_type="image/jpeg")
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert str(error) in response.get_json()["error"]["message"]


def test_a_failed_predict_refreshes_the_metadata_and_retries_at_the_new_size(client, model):
    assert client.post("/predict", data=photo(), content_type="image/jpeg").status_code == 200
    model.meta = metadata(size=48, version=4)  # a new version with another input size
    model.fail_next_predict = ModelServerError("INVALID_ARGUMENT: expected 48x48")
    response = client.post("/predict", data=photo(), content_type="image/jpeg")
    assert response.status_code == 200
    assert response.get_json()["model"]["version"] == 4
    assert [sent.shape[1] for sent in model.sent] == [SIZE, SIZE, 48]
    assert model.metadata_calls[-1] is True


def test_readyz_follows_the_model_and_healthz_does_not(client, model):
    assert client.get("/readyz").status_code == 200
    assert "version 3" in client.get("/readyz").get_json()["reason"]
    model.error = ModelServerUnavailable("no route")
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.get_json()["error"] == {"code": "model_unavailable", "message": "no route"}
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_metrics_count_requests_by_status_and_images_classified(client):
    client.post("/predict", json={"images": [base64.b64encode(photo()).decode()] * 2})
    client.post("/predict", json={"nothing": 1})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'gateway_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert 'gateway_requests_total{endpoint="/predict",method="POST",status="400"} 1.0' in text
    assert "gateway_images_classified_total 2.0" in text


def test_every_answer_carries_the_security_headers(client):
    for response in (client.get("/healthz"), client.post("/predict", json={})):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_unknown_routes_and_methods_answer_json(client):
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    assert wrong.get_json()["error"]["code"] == "method_not_allowed"


def test_bombs_are_bounded_or_refused_and_never_reach_the_model(client, model):
    from devtools.bombs import animated_webp, gif_screen

    assert client.post("/predict", data=gif_screen(), content_type="image/gif").status_code == 200
    refused = client.post("/predict", data=animated_webp(), content_type="image/webp")
    assert refused.status_code == 413
    assert "MAX_DECODE_BYTES" in refused.get_json()["error"]["message"]
    assert len(model.sent) == 1  # the GIF only


@pytest.mark.parametrize(
    "taken, message",
    [
        (0, "too many large requests in this worker"),  # no room to read the body
        (len(photo()), "too many large images being decoded"),  # room for the body only
    ],
)
def test_a_worker_whose_memory_budget_stays_full_answers_503_overloaded(
    model, monkeypatch, taken, message
):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    settings = Settings(max_decode_bytes=2**20, max_image_bytes=2**20, grpc_timeout=0.2)
    app = create_app(settings, model_client=model)
    budget = app.extensions["kitchenware_gateway"].memory
    # Other threads' bodies and decodes, still running, leave `taken` bytes free.
    with budget.reserve(budget.total - taken, timeout=0):
        busy = app.test_client().post("/predict", data=photo(), content_type="image/jpeg")
    assert busy.status_code == 503
    assert busy.get_json()["error"]["code"] == "overloaded"
    assert message in busy.get_json()["error"]["message"]
    assert budget.in_use == 0  # everything the refused request held is given back
    ok = app.test_client().post("/predict", data=photo(), content_type="image/jpeg")
    assert ok.status_code == 200


def test_a_worker_must_be_able_to_hold_one_image():
    with pytest.raises(ConfigError, match="MAX_DECODE_BYTES=1048576 is not valid"):
        Settings(max_decode_bytes=2**20, max_image_bytes=2**21)


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body of (field, filename or None for a text value, data) parts."""
    boundary = "kitchenware-test-boundary"
    body = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_file_field_sent_as_text_is_told_to_be_a_file_upload(client, model):
    body, content_type = multipart(("file", None, b"not sent as a file"))
    response = client.post("/predict", data=body, content_type=content_type)
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "not a file upload" in message and "file=@" in message
    assert model.sent == []


@pytest.mark.parametrize(
    "filename", ["../../x.jpg", "/etc/passwd", "..\\..\\x.jpg", "C:\\photos\\x.jpg", "", "a" * 5000]
)
def test_a_file_upload_is_a_file_whatever_its_filename(client, model, filename):
    """Issue 21 reported `filename="../../x.jpg"` refused as a text value (not reproduced
    with werkzeug 3.1.9): the name is only a label, never a path, and is shortened."""
    body, content_type = multipart(("file", filename, photo()))
    response = client.post("/predict", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(model.sent) == 1
    empty, content_type = multipart(("file", filename, b""))
    message = client.post("/predict", data=empty, content_type=content_type).get_json()
    assert message["error"]["message"].endswith(" is empty")
    assert len(message["error"]["message"]) < 200


def test_other_form_fields_are_named_when_file_is_missing(client):
    body, content_type = multipart(("photo", "a.jpg", photo()), ("note", None, b"hi"))
    response = client.post("/predict", data=body, content_type=content_type)
    assert response.status_code == 400
    assert "(found: note, photo)" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "parts",
    [[("file", None, b"x" * 600_000)], [("note", None, b"x")] * 1_001],
    ids=["text-field-over-MAX_FORM_MEMORY_SIZE", "more-than-MAX_FORM_PARTS"],
)
def test_form_limits_answer_413_naming_the_form_limits_not_the_body_limit(client, parts):
    body, content_type = multipart(*parts)
    response = client.post("/predict", data=body, content_type=content_type)
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "too_large"
    assert "500,000 bytes" in error["message"] and "1,000 parts" in error["message"]
    assert "request body" not in error["message"]


def test_a_body_over_the_request_limit_still_names_the_body_limit(model, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(Settings(max_request_bytes=100_000), model_client=model)
    body, content_type = multipart(("file", "a.jpg", b"x" * 200_000))
    response = app.test_client().post("/predict", data=body, content_type=content_type)
    assert response.status_code == 413
    assert "limit of 100,000 bytes" in response.get_json()["error"]["message"]


def test_a_body_shorter_than_its_content_length_is_a_400(client, model):
    # As gunicorn passes it: the length it announced, its input marked as terminated.
    response = client.post(
        "/predict",
        input_stream=io.BytesIO(photo()[:100]),
        content_type="image/jpeg",
        environ_overrides={"CONTENT_LENGTH": "5000", "wsgi.input_terminated": True},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("the request body ended early")
    assert model.sent == []


def test_a_url_whose_server_redirects_to_an_unparsable_location_is_a_json_502(model, monkeypatch):
    """Issue 21: `Location: http://[::1` made urljoin raise ValueError, answered 500."""
    from support.hostile import RedirectServer

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    settings = Settings(max_batch=4, max_image_bytes=200_000, allow_private_urls=True)
    client = create_app(settings, model_client=model).test_client()
    with RedirectServer(b"http://[::1") as server:
        response = client.post("/predict", json={"url": server.url})
    assert response.status_code == 502, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "fetch_failed"
    assert "unusable Location 'http://[::1': Invalid IPv6 URL" in error["message"]
    assert model.sent == []


def test_a_url_download_waits_for_room_for_the_largest_image(model, monkeypatch):
    """A batch of URLs used to hold up to MAX_BATCH x MAX_IMAGE_BYTES unaccounted: each
    download now holds the largest image in the worker's budget while it runs."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    settings = Settings(max_decode_bytes=2**20, max_image_bytes=2**20, grpc_timeout=0.2,
                        allow_private_urls=True)  # fmt: skip
    app = create_app(settings, model_client=model)
    budget = app.extensions["kitchenware_gateway"].memory
    with budget.reserve(budget.total // 2, timeout=0):  # half the budget held elsewhere
        busy = app.test_client().post("/predict", json={"url": "http://127.0.0.1:9/a.jpg"})
    assert busy.status_code == 503, busy.get_data(as_text=True)
    assert "too many downloads in this worker" in busy.get_json()["error"]["message"]
    assert budget.in_use == 0 and model.sent == []
