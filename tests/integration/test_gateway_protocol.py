"""The gateway as deployed (nginx in front of gunicorn) answers malformed HTTP in JSON.

Raw bytes over a socket to the proxy on 127.0.0.1: bad chunked bodies, truncated
bodies and requests the proxy refuses before gunicorn sees them (long URL, big
headers or heads, contradictory lengths, bad bytes, unknown versions and codings).
No model server is needed: every request here fails before one would be asked.
Transfer codings the gateway does not implement are also sent to gunicorn alone
(`make serve`, the demo), which must answer the same JSON 501.
"""

from __future__ import annotations

import json
import socket
from contextlib import contextmanager

import pytest
from support.paths import guarded_gateway

from devtools import stack
from devtools.stack import free_port

READ_TIMEOUT_S = 15


def _started(work, proxy: bool):
    return guarded_gateway(work, {"TF_SERVING_HOST": f"127.0.0.1:{free_port()}",
                                  "GRPC_TIMEOUT": "2",
                                  "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")},
                           proxy=proxy)  # fmt: skip


@contextmanager
def _running(work, proxy: bool):
    gw = _started(work, proxy)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with _running(tmp_path_factory.mktemp("gateway-protocol"), proxy=True) as gw:
        yield gw


@pytest.fixture(scope="module", params=["proxy", "gunicorn-alone"])
def either_gateway(request, gateway, tmp_path_factory):
    """The deployed pair, then gunicorn alone (`make serve`, the demo)."""
    if request.param == "proxy":
        yield gateway
        return
    with _running(tmp_path_factory.mktemp("gateway-protocol-alone"), proxy=False) as gw:
        yield gw


