"""The Flask application: POST /predict and /explain, health checks, metrics and the web page.

`create_app()` builds one app from `Settings`; gunicorn imports it from the
top-level `gateway.py`. The gRPC client is created lazily, once per process,
after gunicorn has forked its workers (a gRPC channel must not cross a fork).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from kitchenware.core.contract import DEFAULT_IMAGE_SIZE
from kitchenware.core.errors import ImageError, ImageTooLarge, KitchenwareError
from kitchenware.core.images import decode_estimate, image_size, load_image
from kitchenware.gateway import errors
from kitchenware.gateway.budget import BudgetExhausted, MemoryBudget, Reservation
from kitchenware.gateway.config import Settings
from kitchenware.gateway.fetch import UrlFetcher
from kitchenware.gateway.inputs import (
    ImageInput,
    ParsedRequest,
    RequestLimits,
    body_memory,
    parse_predict_request,
)
from kitchenware.gateway.metrics import GatewayMetrics
from kitchenware.gateway.overlay import overlay_png, photo_size

log = logging.getLogger("kitchenware.gateway")

# Used only if a model declares no fixed input size (ours always declares one).
MAX_PARALLEL_DOWNLOADS = 8
READY_TIMEOUT_S = 3.0
# Metric label values must come from a fixed set: any other method a client invents
# is counted as "other", so it cannot grow the metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Everything the page needs comes from this server; previews may show any image.
    "Content-Security-Policy": (
        "default-src 'self'; img-src * data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
}


class ClientProvider:
    """One ServingClient per process, created on first use (so after gunicorn's fork).

    `fixed` replaces it with a given client (anything with ServingClient's
    metadata / predict / check_ready): the in-process tests use a fake one.
    """

    def __init__(self, settings: Settings, fixed=None) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client = fixed
        self._fixed = fixed is not None
        self._pid: int | None = None

    def get(self):
        if self._fixed:
            return self._client
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                from kitchenware.serving.grpc_client import ServingClient

                self._client = ServingClient(
                    target=self.settings.tf_serving_host,
                    model_name=self.settings.model_name,
                    timeout=self.settings.grpc_timeout,
                    max_message_bytes=self.settings.grpc_max_message_bytes,
                )
                self._pid = os.getpid()
            return self._client


class Gateway:
    """What one app instance needs to answer requests."""

    def __init__(self, settings: Settings, model_client=None) -> None:
        self.settings = settings
        self.clients = ClientProvider(settings, model_client)
        self.metrics = GatewayMetrics()
        # Bodies, downloads and decodes of this worker's requests, together.
        self.memory = MemoryBudget(settings.max_decode_bytes)
        self.limits = RequestLimits(
            settings.max_batch, settings.max_image_bytes, settings.max_request_bytes
        )
        self.fetcher = UrlFetcher(
            timeout=settings.url_fetch_timeout,
            max_bytes=settings.max_image_bytes,
            allow_private=settings.allow_private_urls,
        )

    # -- model server calls, with its errors mapped to HTTP ones ---------------

    def call_model(self, what, *args, **kwargs):
        from kitchenware.serving.grpc_client import (
            ExplainUnsupported,
            ModelServerError,
            ModelServerTimeout,
            ModelServerUnavailable,
        )

        try:
            return what(*args, **kwargs)
        except ExplainUnsupported as exc:
            raise errors.ExplainUnsupported(str(exc)) from None
        except ModelServerUnavailable as exc:
            raise errors.ModelUnavailable(f"model server unavailable: {exc}") from None
        except ModelServerTimeout as exc:
            raise errors.ModelTimeout(
                f"model server did not answer within {self.settings.grpc_timeout:g} s: {exc}"
            ) from None
        except ModelServerError as exc:
            raise errors.ModelServerFailed(f"model server error: {exc}") from None
        except KitchenwareError as exc:  # e.g. the served contract changed under the client
            raise errors.ModelServerFailed(f"model server error: {exc}") from None

    def image_size(self, refresh: bool = False) -> int:
        meta = self.call_model(self.clients.get().metadata, refresh=refresh)
        return meta.image_size or DEFAULT_IMAGE_SIZE

    # -- reading a request, inside the worker's memory budget -----------------------

    @contextmanager
    def parsed(self, request) -> Iterator[tuple[ParsedRequest, Reservation]]:
        """The request's images, parsed once what its body can hold is reserved in the
        worker's budget; the reservation (shrunk to the images' bytes) lasts the block."""
        needed = body_memory(request, self.limits)
        if needed > self.memory.total:
            raise errors.TooLarge(
                f"reading this {request.content_length or 'chunked'}-byte body could take "
                f"~{needed / 2**20:,.0f} MiB; the limit is {self.memory.total / 2**20:,.0f} MiB "
                "(MAX_DECODE_BYTES)"
            )
        try:
            reservation = self.memory.reserve(needed, timeout=self.settings.grpc_timeout)
        except BudgetExhausted as exc:
            raise errors.Overloaded(f"too many large requests in this worker: {exc}") from None
        with reservation:
            parsed = parse_predict_request(request, self.limits)
            reservation.give_back(reservation.nbytes - parsed.held_bytes)
            yield parsed, reservation

    # -- /predict ----------------------------------------------------------------

    def predict(self, items: list[ImageInput], reservation: Reservation) -> list[dict]:
        # URLs are vetted before the model server is asked anything.
        raw = self.download(items, reservation)
        self.check_headers(items, raw)  # so is every image's format and pixel count
        prediction, _ = self.at_served_size(items, raw, self.timed_predict)
        self.metrics.images.inc(len(items))
        return [self.answer(row, prediction) for row in prediction.probabilities]

    def at_served_size(self, items: list[ImageInput], raw: list[bytes], call):
        """(call(pixels), pixels) with the images decoded at the served version's size.

        When the call fails and the served version now declares another size (a new
        version), decode again at that size and retry once."""
        size = self.image_size()
        pixels = self.decode(items, raw, size)
        try:
            return call(pixels), pixels
        except errors.ModelServerFailed:
            new_size = self.image_size(refresh=True)
            if new_size != size:
                pixels = self.decode(items, raw, new_size)
            return call(pixels), pixels

    def timed_predict(self, pixels: np.ndarray):
        return self.timed_call("predict", pixels, self.metrics.model_seconds)

    def timed_call(self, method: str, pixels: np.ndarray, histogram):
        """The client's `method` on `pixels`, its time observed in `histogram`."""
        started = time.perf_counter()
        try:
            return self.call_model(getattr(self.clients.get(), method), pixels)
        finally:
            histogram.observe(time.perf_counter() - started)

    # -- /explain ----------------------------------------------------------------

    def explain(self, item: ImageInput, reservation: Reservation) -> dict:
        """The prediction for one image plus its Grad-CAM map: raw grid and PNG overlay."""
        raw = self.download([item], reservation)
        self.check_headers([item], raw)
        explanation, pixels = self.at_served_size([item], raw, self.timed_explain)
        prediction = explanation.prediction
        answer = self.answer(prediction.probabilities[0], prediction)
        heatmap = explanation.heatmap[0]
        started = time.perf_counter()
        try:
            png = overlay_png(pixels[0], heatmap, photo_size(raw[0]))
        except ValueError as exc:  # a map with NaNs or no cells: the model's fault
            raise errors.ModelServerFailed(
                f"model server sent an unusable heatmap: {exc}"
            ) from None
        finally:
            self.metrics.overlay_seconds.observe(time.perf_counter() - started)
        self.metrics.images_explained.inc()
        answer["explanation"] = {
            "method": "grad-cam",
            "label": answer["label"],
            "grid_size": list(heatmap.shape),
            "heatmap": np.round(heatmap.astype(float), 4).tolist(),
            "overlay_png": base64.b64encode(png).decode("ascii"),
        }
        return answer

    def timed_explain(self, pixels: np.ndarray):
        return self.timed_call("explain", pixels, self.metrics.explain_model_seconds)

    def download(self, items: list[ImageInput], reservation: Reservation) -> list[bytes]:
        """Each item's bytes, URLs fetched (in parallel for a batch); each download holds
        the largest image allowed in `reservation` while it runs, then what it got."""
        limit = self.settings.max_image_bytes

        def get(item: ImageInput) -> bytes:
            if item.data is not None:
                return item.data
            try:
                reservation.grow(limit, timeout=self.settings.grpc_timeout)
            except BudgetExhausted as exc:
                raise errors.Overloaded(f"too many downloads in this worker: {exc}") from None
            data = b""
            try:
                data = self.fetcher.fetch(item.url)
                return data
            except errors.GatewayError as exc:
                raise type(exc)(f"{item.label}: {exc.message}") from None
            finally:
                reservation.give_back(limit - len(data))

        urls = sum(item.url is not None for item in items)
        if urls <= 1:
            return [get(item) for item in items]
        with ThreadPoolExecutor(min(urls, MAX_PARALLEL_DOWNLOADS)) as pool:
            return list(pool.map(get, items))

    def check_headers(self, items: list[ImageInput], raw: list[bytes]) -> None:
        """Refuse non-images and decompression bombs from their headers alone."""
        for item, data in zip(items, raw, strict=True):
            try:
                width, height = image_size(data)
            except ImageTooLarge as exc:
                raise errors.TooLarge(f"{item.label}: {exc}") from None
            except ImageError as exc:
                raise errors.NotAnImage(f"{item.label} is not a decodable image: {exc}") from None
            if width * height > self.settings.max_image_pixels:
                raise errors.TooLarge(
                    f"{item.label}: image is {width}x{height} = {width * height:,} pixels; "
                    f"the limit is {self.settings.max_image_pixels:,}"
                )

    def decode(self, items: list[ImageInput], raw: list[bytes], size: int) -> np.ndarray:
        """Each image at `size`, one at a time, each inside this worker's decode budget."""
        budget = self.memory
        pixels = []
        for item, data in zip(items, raw, strict=True):
            try:
                needed = decode_estimate(data, size)
                if needed > budget.total:
                    raise ImageTooLarge(
                        f"decoding it would take ~{needed / 2**20:,.0f} MiB; the limit is "
                        f"{budget.total / 2**20:,.0f} MiB (MAX_DECODE_BYTES)"
                    )
                with budget.reserve(needed, timeout=self.settings.grpc_timeout):
                    pixels.append(
                        load_image(
                            data,
                            size=size,
                            max_pixels=self.settings.max_image_pixels,
                            max_decode_bytes=budget.total,
                        )
                    )
            except BudgetExhausted as exc:
                raise errors.Overloaded(f"too many large images being decoded: {exc}") from None
            except ImageTooLarge as exc:
                raise errors.TooLarge(f"{item.label}: {exc}") from None
            except ImageError as exc:
                raise errors.NotAnImage(f"{item.label} is not a decodable image: {exc}") from None
        return np.stack(pixels)

    def answer(self, row: np.ndarray, prediction) -> dict:
        best = int(np.argmax(row))
        return {
            "label": prediction.classes[best],
            "probability": float(row[best]),
            "probabilities": {
                name: float(p) for name, p in zip(prediction.classes, row, strict=True)
            },
            "model": {"name": self.settings.model_name, "version": int(prediction.version)},
        }

    def readiness(self) -> tuple[bool, str]:
        try:
            client = self.clients.get()
            return client.check_ready(timeout=min(READY_TIMEOUT_S, self.settings.grpc_timeout))
        except KitchenwareError as exc:
            return False, str(exc)


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


