"""Health checks under load and slow clients, against the gateway as deployed.

Kubernetes restarts a gateway whose /healthz misses three 5 s probes and drops one
whose /readyz misses two. With gunicorn alone, /predict requests waiting on a stuck
model server, or a few clients sending one header byte every second, held every
gunicorn thread and no probe was answered at all. The gateway now runs behind nginx
(proxy/nginx.conf.template), which buffers whole requests before gunicorn sees them
and passes at most workers x threads - 2 at once. Here the model server is real and
SIGSTOPped (every /predict waits for GRPC_TIMEOUT), and the slow clients are raw
sockets on 127.0.0.1. Probes are sent to the public port and to kubelet's port.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support.paths import guarded_gateway

from devtools.stack import ModelServer, free_port

pytestmark = pytest.mark.slow

PROBE_TIMEOUT_S = 5.0  # timeoutSeconds of both probes in kube-config/base/gateway-deployment.yaml
PROBE_ANSWER_S = 2.0  # what this suite demands, well inside that
PROBES = 6
HEADER_TIMEOUT_S = 4
BODY_TIMEOUT_S = 4
GRPC_TIMEOUT_S = 2


def probe_answers(url: str, path: str, timeout: float = PROBE_ANSWER_S) -> list[int | None]:
    """PROBES probes of `path`, one a second: each status, None when none came in `timeout`."""
    statuses = []
    for _ in range(PROBES):
        try:
            statuses.append(requests.get(url + path, timeout=timeout).status_code)
        except requests.RequestException:
            statuses.append(None)
        time.sleep(1)
    return statuses


def page_while_saturated(url: str) -> dict[str, tuple[int | None, str]]:
    """The web page and its assets: (status, media type) of each; the page's security
    headers must be on every one that is answered."""
    from kitchenware.gateway.app import SECURITY_HEADERS

    answers = {}
    for path in ("/", "/static/app.js", "/static/style.css"):
        try:
            response = requests.get(url + path, timeout=PROBE_ANSWER_S)
        except requests.RequestException:
            answers[path] = (None, "")
            continue
        if response.status_code == 200:
            for header, value in SECURITY_HEADERS.items():
                assert response.headers.get(header) == value, (path, header)
        media = response.headers.get("Content-Type", "").split(";")[0]
        answers[path] = (response.status_code, media)
    return answers


def proxy_log_statuses(gateway) -> list[int]:
    """The status of each request in the proxy's JSON access log."""
    return [json.loads(line)["status"] for line in gateway.proxy.log_path.read_text().splitlines()
            if line.startswith("{")]  # fmt: skip


@pytest.fixture
def model_server(exported_model, tmp_path):
    """A real model server, ready (continued at the end if a test stopped it)."""
    base = tmp_path / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    with ModelServer(base, tmp_path) as server:
        server.wait_ready()
        yield server
        server.proc.send_signal(signal.SIGCONT)


def stop_after_one_answer(server: ModelServer, gateway, photo: bytes) -> None:
    """SIGSTOP the model server once the gateway has answered through it: calls then hang."""
    gateway.wait_ready()  # the gateway's gRPC channels connect and learn the model's size
    assert post_photo(gateway.url, photo).status_code == 200
    server.proc.send_signal(signal.SIGSTOP)


def post_photo(url: str, photo: bytes, timeout: float = 60) -> requests.Response:
    return requests.post(url + "/predict", data=photo, timeout=timeout,
                         headers={"Content-Type": "image/jpeg"})  # fmt: skip


