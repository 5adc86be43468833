"""gunicorn's gthread worker: request heads read in its event loop, probes in their own
threads, deadlines on slow clients, a bound on queued work, and JSON error answers.

Slow clients and load: the worker collects each request's line and headers in its
event loop (a slow client costs no thread; one that has not finished within
GUNICORN_HEADER_TIMEOUT gets a 408 and is closed), then hands the request to a
pool: /healthz, /readyz and /metrics to GUNICORN_PROBE_THREADS threads of their own,
so no load on /predict delays them; everything else to gunicorn's GUNICORN_THREADS,
or, when GUNICORN_MAX_PENDING requests already wait or run there, a fast 503
`overloaded` with Retry-After. A body must arrive within GUNICORN_BODY_TIMEOUT
(connections.DeadlineSocket). See docu/RELIABILITY.md.

gunicorn refuses a malformed request (URL too long, too many headers, contradictory
lengths, an unknown transfer coding, ...) before the app runs, and its worker writes
an HTML page for it. This worker keeps gunicorn's decision and its logging: it lets
gunicorn write the page into a buffer, then sends the same status with
`{"error": {"code", "message"}}` instead. Set as `worker_class` in gunicorn.conf.py.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http import HTTPStatus

from gunicorn import http, util
from gunicorn.workers.gthread import TConn, ThreadWorker

from kitchenware.gateway import connections
from kitchenware.gateway.errors import (
    INTERNAL_ERROR_MESSAGE,
    Overloaded,
    RequestTimeout,
    code_for_status,
)

# An answered connection the worker closes is first read until the client closes
# (at most this long and this much): closing with unread input would reset it,
# and the client could lose the answer.
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 1024 * 1024
RETRY_AFTER_S = 1

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


def json_answer(status: int, code: str, message: str, extra_headers: str = "") -> bytes:
    """A complete `Connection: close` HTTP answer with the JSON error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"{extra_headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


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
    try:
        return json_answer(status, code, message)
    except ValueError:  # a status http.HTTPStatus does not know
        return page


TIMEOUT_ANSWER = json_answer(
    RequestTimeout.status, RequestTimeout.code,
    "the request line, headers or body did not arrive in time",
)  # fmt: skip
OVERLOADED_ANSWER = json_answer(
    Overloaded.status, Overloaded.code,
    "this gateway worker has too many requests waiting; retry shortly",
    f"Retry-After: {RETRY_AFTER_S}\r\n",
)  # fmt: skip


