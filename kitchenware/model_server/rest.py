"""TF Serving's REST API for `kitchenware model-server`: status and predict.

The official image is probed through `GET /v1/models/<name>` (the one
healthcheck script, serving/model-healthcheck.sh, and the Kubernetes probes
read `model_version_status[].state` from it), and TF Serving users call
`POST /v1/models/<name>:predict` from curl. Answering the same URLs with the
same JSON lets both model images share every probe and client.

The standard library's threading HTTP server is enough for a status page and
JSON predicts; it keeps the Python model image free of a web framework.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from kitchenware.core.contract import SIGNATURE
from kitchenware.core.errors import KitchenwareError

log = logging.getLogger("kitchenware.model_server.rest")

# /v1/models/NAME[/versions/N][:predict]; TF Serving's URL grammar, minus labels and metadata.
_ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:\w+)?$")


# "VERSION=BACKEND,..." for the served versions, e.g. "1=openvino" (see backends).
BACKEND_HEADER = "X-Kitchenware-Backend"


class RestError(Exception):
    """An answer other than 200: HTTP status and TF Serving's `{"error": ...}` message."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def model_status(manager, model_name: str, name: str, version: int | None) -> dict:
    """GetModelStatus as TF Serving's JSON: versions newest first, failures as END + message."""
    if name != model_name:
        raise RestError(HTTPStatus.NOT_FOUND, f"Could not find any versions of model {name}")
    states = {v: ("AVAILABLE", "OK", "") for v in manager.serving()}
    for failed, reason in manager.failures().items():
        states.setdefault(failed, ("END", "UNKNOWN", reason))
    if version is not None:
        if version not in states:
            raise RestError(
                HTTPStatus.NOT_FOUND, f"Could not find version {version} of model {name}"
            )
        states = {version: states[version]}
    if not states:
        raise RestError(HTTPStatus.NOT_FOUND, f"Could not find any versions of model {name}")
    return {
        "model_version_status": [
            {
                # proto3 JSON writes int64 as a string; TF Serving does too.
                "version": str(v),
                "state": state,
                "status": {"error_code": code, "error_message": message},
            }
            for v, (state, code, message) in sorted(states.items(), reverse=True)
        ]
    }


def _as_array(name: str, value, spec) -> np.ndarray:
    from kitchenware.serving import proto  # TensorFlow's protos: only once a request needs them

    dtype = proto.numpy_dtype(spec.dtype)
    try:
        array = np.asarray(value, dtype=object if dtype.kind == "O" else dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RestError(
            HTTPStatus.BAD_REQUEST,
            f"input {name!r}: cannot convert to {proto.dtype_name(spec.dtype)}: {exc}",
        ) from None
    if dtype.kind == "O":
        array = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(
            array
        )
    if spec.dims is not None and (
        array.ndim != len(spec.dims)
        or any(d >= 0 and d != s for d, s in zip(spec.dims, array.shape, strict=True))
    ):
        raise RestError(
            HTTPStatus.BAD_REQUEST,
            f"input {name!r} has shape {list(array.shape)}; the signature expects "
            f"{list(spec.dims)} (-1: any size)",
        )
    return array


def _columns(body: dict, signature) -> tuple[dict, bool]:
    """Named input columns from `instances` (row format) or `inputs` (columnar)."""
    names = sorted(signature.inputs)
    if ("instances" in body) == ("inputs" in body):
        raise RestError(
            HTTPStatus.BAD_REQUEST, 'the request needs exactly one of "instances" or "inputs"'
        )
    row_format = "instances" in body
    data = body["instances"] if row_format else body["inputs"]
    if row_format:
        if not isinstance(data, list) or not data:
            raise RestError(HTTPStatus.BAD_REQUEST, '"instances" must be a non-empty list')
        if len(names) == 1 and not isinstance(data[0], dict):
            return {names[0]: data}, True
        if not all(isinstance(row, dict) and set(row) == set(names) for row in data):
            raise RestError(
                HTTPStatus.BAD_REQUEST, f"every instance must be an object with keys {names}"
            )
        return {n: [row[n] for row in data] for n in names}, True
    if len(names) == 1 and not isinstance(data, dict):
        return {names[0]: data}, False
    if not isinstance(data, dict) or set(data) != set(names):
        raise RestError(HTTPStatus.BAD_REQUEST, f'"inputs" must be an object with keys {names}')
    return dict(data), False


def _jsonable(array: np.ndarray):
    if array.dtype.kind in "OSU":
        return np.vectorize(
            lambda s: s.decode("utf-8", "replace") if isinstance(s, bytes) else s, otypes=[object]
        )(array).tolist()
    return array.tolist()


def predict(manager, model_name: str, name: str, version: int | None, body) -> dict:
    """Run a :predict body through the served version, answered in the format it came in."""
    from kitchenware.model_server.batcher import BatcherClosed, QueueFull

    if name != model_name:
        raise RestError(HTTPStatus.NOT_FOUND, f"Servable not found for request: Latest({name})")
    model = manager.serving().get(version) if version is not None else manager.latest()
    if model is None:
        wanted = f"version {version}" if version is not None else "no version"
        # NOT_FOUND for Latest too: TF Serving's code when no version is loaded.
        raise RestError(
            HTTPStatus.NOT_FOUND,
            f"model {name!r}: {wanted} is loaded ({manager.not_loaded_reason()})",
        )
    if not isinstance(body, dict):
        raise RestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
    signature_name = body.get("signature_name") or SIGNATURE
    signature = model.signatures.get(signature_name)
    if signature is None:
        raise RestError(
            HTTPStatus.BAD_REQUEST, f'Serving signature key "{signature_name}" not found.'
        )
    columns, row_format = _columns(body, signature)
    arrays = {n: _as_array(n, v, signature.inputs[n]) for n, v in columns.items()}
    rows = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(rows) > 1:
        raise RestError(HTTPStatus.BAD_REQUEST, f"inputs disagree on the batch size: {rows}")
    try:
        outputs = signature.predict(arrays)
    except (QueueFull, BatcherClosed) as exc:
        raise RestError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc) or "model is unloading") from None
    except Exception as exc:
        log.exception("REST predict on version %d failed", model.version)
        raise RestError(
            HTTPStatus.INTERNAL_SERVER_ERROR, f"running the model failed: {exc}"
        ) from None
    values = {k: _jsonable(v) for k, v in sorted(outputs.items())}
    if row_format:
        if len(values) == 1:
            return {"predictions": next(iter(values.values()))}
        count = len(next(iter(values.values())))
        return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(count)]}
    return {"outputs": next(iter(values.values())) if len(values) == 1 else values}