def test_probes_answer_while_every_thread_waits_on_the_model_server(
    model_server, sample_photos, tmp_path
):
    server = model_server
    env = {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "25"}
    gateway = guarded_gateway(tmp_path, env, workers=2, threads=4)
    photo = sample_photos[0].read_bytes()
    with gateway:
        stop_after_one_answer(server, gateway, photo)
        with ThreadPoolExecutor(16) as pool:
            hanging = [pool.submit(post_photo, gateway.url, photo) for _ in range(16)]
            time.sleep(2)
            # 5 (the proxy's bound, 2 x 4 - 3) wait on the stopped server; the rest were shed.
            shed = [f.result() for f in hanging if f.done()]
            assert [r.status_code for r in shed] == [503] * 11
            assert {r.json()["error"]["code"] for r in shed} == {"overloaded"}
            health = probe_answers(gateway.url, "/healthz")
            kubelet_health = probe_answers(gateway.probe_url, "/healthz")
            page = page_while_saturated(gateway.url)
            # /readyz itself waits up to 3 s for a model server that does not answer
            # (app.READY_TIMEOUT_S): kubelet's 5 s is its bound.
            ready = probe_answers(gateway.probe_url, "/readyz", PROBE_TIMEOUT_S)
            server.proc.send_signal(signal.SIGCONT)
            answers = [f.result().status_code for f in hanging]
    print(f"\n/healthz {health} (kubelet port {kubelet_health}), /readyz {ready} "
          f"while 16 uploads waited: {answers}")  # fmt: skip
    assert health == kubelet_health == [200] * PROBES
    # The page and its assets come from the proxy: no gunicorn thread needed (they were
    # shed with 503 `overloaded` like /predict when they waited for one).
    assert page == {
        "/": (200, "text/html"),
        "/static/app.js": (200, "text/javascript"),
        "/static/style.css": (200, "text/css"),
    }
    # The model server does not answer: not ready, and said so within the probe's time.
    assert None not in ready and set(ready) <= {200, 503}
    assert set(answers) <= {200, 503, 504}


def test_a_full_queue_is_shed_with_fast_503s(model_server, sample_photos, tmp_path):
    server = model_server
    env = {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "15", "PROXY_UPSTREAM_CONNS": "2"}
    gateway = guarded_gateway(tmp_path, env, workers=1, threads=3)
    photo = sample_photos[0].read_bytes()
    with gateway:
        stop_after_one_answer(server, gateway, photo)
        with ThreadPoolExecutor(2) as pool:
            hanging = [pool.submit(post_photo, gateway.url, photo) for _ in range(2)]
            time.sleep(2)
            started = time.monotonic()
            shed = [post_photo(gateway.url, photo, timeout=PROBE_TIMEOUT_S) for _ in range(4)]
            shed_s = time.monotonic() - started
            health = requests.get(
                gateway.probe_url + "/healthz", timeout=PROBE_ANSWER_S
            ).status_code
            server.proc.send_signal(signal.SIGCONT)
            held = [f.result().status_code for f in hanging]
    assert [r.status_code for r in shed] == [503] * 4
    assert {r.json()["error"]["code"] for r in shed} == {"overloaded"}
    assert {r.headers.get("Retry-After") for r in shed} == {"1"}
    assert shed_s < 2.0, f"4 sheds took {shed_s:.2f} s"
    assert health == 200
    assert set(held) <= {200, 503, 504}
    # Each refusal is a line in the proxy's access log (docu/RELIABILITY.md).
    assert proxy_log_statuses(gateway).count(503) >= 4


def send_head_then_body(port: int, photo: bytes) -> bytes:
    """A prompt client whose body follows its head by 0.5 s (the loop reads the head alone)."""
    head = (b"POST /predict HTTP/1.1\r\nHost: gw\r\nContent-Type: image/jpeg\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(photo))  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        time.sleep(0.5)
        sock.sendall(photo)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_time_queued_behind_a_stuck_model_is_not_charged_to_the_client(
    model_server, sample_photos, tmp_path
):
    """A prompt body behind a busy gateway is never a 408: the proxy reads it at once."""
    server = model_server
    env = {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "6",
           "PROXY_BODY_TIMEOUT": "2", "PROXY_UPSTREAM_CONNS": "2"}  # fmt: skip
    gateway = guarded_gateway(tmp_path, env, workers=1, threads=3)
    photo = sample_photos[0].read_bytes()
    with gateway:
        stop_after_one_answer(server, gateway, photo)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post_photo, gateway.url, photo)
            time.sleep(0.5)
            # Its body follows its head by 0.5 s while the first waits on the model.
            queued = pool.submit(send_head_then_body, gateway.port, photo)
            status = first.result().status_code
            answer = queued.result()
        server.proc.send_signal(signal.SIGCONT)
    # The model server does not answer: 503/504 from the gRPC deadline, never a 408.
    assert status in (503, 504)
    assert answer.split(b" ", 2)[1] in (b"503", b"504"), answer[:300]


