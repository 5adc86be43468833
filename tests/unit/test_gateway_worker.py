"""The gunicorn worker's JSON answers, from the pages gunicorn itself would write.

The pages come from gunicorn's own `util.write_error` into a captured socket, so a
gunicorn that changes its page format shows up here. Real sockets:
tests/integration/test_gateway_protocol.py.
"""

from __future__ import annotations

import json

import pytest
import yaml
from gunicorn import util
from gunicorn.http.errors import LimitRequestLine
from support.paths import REPO

from kitchenware.gateway.worker import PROTOCOL_ERROR_CODES, CapturedWrites, json_error_answer


def gunicorn_page(status: int, reason: str, message: str) -> bytes:
    captured = CapturedWrites(sock=None)
    captured.gettimeout = lambda: 0.0  # write_nonblock asks; 0.0: no blocking switch
    util.write_error(captured, status, reason, message)
    return bytes(captured.written)


def parse(answer: bytes) -> tuple[str, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return status_line, headers, json.loads(body)


def test_a_client_error_keeps_its_status_and_says_what_gunicorn_saw():
    exc = LimitRequestLine(9000, 4094)
    status_line, headers, body = parse(
        json_error_answer(gunicorn_page(414, "URI Too Long", ""), exc)
    )
    assert status_line.startswith("HTTP/1.1 414 ")
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close"
    assert body["error"]["code"] == "uri_too_long"
    assert "9000 > 4094" in body["error"]["message"]


@pytest.mark.parametrize(
    "status, code",
    [(400, "bad_request"), (431, "request_header_fields_too_large"), (501, "not_implemented")],
)
def test_codes_come_from_the_status_not_gunicorns_reason_phrase(status, code):
    # gunicorn answers its 501 with the reason "Bad Request".
    answer = json_error_answer(gunicorn_page(status, "Bad Request", "x"), ValueError("x"))
    assert parse(answer)[2]["error"]["code"] == code


def test_a_server_error_names_no_internals():
    answer = json_error_answer(gunicorn_page(500, "Internal Server Error", ""), KeyError("secret"))
    error = parse(answer)[2]["error"]
    assert error["code"] == "internal_error" and "secret" not in error["message"]


def test_an_unrecognised_page_goes_out_unchanged():
    assert json_error_answer(b"garbage", ValueError("x")) == b"garbage"


def test_the_spec_documents_the_worker_codes_for_predict():
    spec = yaml.safe_load((REPO / "docu" / "openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    for status in (414, 431, 501):
        ref = spec["paths"]["/predict"]["post"]["responses"][str(status)]["$ref"]
        response = spec["components"]["responses"][ref.rsplit("/", 1)[1]]
        schema = schemas[
            response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        ]
        enum = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
        assert enum == [PROTOCOL_ERROR_CODES[status]], status