def _handler(manager, model_name: str, max_body: int):
    class Handler(BaseHTTPRequestHandler):
        server_version = "kitchenware-model-server"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # access log at DEBUG, not on stderr
            log.debug("%s %s", self.address_string(), fmt % args)

        def _answer(self, status: HTTPStatus, payload: dict) -> None:
            data = json.dumps(payload, indent=1).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            # The body is TF Serving's; which runtime serves each version is a header.
            backends = ",".join(f"{v}={m.backend}" for v, m in sorted(manager.serving().items()))
            if backends:
                self.send_header(BACKEND_HEADER, backends)
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str):
            match = _ROUTE.match(self.path.split("?", 1)[0])
            if not match:
                raise RestError(HTTPStatus.NOT_FOUND, f"Malformed request: {method} {self.path}")
            version = int(match["version"]) if match["version"] else None
            return match["name"], version, match["verb"]

        def _run(self, method: str) -> None:
            try:
                name, version, verb = self._route(method)
                if method == "GET" and verb is None:
                    result = model_status(manager, model_name, name, version)
                elif method == "POST" and verb == ":predict":
                    result = predict(manager, model_name, name, version, self._body())
                else:
                    raise RestError(
                        HTTPStatus.NOT_FOUND, f"Malformed request: {method} {self.path}"
                    )
            except RestError as exc:
                self._answer(exc.status, {"error": str(exc)})
                return
            self._answer(HTTPStatus.OK, result)

        def _body(self):
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                raise RestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            if int(length) > max_body:
                self.close_connection = True
                raise RestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body of {length} bytes is over the {max_body}-byte limit",
                )
            raw = self.rfile.read(int(length))
            try:
                return json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise RestError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}") from None

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._run("GET")

        def do_POST(self):  # noqa: N802
            self._run("POST")

    return Handler


class RestServer:
    """The REST API on its own threads, next to the gRPC server."""

    def __init__(self, manager, model_name: str, host: str, port: int, max_body: int):
        try:
            self._httpd = ThreadingHTTPServer((host, port), _handler(manager, model_name, max_body))
        except OSError as exc:
            raise KitchenwareError(f"REST API cannot listen on {host}:{port}: {exc}") from None
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="rest-api", daemon=True
        )

    def start(self) -> RestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def start(manager, args) -> RestServer | None:
    """The REST API as the flags ask, or None (off, or its port is taken: logged)."""
    if not args.rest_api_port:
        return None
    try:
        server = RestServer(
            manager, args.model_name, args.host, args.rest_api_port, args.rest_max_body_bytes
        )
    except KitchenwareError as exc:
        # gRPC is the API clients use; a taken status port must not take it down.
        log.error("%s; serving gRPC only", exc)
        return None
    log.info("REST API on %s:%d", args.host, server.port)
    return server.start()
