"""Per-connection pieces of the gateway's gunicorn worker: read deadlines, lanes, limits.

gunicorn's gthread worker hands a connection to a pool thread as soon as its first
byte arrives, and the thread then blocks on the socket with no deadline: a client
that sends one header byte every few seconds holds a thread for ever, and a few of
them starve every request, health checks included. The worker (worker.py) instead
collects the request head in its event loop, where a slow client costs no thread,
and these helpers decide what happens next: which pool serves the request, and how
long its body may take to arrive.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from kitchenware.core.errors import KitchenwareError
from kitchenware.gateway.errors import RequestTimeout

HEADER_TIMEOUT = "GUNICORN_HEADER_TIMEOUT"
BODY_TIMEOUT = "GUNICORN_BODY_TIMEOUT"
# A request that waited for a thread past its body deadline still gets this long to
# read what its client sent meanwhile (a whole small body is already buffered), so
# only a client that is slow itself gets a 408, and a slow one holds a thread briefly.
QUEUE_GRACE_S = 1.0
PROBE_THREADS = "GUNICORN_PROBE_THREADS"
MAX_PENDING = "GUNICORN_MAX_PENDING"
THREADS = "GUNICORN_THREADS"

# Health checks and metrics scrapes: served by their own threads, so no load on
# /predict delays them. Matched on the request line only (method and path).
PROBE_LINE = re.compile(rb"(GET|HEAD) /(healthz|readyz|metrics)(\?[^ ]*)? HTTP/1\.[01]\r?\n")
# A head bigger than this is handed to a thread unfinished (gunicorn's parser then
# refuses it with 414/431, or reads the rest under the deadline): it bounds what
# the event loop buffers per connection.
HEAD_BUFFER_BYTES = 64 * 1024
END_OF_HEAD = (b"\r\n\r\n", b"\n\n")


class LimitsError(KitchenwareError):
    """A worker limit in the environment is not a positive number."""


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send its request, and how much work a worker queues.

    header_timeout: seconds from the connection (or the end of the previous request)
    to the end of the request line and headers; body_timeout: seconds from then to
    the end of the body; probe_threads: threads for /healthz, /readyz, /metrics;
    max_pending: other requests queued or running per worker before new ones get a
    fast 503 (0 in the environment means four per gunicorn thread).
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    probe_threads: int = 2
    max_pending: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConnectionLimits:
        env = os.environ if environ is None else environ

        def number(name: str, default, parse):
            raw = env.get(name, "").strip()
            try:
                value = parse(raw) if raw else default
            except ValueError:
                raise LimitsError(f"{name}={raw!r} is not a number") from None
            if not value > 0:
                raise LimitsError(f"{name} must be greater than 0, got {raw!r}")
            return value

        threads = number(THREADS, 4, int)
        return cls(
            header_timeout=number(HEADER_TIMEOUT, cls.header_timeout, float),
            body_timeout=number(BODY_TIMEOUT, cls.body_timeout, float),
            probe_threads=number(PROBE_THREADS, cls.probe_threads, int),
            max_pending=number(MAX_PENDING, 4 * threads, int),
        )


def head_complete(buffered: bytes) -> bool:
    """Whether the request line and headers have all arrived (or the buffer is full)."""
    return len(buffered) >= HEAD_BUFFER_BYTES or any(end in buffered for end in END_OF_HEAD)


def is_probe(buffered: bytes) -> bool:
    return PROBE_LINE.match(buffered) is not None


class DeadlineSocket:
    """A client socket whose reads fail once a wall-clock deadline has passed.

    Each recv waits at most the time left, so a client trickling one byte at a time
    cannot stretch a request beyond the deadline (a per-read timeout restarts on
    every byte). The first read past it raises RequestTimeout (the app answers 408);
    later ones raise socket.timeout, which gunicorn's body drain and close treat as
    "give up". Sending clears the deadline: once the answer starts, the request has
    been read. Everything else is the socket's.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None
        self.expired = False

    def recv(self, size: int, *flags) -> bytes:
        if self.expired:
            raise TimeoutError("the request deadline passed")
        if self.deadline is None:
            return self._sock.recv(size, *flags)
        left = self.deadline - time.monotonic()
        prior = self._sock.gettimeout()
        try:
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left if prior is None else min(prior, left))
            return self._sock.recv(size, *flags)
        except TimeoutError:
            if prior is not None and left > prior:  # the caller's own, shorter timeout
                raise
            self.expired = True
            raise RequestTimeout("the request did not arrive in time") from None
        finally:
            self._sock.settimeout(prior)

    def send(self, data, *flags) -> int:
        self.deadline = None
        return self._sock.send(data, *flags)

    def sendall(self, data, *flags) -> None:
        self.deadline = None
        self._sock.sendall(data, *flags)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)
