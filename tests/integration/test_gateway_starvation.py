"""Health checks under load and slow clients, against the real gateway under gunicorn.

Kubernetes restarts a gateway whose /healthz misses three 5 s probes and drops one
whose /readyz misses two. Before the worker read request heads in its event loop
and served probes from threads of their own, /predict requests waiting on a stuck
model server, or a few clients sending one header byte every second, held every
gunicorn thread and no probe was answered at all. Here the model server is real
and SIGSTOPped (every /predict waits for GRPC_TIMEOUT), and the slow clients are
raw sockets on 127.0.0.1.
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
PROBES = 6
HEADER_TIMEOUT_S = 4
BODY_TIMEOUT_S = 4


def probe_answers(url: str, path: str) -> list[int | None]:
    """PROBES probes of `path`, one a second: each status, None when none came within 5 s."""
    statuses = []
    for _ in range(PROBES):
        try:
            statuses.append(requests.get(url + path, timeout=PROBE_TIMEOUT_S).status_code)
        except requests.RequestException:
            statuses.append(None)
        time.sleep(1)
    return statuses


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
            time.sleep(2)  # every gunicorn thread now waits on the stopped server
            assert not any(f.done() for f in hanging)
            health = probe_answers(gateway.url, "/healthz")
            ready = probe_answers(gateway.url, "/readyz")
            server.proc.send_signal(signal.SIGCONT)
            answers = [f.result().status_code for f in hanging]
    print(f"\n/healthz {health}, /readyz {ready} while 16 uploads waited")
    assert health == [200] * PROBES
    # The model server does not answer: not ready, and said so within the probe's time.
    assert None not in ready and set(ready) <= {200, 503}
    assert set(answers) <= {200, 503, 504}


def test_a_full_queue_is_shed_with_fast_503s(model_server, sample_photos, tmp_path):
    server = model_server
    env = {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "15", "GUNICORN_MAX_PENDING": "2"}
    gateway = guarded_gateway(tmp_path, env, workers=1, threads=2)
    photo = sample_photos[0].read_bytes()
    with gateway:
        stop_after_one_answer(server, gateway, photo)
        with ThreadPoolExecutor(2) as pool:
            hanging = [pool.submit(post_photo, gateway.url, photo) for _ in range(2)]
            time.sleep(2)
            shed = [post_photo(gateway.url, photo, timeout=PROBE_TIMEOUT_S) for _ in range(4)]
            health = requests.get(gateway.url + "/healthz", timeout=PROBE_TIMEOUT_S).status_code
            server.proc.send_signal(signal.SIGCONT)
            held = [f.result().status_code for f in hanging]
    assert [r.status_code for r in shed] == [503] * 4
    assert {r.json()["error"]["code"] for r in shed} == {"overloaded"}
    assert {r.headers.get("Retry-After") for r in shed} == {"1"}
    assert health == 200
    assert set(held) <= {200, 503, 504}


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
    """A whole body that waited for a thread longer than the body timeout is still read."""
    server = model_server
    env = {"TF_SERVING_HOST": server.target, "GRPC_TIMEOUT": "6",
           "GUNICORN_BODY_TIMEOUT": "2"}  # fmt: skip
    gateway = guarded_gateway(tmp_path, env, workers=1, threads=1)
    photo = sample_photos[0].read_bytes()
    with gateway:
        stop_after_one_answer(server, gateway, photo)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post_photo, gateway.url, photo)
            time.sleep(0.5)
            # Waits ~6 s for the one thread, its body sent 0.5 s after its head.
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


SLOW_CASES = {
    "header-bytes": (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n", b"X-Slow: " + b"a" * 60),
    "body-bytes": (
        b"POST /predict HTTP/1.1\r\nHost: gw\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 200\r\n\r\n",
        b"\xff" * 60,
    ),
}


@pytest.mark.parametrize("case", SLOW_CASES.values(), ids=SLOW_CASES.keys())
def test_slow_clients_are_cut_off_and_probes_keep_answering(tmp_path, case):
    env = {"TF_SERVING_HOST": f"127.0.0.1:{free_port()}", "GRPC_TIMEOUT": "2",
           "GUNICORN_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
           "GUNICORN_BODY_TIMEOUT": str(BODY_TIMEOUT_S)}  # fmt: skip
    gateway = guarded_gateway(tmp_path, env, workers=2, threads=4)
    head, trickle = case
    with gateway:
        clients = [SlowClient(gateway.port, head, trickle) for _ in range(16)]
        for client in clients:
            client.thread.start()
        time.sleep(1.5)  # every slow client has sent its first bytes
        health = probe_answers(gateway.url, "/healthz")
        for client in clients:
            client.thread.join(30)
    closed = [c.closed_after for c in clients]
    print(f"\n/healthz {health} during 16 slow clients; closed after {closed}")
    assert health == [200] * PROBES
    # Each was closed by the deadline (plus the worker's 1 s sweep), long before its
    # 60 bytes were sent, and was told why.
    assert all(t is not None and t < HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 3 for t in closed)
    for client in clients:
        status_line, _, rest = client.answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), client.answer[:200]
        body = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "request_timeout"
