"""Hostile peers for tests: web servers on 127.0.0.1 that answer one byte at a time, or
with any redirect a hostile server could send."""

from __future__ import annotations

import socket
import threading
import time


class LoopbackServer:
    """A raw-socket web server on 127.0.0.1, one thread per connection; `served` counts
    connections. Subclasses write `_answer(conn)`."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.served = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.served += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.listener.close()


class TricklingServer(LoopbackServer):
    """A web server on 127.0.0.1 that sends its answer one byte per `interval` seconds.

    `stage` picks where it dawdles: "status" (in the status line), "header" (a header
    line), "chunk" (a chunk-size line of a chunked body). `served` counts connections.
    """

    def __init__(self, interval: float = 1.0, total_s: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.total_s = total_s

    def url(self, stage: str) -> str:
        return f"http://127.0.0.1:{self.port}/{stage}"

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = conn.recv(65536).decode("latin1")
                stage = request.split(" ", 2)[1].strip("/") if " " in request else ""
                head = b"HTTP/1.1 200 OK\r\n"
                slow = b"X-Slow: " + b"a" * 200 + b"\r\n"
                if stage == "status":
                    head, fast = b"HTTP/1.1 200 " + b"O" * 200 + b"\r\n", b""
                elif stage == "header":
                    conn.sendall(head)
                    head, fast = slow, b""
                else:
                    conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
                    head, fast = b"0" * 200 + b"1\r\n", b""
                deadline = time.monotonic() + self.total_s
                for byte in head + fast:
                    if self.stopping.is_set() or time.monotonic() > deadline:
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(self.interval)
            except OSError:
                return


class RedirectServer(LoopbackServer):
    """A web server on 127.0.0.1 that answers every request `302` with `location`, raw.

    `location` is bytes and goes onto the wire as it is (no quoting, no validation),
    so a test can send any Location a hostile server could: unparsable URLs, control
    characters, other schemes, addresses the fetcher must refuse. `served` counts
    connections. Set `location` before each request; one test drives it at a time.
    """

    def __init__(self, location: bytes = b"/") -> None:
        super().__init__()
        self.location = location
        self.url = f"http://127.0.0.1:{self.port}/photo.jpg"

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(
                    b"HTTP/1.1 302 Found\r\nLocation: " + self.location + b"\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                return
