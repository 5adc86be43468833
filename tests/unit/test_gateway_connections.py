"""The worker's per-connection helpers: limits from the environment, lanes, read deadlines.

Real sockets (a socketpair); the worker itself runs under gunicorn in
tests/integration/test_gateway_starvation.py.
"""

from __future__ import annotations

import socket
import time

import pytest

from kitchenware.gateway.connections import (
    HEAD_BUFFER_BYTES,
    ConnectionLimits,
    DeadlineSocket,
    LimitsError,
    head_complete,
    is_probe,
)
from kitchenware.gateway.errors import RequestTimeout


def test_limits_default_and_derive_the_queue_bound_from_the_threads():
    assert ConnectionLimits.from_env({}) == ConnectionLimits(10.0, 30.0, 2, 16)
    limits = ConnectionLimits.from_env({"GUNICORN_THREADS": "12", "GUNICORN_BODY_TIMEOUT": "5"})
    assert (limits.max_pending, limits.body_timeout) == (48, 5.0)
    assert ConnectionLimits.from_env({"GUNICORN_MAX_PENDING": "3"}).max_pending == 3


@pytest.mark.parametrize("name", ["GUNICORN_HEADER_TIMEOUT", "GUNICORN_MAX_PENDING"])
@pytest.mark.parametrize("raw", ["0", "-1", "soon"])
def test_bad_limits_name_the_variable(name, raw):
    with pytest.raises(LimitsError, match=name):
        ConnectionLimits.from_env({name: raw})


@pytest.mark.parametrize(
    ("head", "probe"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"HEAD /readyz?verbose=1 HTTP/1.0\r\n\r\n", True),
        (b"GET /metrics HTTP/1.1\r\n\r\n", True),
        (b"POST /healthz HTTP/1.1\r\n\r\n", False),
        (b"GET /healthzX HTTP/1.1\r\n\r\n", False),
        (b"POST /predict HTTP/1.1\r\n\r\n", False),
    ],
)
def test_only_probe_request_lines_take_the_probe_lane(head, probe):
    assert is_probe(head) is probe


def test_a_head_is_complete_at_its_blank_line_or_when_the_buffer_is_full():
    assert not head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head_complete(b"x" * HEAD_BUFFER_BYTES)


def test_a_trickle_cannot_outlast_the_deadline():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        wrapped = DeadlineSocket(ours)
        wrapped.deadline = time.monotonic() + 0.5
        received = b""
        with pytest.raises(RequestTimeout):
            for _ in range(100):  # 5 s: ten times the deadline
                theirs.send(b"a")  # a byte before every read: a per-read timeout never fires
                received += wrapped.recv(1)
                time.sleep(0.05)
        assert 3 <= len(received) <= 11
        with pytest.raises(TimeoutError):  # later reads give up at once
            wrapped.recv(1)


def test_sending_the_answer_lifts_the_deadline():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        wrapped = DeadlineSocket(ours)
        wrapped.deadline = time.monotonic() + 0.2
        wrapped.sendall(b"HTTP/1.1 200 OK\r\n")
        time.sleep(0.3)
        theirs.send(b"next")
        assert wrapped.recv(4) == b"next"