BODY_ENDED_EARLY = "the request body ended early (the client sent less than it announced)"


def gunicorn_body_error(exc: Exception) -> str | None:
    """What to tell the client when gunicorn's parser failed while the app read the body.

    A malformed chunk raises gunicorn's own errors inside the app; they are the
    client's fault (400), not ours. Matched by module, so the gateway imports
    without gunicorn (tests, other servers).
    """
    if not type(exc).__module__.startswith("gunicorn.http"):
        return None
    if type(exc).__name__ == "NoMoreData":
        return BODY_ENDED_EARLY
    return f"the request body is malformed: {exc}"


FORM_PARSER_MODULES = ("werkzeug.formparser", "werkzeug.sansio.multipart")


def raised_by_form_parser(exc: Exception) -> bool:
    """Whether werkzeug's form parser raised `exc` (its field-size and part-count limits).

    werkzeug raises the same bare 413 for those and for the body limit; only where
    it was raised tells them apart.
    """
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_globals.get("__name__", "").startswith(
        FORM_PARSER_MODULES
    )


class RequireWholeBody:
    """WSGI middleware: a body that ends before its Content-Length is a 400.

    gunicorn sets `wsgi.input_terminated`, so werkzeug reads its input up to
    MAX_CONTENT_LENGTH and would take a short body as complete. Without the flag
    werkzeug limits the stream to Content-Length and raises ClientDisconnected
    when it ends early. Chunked bodies (no Content-Length) keep the flag.
    """

    def __init__(self, wsgi_app) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("CONTENT_LENGTH"):
            environ.pop("wsgi.input_terminated", None)
        return self.wsgi_app(environ, start_response)


