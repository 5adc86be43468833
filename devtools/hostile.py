"""Hostile clients against a running gateway, each returning what it measured.

The attacks of the hostile replay of 2026-12-06 (issue 19) plus a probe flood,
written once for the tests (tests/integration/test_gateway_hostile.py asserts on
the figures) and for before/after comparisons on another checkout:

    python -m devtools.hostile [--checkout DIR --python PY] [--no-proxy] [--json FILE]

starts a model server and a gateway (2 workers x 4 threads, head and body
deadlines 4 s), runs every attack in turn and prints one JSON object per attack.
With --checkout, gunicorn runs that checkout's gateway.py and gunicorn.conf.py
(its kitchenware package first on PYTHONPATH; --python must then be an interpreter
without an editable kitchenware install, which would win); --no-proxy runs gunicorn
alone, as the gateway ran before nginx was put in front of it.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from devtools.benchlib import machine
from devtools.stack import REPO, Gateway, ModelServer, export_untrained_model, rss_kb

HEADER_TIMEOUT_S = 4
BODY_TIMEOUT_S = 4
PROBE_ANSWER_S = 2.0


def timed_get(url: str, timeout: float = PROBE_ANSWER_S) -> tuple[int | None, float]:
    """(status or None when none came in `timeout`, seconds)."""
    started = time.monotonic()
    try:
        status = requests.get(url, timeout=timeout).status_code
    except requests.RequestException:
        status = None
    return status, round(time.monotonic() - started, 2)


def post_photo(url: str, photo: bytes, timeout: float = 10.0) -> int | None:
    try:
        return requests.post(url + "/predict", data=photo, timeout=timeout,
                             headers={"Content-Type": "image/jpeg"}).status_code  # fmt: skip
    except requests.RequestException:
        return None


class Holder:
    """A raw connection that sends `head`, then `trickle` one byte per `interval` seconds,
    and notes when the server answered and when it closed (None: still open at the end)."""

    def __init__(self, port: int, head: bytes, trickle: bytes = b"", interval: float = 1.0,
                 observe_s: float = 30.0) -> None:  # fmt: skip
        self.port, self.head, self.trickle = port, head, trickle
        self.interval, self.observe_s = interval, observe_s
        self.answer = b""
        self.answered_after: float | None = None
        self.closed_after: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            self.closed_after = 0.0
            return
        with sock:
            sock.settimeout(0.2)
            pending = iter(self.trickle)
            next_byte = started
            try:
                sock.sendall(self.head)
                while not self.stop.is_set() and time.monotonic() - started < self.observe_s:
                    if self.trickle and time.monotonic() >= next_byte:
                        byte = next(pending, None)
                        if byte is not None:
                            sock.sendall(bytes([byte]))
                        next_byte += self.interval
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        self.closed_after = round(time.monotonic() - started, 1)
                        return
                    if self.answered_after is None:
                        self.answered_after = round(time.monotonic() - started, 1)
                    self.answer += chunk
            except OSError:  # reset: closed as well
                self.closed_after = round(time.monotonic() - started, 1)

    def status(self) -> int | None:
        parts = self.answer.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def start_all(holders: list[Holder]) -> list[Holder]:
    for holder in holders:
        holder.thread.start()
    return holders


def stop_all(holders: list[Holder], timeout: float = 60.0) -> None:
    for holder in holders:
        holder.thread.join(timeout)


def summary(holders: list[Holder]) -> dict:
    closed = [h.closed_after for h in holders]
    return {
        "connections": len(holders),
        "closed_by_the_server": sum(c is not None for c in closed),
        "longest_open_s": max((c for c in closed if c is not None), default=None),
        "answers": sorted({str(h.status()) for h in holders}),
    }


def expect_continue_without_body(gw: Gateway, photo: bytes, connections: int = 24,
                                 innocents: int = 10, observe_s: float = 14.0) -> dict:  # fmt: skip
    """POST /predict, Content-Length 100000, Expect: 100-continue, then no body at all;
    meanwhile one innocent upload a second."""
    head = (b"POST /predict HTTP/1.1\r\nHost: gw\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n")  # fmt: skip
    holders = start_all([Holder(gw.port, head, observe_s=observe_s) for _ in range(connections)])
    time.sleep(1.0)
    statuses = []
    for _ in range(innocents):
        statuses.append(post_photo(gw.url, photo, timeout=5))
        time.sleep(0.5)
    stop_all(holders)
    return {"attack": "expect-100-continue, no body", **summary(holders),
            "innocent_uploads": statuses}  # fmt: skip


def big_head_trickled(gw: Gateway, connections: int = 8, observe_s: float = 30.0) -> dict:
    """GET /healthz with nine 8 KB headers: the first 64 KB at once, the rest 1 byte / 2 s;
    probes meanwhile."""
    headers = b"".join(b"X-Pad-%d: " % i + b"a" * 8000 + b"\r\n" for i in range(9))
    head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n"
    cut = 64 * 1024
    holders = start_all([Holder(gw.port, head[:cut], head[cut:], interval=2.0, observe_s=observe_s)
                         for _ in range(connections)])  # fmt: skip
    time.sleep(1.0)
    probes = [timed_get(gw.probe_url + "/healthz") for _ in range(8)]
    stop_all(holders)
    return {"attack": "64 KB+ head trickled 1 byte / 2 s", **summary(holders),
            "healthz_during": probes}  # fmt: skip


def get_with_trickled_body(gw: Gateway, connections: int = 8, observe_s: float = 15.0) -> dict:
    """GET /healthz with Content-Length 1000000 and a body of 1 byte / s; probes meanwhile."""
    head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n"
    holders = start_all([Holder(gw.port, head, b"x" * 100, interval=1.0, observe_s=observe_s)
                         for _ in range(connections)])  # fmt: skip
    time.sleep(1.0)
    probes = [timed_get(gw.probe_url + "/healthz") for _ in range(8)]
    stop_all(holders)
    answered = [h.answered_after for h in holders]
    return {"attack": "GET /healthz, Content-Length 1000000, body trickled", **summary(holders),
            "answered_after_s": answered, "healthz_during": probes}  # fmt: skip


def idle_connections(gw: Gateway, count: int = 2600) -> dict:
    """`count` connections that send nothing; probes meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 1024)), hard))
    sockets, refused = [], 0
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", gw.port), timeout=2))
        except OSError:
            refused += 1
    probes = [timed_get(gw.probe_url + "/healthz") for _ in range(8)]
    public = [timed_get(gw.url + "/healthz") for _ in range(8)]
    for sock in sockets:
        sock.close()
    return {"attack": f"{count} idle connections", "opened": len(sockets), "refused": refused,
            "healthz_during": probes, "public_healthz_during": public}  # fmt: skip