class SlowClient:
    """A raw connection sending `head` then `trickle`, one byte every `interval` seconds."""

    def __init__(self, port: int, head: bytes, trickle: bytes, interval: float = 1.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.head, self.trickle, self.interval = head, trickle, interval
        self.answer = b""
        self.closed_after: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        self.sock.settimeout(self.interval)
        try:
            self.sock.sendall(self.head)
            for byte in self.trickle:
                self.sock.sendall(bytes([byte]))
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    continue
                self.answer += chunk
                if not chunk:
                    break
        except OSError:  # reset by the server: closed as well
            pass
        self.closed_after = time.monotonic() - started
        self.sock.close()


BODY_HEAD = (b"POST /predict HTTP/1.1\r\nHost: gw\r\nContent-Type: image/jpeg\r\n"
             b"Content-Length: 200\r\n\r\n")  # fmt: skip
# (head sent at once, bytes trickled, seconds between them, the deadline that cuts it)
SLOW_CASES = {
    # The whole head must arrive within PROXY_HEADER_TIMEOUT, however it trickles.
    "header-bytes": (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n", b"X-Slow: " + b"a" * 60, 1.0,
                     HEADER_TIMEOUT_S),
    # A body may not pause longer than PROXY_BODY_TIMEOUT (nginx's body deadline is
    # per read: see test_a_body_trickled_byte_by_byte_holds_no_gunicorn_thread).
    "body-pause": (BODY_HEAD, b"\xff" * 3, BODY_TIMEOUT_S + 3.0, BODY_TIMEOUT_S),
}  # fmt: skip


def slow_gateway(tmp_path):
    env = {"TF_SERVING_HOST": f"127.0.0.1:{free_port()}", "GRPC_TIMEOUT": "2",
           "PROXY_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
           "PROXY_BODY_TIMEOUT": str(BODY_TIMEOUT_S)}  # fmt: skip
    return guarded_gateway(tmp_path, env, workers=2, threads=4)


@pytest.mark.parametrize("case", SLOW_CASES.values(), ids=SLOW_CASES.keys())
def test_slow_clients_are_cut_off_and_probes_keep_answering(tmp_path, case):
    head, trickle, interval, deadline = case
    gateway = slow_gateway(tmp_path)
    with gateway:
        clients = [SlowClient(gateway.port, head, trickle, interval) for _ in range(16)]
        for client in clients:
            client.thread.start()
        time.sleep(1.5)  # every slow client has sent its first bytes
        health = probe_answers(gateway.url, "/healthz")
        for client in clients:
            client.thread.join(30)
        logged = proxy_log_statuses(gateway)
    closed = [c.closed_after for c in clients]
    print(f"\n/healthz {health} during 16 slow clients; closed after {closed}")
    assert health == [200] * PROBES
    # Each was closed at its deadline, long before its bytes were all sent. nginx closes
    # without an answer (a timed-out client gets no 408), and logs a 408 for each.
    assert all(t is not None and t < deadline + 2 for t in closed), closed
    assert all(c.answer == b"" for c in clients), [c.answer[:100] for c in clients]
    assert logged.count(408) == 16, logged


def test_a_body_trickled_byte_by_byte_holds_no_gunicorn_thread(tmp_path):
    """nginx's body deadline is per read, so a body trickled at 1 byte/s stays open; but
    it stays in the proxy: all gunicorn threads remain free for the API meanwhile."""
    gateway = slow_gateway(tmp_path)
    with gateway:
        clients = [SlowClient(gateway.port, BODY_HEAD, b"\xff" * 30) for _ in range(16)]
        for client in clients:
            client.thread.start()
        time.sleep(1.5)
        health = probe_answers(gateway.url, "/healthz")
        # 5 requests at once, as many as the proxy passes: none waits for a thread.
        with ThreadPoolExecutor(5) as pool:
            started = time.monotonic()
            statuses = list(pool.map(lambda _: requests.post(
                gateway.url + "/predict", data=b"not a photo", timeout=5,
                headers={"Content-Type": "image/jpeg"}).status_code, range(5)))  # fmt: skip
            took = time.monotonic() - started
        still_open = sum(c.thread.is_alive() for c in clients)
    print(
        f"\n/healthz {health}; 5 /predict {statuses} in {took:.2f} s; {still_open} tricklers open"
    )
    assert health == [200] * PROBES
    assert statuses == [415] * 5  # read and refused by the app (not a photo), promptly
    assert took < GRPC_TIMEOUT_S + 2
    assert still_open == 16
