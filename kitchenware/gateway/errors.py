"""HTTP-facing errors: each carries its status and a stable machine-readable code.

The app turns any of them into `{"error": {"code": ..., "message": ...}}`, so
clients can branch on `code` and show `message` to people.
"""

from __future__ import annotations

INTERNAL_ERROR_MESSAGE = "internal error; see the gateway log"


def code_for_status(status: int, reason: str) -> str:
    """The `code` of an HTTP error raised outside our handlers (werkzeug's, gunicorn's).

    413 and 500 share our codes; others are the reason phrase in snake_case
    ("URI Too Long" -> "uri_too_long").
    """
    if status == TooLarge.status:
        return TooLarge.code
    if status == 500:
        return GatewayError.code
    return "".join(c if c.isalnum() else "_" for c in (reason or "error").lower()).strip("_")


class GatewayError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class RequestTimeout(GatewayError):
    """The client did not send its request line, headers or body within the deadline."""

    status, code = 408, "request_timeout"


class TooLarge(GatewayError):
    status, code = 413, "too_large"


class NotAnImage(GatewayError):
    status, code = 415, "not_an_image"


class UrlRefused(GatewayError):
    status, code = 422, "url_refused"


class FetchFailed(GatewayError):
    status, code = 502, "fetch_failed"


class ModelServerFailed(GatewayError):
    """The model server answered with an error we cannot blame on the request."""

    status, code = 502, "model_server_error"


class TransferCodingNotImplemented(GatewayError):
    """The request's Transfer-Encoding names a coding the gateway does not decode."""

    status, code = 501, "not_implemented"


class ExplainUnsupported(GatewayError):
    """The served model has no `explain` signature: the gateway cannot explain with it."""

    status, code = 501, "explain_unsupported"


class ModelUnavailable(GatewayError):
    status, code = 503, "model_unavailable"


class Overloaded(GatewayError):
    """This worker is already decoding (or queueing) as much as it allows: retry later."""

    status, code = 503, "overloaded"


class ModelTimeout(GatewayError):
    status, code = 504, "model_timeout"