def unknown_transfer_coding(environ) -> str | None:
    """Why the request's Transfer-Encoding cannot be read, or None for none or `chunked`.

    gunicorn accepts `gzip`, `deflate` and `compress` before `chunked` but decodes only
    the chunking, so the app would read the still-compressed bytes as the body; such a
    request is refused before anything reads its body. gunicorn itself closes the
    connection after it (an app may not send hop-by-hop headers such as Connection).
    nginx in front answers the same 501 itself (proxy/json-errors.conf).
    """
    coding = environ.get("HTTP_TRANSFER_ENCODING")
    if coding is None or coding.strip(" \t").lower() == "chunked":
        return None
    unknown = [c.strip(" \t") for c in coding.split(",") if c.strip(" \t").lower() != "chunked"]
    return (
        f"the request's Transfer-Encoding {coding!r} uses {', '.join(unknown) or 'a coding'}, "
        "which this server does not implement; send the body as it is, with "
        "Content-Length or Transfer-Encoding: chunked"
    )


def create_app(settings: Settings | None = None, model_client=None) -> Flask:
    """The gateway's Flask app; `settings` default to `Settings.from_env()`.

    `model_client` stands in for the gRPC client (see ClientProvider); production
    never passes one.
    """
    settings = settings if settings is not None else Settings.from_env()
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.wsgi_app = RequireWholeBody(app.wsgi_app)
    gateway = Gateway(settings, model_client)
    app.extensions["kitchenware_gateway"] = gateway

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.before_request
    def refuse_unknown_transfer_codings() -> None:
        if (reason := unknown_transfer_coding(request.environ)) is not None:
            raise errors.TransferCodingNotImplemented(reason)

    @app.after_request
    def finish(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("started", time.perf_counter())
        method = request.method if request.method in KNOWN_METHODS else "other"
        gateway.metrics.observe_request(
            endpoint, method, response.status_code, time.perf_counter() - started
        )
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        return response

    @app.errorhandler(errors.GatewayError)
    def gateway_error(exc: errors.GatewayError):
        if exc.status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.path, exc.status, exc.message)
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if isinstance(exc, ClientDisconnected):
            message = BODY_ENDED_EARLY
        elif exc.code == 413 and raised_by_form_parser(exc):
            message = (
                "the form is over a form limit: a field that is not a file upload may hold "
                f"{app.config['MAX_FORM_MEMORY_SIZE']:,} bytes and a form "
                f"{app.config['MAX_FORM_PARTS']:,} parts; send photos as file uploads "
                "(curl -F 'file=@photo.jpg')"
            )
        elif exc.code == 413:
            message = (
                f"the request body is larger than the limit of {settings.max_request_bytes:,} bytes"
            )
        response = error_response(
            exc.code or 500, errors.code_for_status(exc.code or 500, exc.name), message
        )
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if (message := gunicorn_body_error(exc)) is not None:
            return error_response(errors.BadRequest.status, errors.BadRequest.code, message)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, errors.GatewayError.code, errors.INTERNAL_ERROR_MESSAGE)

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.post("/predict")
    def predict():
        with gateway.parsed(request) as (parsed, reservation):
            answers = gateway.predict(parsed.items, reservation)
        if parsed.batch:
            return jsonify({"predictions": answers})
        return jsonify(answers[0])

    @app.post("/explain")
    def explain():
        with gateway.parsed(request) as (parsed, reservation):
            if len(parsed.items) != 1:
                raise errors.BadRequest(
                    f"/explain takes one image per request, got {len(parsed.items)}; "
                    "send several requests (or use /predict for a batch)"
                )
            return jsonify(gateway.explain(parsed.items[0], reservation))

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        ready, reason = gateway.readiness()
        if not ready:
            return error_response(503, errors.ModelUnavailable.code, reason)
        return jsonify({"status": "ready", "reason": reason})

    @app.get("/metrics")
    def metrics():
        body, content_type = gateway.metrics.exposition()
        return Response(body, content_type=content_type)

    return app
