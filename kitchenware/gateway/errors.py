"""HTTP-facing errors: each carries its status and a stable machine-readable code.

The app turns any of them into `{"error": {"code": ..., "message": ...}}`, so
clients can branch on `code` and show `message` to people.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


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


class ModelUnavailable(GatewayError):
    status, code = 503, "model_unavailable"


class Overloaded(GatewayError):
    """This worker is already decoding as much as its memory budget allows."""

    status, code = 503, "overloaded"


class ModelTimeout(GatewayError):
    status, code = 504, "model_timeout"