def process_rss_mb(gw: Gateway) -> float:
    pids = [gw.pid, *gw.worker_pids()]
    if gw.proxy is not None:
        pids += [gw.proxy.pid, *children_of(gw.proxy.pid)]
    return round(sum(rss_kb(pid) for pid in pids) / 1024, 1)


def children_of(pid: int) -> list[int]:
    from devtools.stack import children

    return children(pid)


def probe_flood(gw: Gateway, photo: bytes, clients: int = 16, seconds: float = 10.0) -> dict:
    """`clients` threads sending GET /healthz on the public port as fast as they can, while
    one client uploads photos; the gateway's memory (gunicorn + nginx) before and after."""
    rss_before = process_rss_mb(gw)
    stop = threading.Event()
    flood: dict[str, int] = {}
    lock = threading.Lock()

    def hammer() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                key = str(session.get(gw.url + "/healthz", timeout=5).status_code)
            except requests.RequestException:
                key = "none"
            with lock:
                flood[key] = flood.get(key, 0) + 1

    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(hammer)
        started, uploads = time.monotonic(), []
        while time.monotonic() - started < seconds:
            t0 = time.monotonic()
            uploads.append((post_photo(gw.url, photo, timeout=10), round(time.monotonic() - t0, 2)))
        stop.set()
    return {"attack": f"GET /healthz flood on the public port, {clients} clients, {seconds:g} s",
            "flood_answers": flood, "upload_statuses": sorted({str(s) for s, _ in uploads}),
            "uploads": len(uploads), "slowest_upload_s": max(t for _, t in uploads),
            "rss_mb_before": rss_before, "rss_mb_after": process_rss_mb(gw)}  # fmt: skip


def run_all(gw: Gateway, photo: bytes) -> list[dict]:
    return [
        expect_continue_without_body(gw, photo),
        big_head_trickled(gw),
        get_with_trickled_body(gw),
        idle_connections(gw),
        probe_flood(gw, photo),
    ]


def gateway_env(target: str) -> dict[str, str]:
    """Both generations' deadline knobs, so the same command runs before and after."""
    return {"TF_SERVING_HOST": target, "GRPC_TIMEOUT": "10",
            "PROXY_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S), "PROXY_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
            "GUNICORN_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
            "GUNICORN_BODY_TIMEOUT": str(BODY_TIMEOUT_S)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=REPO,
                        help="checkout whose gateway.py and gunicorn.conf.py gunicorn runs")  # fmt: skip
    parser.add_argument("--no-proxy", action="store_true", help="gunicorn alone, no nginx")
    parser.add_argument("--python", help="the python that runs gunicorn (default: .venv-gateway's)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import numpy as np

    from kitchenware.core.images import encode_jpeg

    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    photo = encode_jpeg(pixels)
    with tempfile.TemporaryDirectory(prefix="kw-hostile-") as tmp:
        work = Path(tmp)
        export_untrained_model(work / "models" / "kitchenware", size=96)
        with ModelServer(work / "models" / "kitchenware", work) as server:
            server.wait_ready()
            gw = Gateway(work, gateway_env(server.target), workers=2, threads=4,
                         proxy=not args.no_proxy, checkout=args.checkout,
                         python=args.python)  # fmt: skip
            with gw:
                gw.wait_ready()
                results = run_all(gw, photo)
    report = {"machine": machine(), "checkout": str(args.checkout), "proxy": not args.no_proxy,
              "results": results}  # fmt: skip
    for result in results:
        print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