class HeadState:
    """What the event loop knows of a request head still arriving."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.buffered = bytearray()


class JsonErrorWorker(ThreadWorker):
    """gunicorn's gthread worker with the request-head, lane and deadline handling above."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = connections.ConnectionLimits.from_env()
        self.heads: dict[TConn, HeadState] = {}
        self.drains: dict[socket.socket, float] = {}
        self.main_pending = 0
        self.probe_pool: ThreadPoolExecutor | None = None

    def init_process(self):
        self.probe_pool = ThreadPoolExecutor(self.limits.probe_threads, "probe")
        super().init_process()

    # -- the request head, read in the event loop ------------------------------------

    def accept(self, listener):
        try:
            client, addr = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, connections.DeadlineSocket(client), addr, listener.getsockname())
        self.await_head(conn)

    def on_client_socket_readable(self, conn, client):
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.await_head(conn)

    def await_head(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        self.heads[conn] = HeadState(time.monotonic() + self.limits.header_timeout)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head_data, conn))

    def on_head_data(self, conn: TConn, _sock) -> None:
        state = self.heads[conn]
        try:
            data = conn.sock.recv(connections.HEAD_BUFFER_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client left before finishing its request
            self.forget_head(conn)
            self.nr_conns -= 1
            conn.close()
            return
        state.buffered += data
        if connections.head_complete(state.buffered):
            self.forget_head(conn)
            self.dispatch(conn, bytes(state.buffered))

    def forget_head(self, conn: TConn) -> None:
        del self.heads[conn]
        self.poller.unregister(conn.sock)

    def dispatch(self, conn: TConn, head: bytes) -> None:
        """Hand a request whose head has arrived to its pool, or shed it."""
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(head)
        conn.data_ready = True
        # The body's time starts now; a head handed over unfinished gets its own too.
        allowed = self.limits.body_timeout
        if not connections.head_complete(head) or len(head) >= connections.HEAD_BUFFER_BYTES:
            allowed += self.limits.header_timeout
        conn.body_deadline = time.monotonic() + allowed
        if connections.is_probe(head):
            self.submit(self.probe_pool, conn, self.finish_request)
        elif self.main_pending >= self.limits.max_pending:
            self.nr_conns -= 1
            self.answer_and_close(conn.sock, OVERLOADED_ANSWER)
        else:
            self.main_pending += 1
            self.submit(self.tpool, conn, self.finish_main_request)

    def enqueue_req(self, conn):
        """A kept-alive connection whose next request is already buffered (read ahead)."""
        self.dispatch(conn, conn.parser.unreader.take_buffered())

    def submit(self, pool, conn: TConn, then) -> None:
        future = pool.submit(self.handle, conn)
        future.add_done_callback(lambda fut: self.method_queue.defer(then, conn, fut))

    def finish_main_request(self, conn, future):
        self.main_pending -= 1
        self.finish_request(conn, future)

    def handle(self, conn):
        # Time queued for a thread is the server's, not the client's: a request taken up
        # after its deadline still gets QUEUE_GRACE_S to read what the client has sent.
        deadline = getattr(conn, "body_deadline", time.monotonic() + self.limits.body_timeout)
        conn.sock.deadline = max(deadline, time.monotonic() + connections.QUEUE_GRACE_S)
        try:
            return super().handle(conn)
        finally:
            conn.sock.deadline = None

    # -- answering and closing without a thread ---------------------------------------

    def answer_and_close(self, sock, answer: bytes) -> None:
        """Send a short answer without blocking, then read the client out and close."""
        try:
            sock.setblocking(False)
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            util.close(sock)
            return
        self.drains[sock] = time.monotonic() + DRAIN_SECONDS
        self.poller.register(sock, selectors.EVENT_READ, self.on_drain_data)

    def on_drain_data(self, sock) -> None:
        try:
            data = sock.recv(DRAIN_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close_drained(sock)

    def close_drained(self, sock) -> None:
        del self.drains[sock]
        self.poller.unregister(sock)
        util.close(sock)

    def murder_pending(self):
        """Also, once a second: time out slow heads, close drained connections."""
        super().murder_pending()
        now = time.monotonic()
        for conn, state in list(self.heads.items()):
            idle_at_stop = not self.alive and not state.buffered
            if state.deadline <= now or idle_at_stop:
                self.forget_head(conn)
                self.nr_conns -= 1
                if idle_at_stop:
                    conn.close()
                else:
                    self.log.info("closing %s: request head not complete in %g s",
                                  conn.client, self.limits.header_timeout)  # fmt: skip
                    self.answer_and_close(conn.sock, TIMEOUT_ANSWER)
        for sock, deadline in list(self.drains.items()):
            if deadline <= now:
                self.close_drained(sock)

    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        if force:
            for sock in list(self.drains):
                self.close_drained(sock)
            for conn in list(self.heads):
                self.forget_head(conn)
                self.nr_conns -= 1
                conn.close()

    # -- gunicorn's own error answers, as JSON ------------------------------------

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, RequestTimeout):
            try:
                util.write_nonblock(client, TIMEOUT_ANSWER)
            except Exception:
                self.log.debug("Failed to send error message.")
            return
        captured = CapturedWrites(client)
        super().handle_error(req, captured, addr, exc)
        if not captured.written:  # gunicorn chose to send nothing
            return
        try:
            util.write_nonblock(client, json_error_answer(bytes(captured.written), exc))
        except Exception:  # the client is gone: nothing left to tell it, as in gunicorn
            self.log.debug("Failed to send error message.")
