"""gunicorn's gthread worker, answering what its HTTP parser refuses with the JSON error shape.

gunicorn refuses a malformed request (URL too long, too many headers, contradictory
lengths, an unknown transfer coding, ...) before the app runs, and its worker writes
an HTML page for it. This worker keeps gunicorn's decision and its logging: it lets
gunicorn write the page into a buffer, then sends the same status with
`{"error": {"code", "message"}}` instead. Set as `worker_class` in gunicorn.conf.py.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from kitchenware.gateway.errors import INTERNAL_ERROR_MESSAGE, code_for_status

# The codes of the statuses gunicorn answers itself (documented in docu/openapi.yaml).
PROTOCOL_ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


class CapturedWrites:
    """Stands for the client socket while gunicorn writes its page: keeps the bytes, sends none."""

    def __init__(self, sock) -> None:
        self._sock = sock
        self.written = bytearray()

    def sendall(self, data: bytes) -> None:
        self.written += data

    def send(self, data: bytes) -> int:
        self.written += data
        return len(data)

    def __getattr__(self, name: str):  # everything else (timeouts, names) is the socket's
        return getattr(self._sock, name)


def json_error_answer(page: bytes, exc: Exception) -> bytes:
    """The HTTP answer for gunicorn's error `page`: its status, our JSON body.

    A page whose status line does not parse goes out unchanged: an answer in the
    wrong format beats none.
    """
    status_line = page.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) != 3 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return page
    status = int(parts[1])
    # The standard phrase: gunicorn keeps "Bad Request" on some statuses (its 501).
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = parts[2]
    # Like the app: a 5xx names no internals; the log has the details.
    message = INTERNAL_ERROR_MESSAGE if status >= 500 and status != 501 else f"{reason}: {exc}"
    code = PROTOCOL_ERROR_CODES.get(status) or code_for_status(status, reason)
    body = json.dumps({"error": {"code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body.encode())}\r\n\r\n"
    )
    return head.encode("latin-1") + body.encode()


class JsonErrorWorker(ThreadWorker):
    """gunicorn's gthread worker whose own error answers are JSON."""

    def handle_error(self, req, client, addr, exc):
        captured = CapturedWrites(client)
        super().handle_error(req, captured, addr, exc)
        if not captured.written:  # gunicorn chose to send nothing
            return
        try:
            util.write_nonblock(client, json_error_answer(bytes(captured.written), exc))
        except Exception:  # the client is gone: nothing left to tell it, as in gunicorn
            self.log.debug("Failed to send error message.")