def exchange(gw, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw`, close our sending side, read the answer: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head, f"no answer at all to {raw[:80]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def json_error(gw, raw: bytes, status: int) -> dict:
    got, headers, body = exchange(gw, raw)
    assert got == status, body[:500]
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"], error
    return error


def request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


POST = "POST /predict HTTP/1.1\nHost: gw\nConnection: close\n"


# -- bodies the app reads -------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXY0\r\n\r\n"],
    ids=["bad-chunk-size", "missing-crlf"],
)
def test_malformed_chunked_body_is_a_400(gateway, chunks):
    raw = request(POST + "Content-Type: image/jpeg\nTransfer-Encoding: chunked\n", chunks)
    error = json_error(gateway, raw, 400)
    assert error["code"] == "bad_request"
    assert "body" in error["message"]


def proxy_log_statuses(gw, uri: str) -> list[int]:
    """The statuses of the proxy's access-log lines (JSON, one per request) for `uri`."""
    lines = [json.loads(line) for line in gw.proxy.log().splitlines() if line.startswith("{")]
    return [line["status"] for line in lines if line["uri"] == uri]


@pytest.mark.parametrize(
    "head, body",
    [("Transfer-Encoding: chunked\n", b"3\r\nab"), ("Content-Length: 5000\n", b"\xff\xd8" * 50)],
    ids=["chunked-ends-early", "shorter-than-content-length"],
)
def test_body_cut_short_by_its_client_is_dropped_and_logged_as_400(gateway, head, body):
    """The client closed before its body was whole: nginx closes too, logs a 400 and
    passes nothing to gunicorn (the worker used to answer a 400 on the half-closed socket)."""
    uri = f"/predict?cut-short={len(body)}"
    raw = request(POST.replace("/predict", uri) + "Content-Type: image/jpeg\n" + head, body)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""
    stack.wait_for(lambda: proxy_log_statuses(gateway, uri) == [400], 5, "the proxy's log line")
    assert uri not in gateway.log()  # never reached gunicorn


def test_well_formed_chunked_body_reaches_the_image_check(gateway):
    raw = request(POST + "Content-Type: image/jpeg\nTransfer-Encoding: chunked\n",
                  b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")  # fmt: skip
    error = json_error(gateway, raw, 415)
    assert error["code"] == "not_an_image"


# -- requests the proxy refuses before gunicorn sees them ------------------------------


def headers_bytes(total: int) -> str:
    return "".join(f"X-Filler-{i}: {'a' * 60}\n" for i in range(total // 75))


PROTOCOL_ERRORS = {
    "long-url": ("GET /" + "a" * 9000 + " HTTP/1.1\nHost: gw\n", 414, "uri_too_long"),
    "big-header": (POST + "X-Big: " + "a" * 9000 + "\n", 431, "request_header_fields_too_large"),
    "big-head": (POST + "".join(f"X-H{i}: {'a' * 8000}\n" for i in range(9)), 431,
                 "request_header_fields_too_large"),
    "te-and-cl": (POST + "Transfer-Encoding: chunked\nContent-Length: 5\n", 400, "bad_request"),
    "duplicate-cl": (POST + "Content-Length: 3\nContent-Length: 4\n", 400, "bad_request"),
    "negative-cl": (POST + "Content-Length: -1\n", 400, "bad_request"),
    "nul-in-header": (POST + "X-Note: a\x00b\n", 400, "bad_request"),
    "http-2.0-line": ("GET /healthz HTTP/2.0\nHost: gw\n", 505, "http_version_not_supported"),
    "bad-method": ("G@T /healthz HTTP/1.1\nHost: gw\n", 400, "bad_request"),
    "unknown-coding": (POST + "Transfer-Encoding: zstd-but-not-really\n", 501, "not_implemented"),
}  # fmt: skip


@pytest.mark.parametrize("case", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_errors_keep_their_status_and_answer_json(gateway, case):
    head, status, code = case
    error = json_error(gateway, request(head, b"0\r\n\r\n"), status)
    assert error["code"] == code
    assert "<html" not in error["message"]


def test_the_proxy_logs_what_it_refused_and_gunicorn_never_sees_it(gateway):
    json_error(gateway, request("GET /logged HTTP/1.1\nHost: gw\nX-Note: a\x00b\n"), 400)
    stack.wait_for(lambda: proxy_log_statuses(gateway, "/logged") == [400], 5, "the log line")
    assert "/logged" not in gateway.log()


def test_many_small_headers_within_the_proxy_limits_reach_the_app(gateway):
    """gunicorn's own header limits sit above the proxy's: it never answers in HTML."""
    raw = request(POST + "Content-Length: 0\n" + "".join(f"X-H{i}: 1\n" for i in range(120)))
    error = json_error(gateway, raw, 400)
    assert error["code"] == "bad_request" and "image" in error["message"].lower()


def test_the_gateway_still_serves_after_refusals(gateway):
    status, headers, body = exchange(gateway, request("GET /healthz HTTP/1.1\nHost: gw\n"
                                                      "Connection: close\n"))  # fmt: skip
    assert status == 200 and json.loads(body) == {"status": "ok"}


# -- transfer codings the gateway does not implement (issue 21) ------------------------

UNIMPLEMENTED_CODINGS = ["gzip, chunked", "deflate, chunked", "compress,chunked", "GZIP , Chunked"]


@pytest.mark.parametrize("coding", UNIMPLEMENTED_CODINGS)
@pytest.mark.parametrize("path", ["/predict", "/healthz"])
def test_a_transfer_coding_the_gateway_does_not_implement_is_a_json_501(
    either_gateway, coding, path
):
    """gunicorn accepts gzip/deflate/compress before chunked but never decodes them: the
    app read the compressed bytes as the body (a GET /healthz answered 200). Both fronts
    now answer 501 in JSON and close the connection."""
    method = "GET" if path == "/healthz" else "POST"
    head = f"{method} {path} HTTP/1.1\nHost: gw\nContent-Type: application/json\n"
    raw = request(head + f"Transfer-Encoding: {coding}\n", b'7\r\n{"a":1}\r\n0\r\n\r\n')
    status, headers, body = exchange(either_gateway, raw)
    assert status == 501, body[:500]
    assert headers.get("content-type", "").startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert error["code"] == "not_implemented"
    assert "transfer-encoding" in error["message"].lower()
    assert headers.get("connection", "").lower() == "close", headers


def test_plain_chunked_still_reaches_the_app_on_both_fronts(either_gateway):
    raw = request("POST /predict HTTP/1.1\nHost: gw\nContent-Type: image/jpeg\n"
                  "Transfer-Encoding:  Chunked \nConnection: close\n",
                  b"5\r\nhello\r\n0\r\n\r\n")  # fmt: skip
    assert json_error(either_gateway, raw, 415)["code"] == "not_an_image"
