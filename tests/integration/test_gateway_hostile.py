"""The hostile replay of 2026-12-06 (issue 19), against the gateway as deployed.

Each attack failed against the hand-made gunicorn worker the proxy replaced;
docu/RELIABILITY.md gives its figures before and after (`python -m devtools.hostile`
runs the same attacks on any checkout). Here: a real model server, nginx in front
of gunicorn (2 workers x 4 threads), head and body deadlines of 4 s.
"""

from __future__ import annotations

import json
import shutil

import pytest
import requests
from support.paths import guarded_gateway

from devtools import hostile
from devtools.stack import ModelServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(exported_model, tmp_path_factory, sample_photos):
    work = tmp_path_factory.mktemp("hostile")
    base = work / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    with ModelServer(base, work) as server:
        server.wait_ready()
        gateway = guarded_gateway(work, hostile.gateway_env(server.target), workers=2, threads=4)
        with gateway:
            gateway.wait_ready()
            yield gateway, sample_photos[0].read_bytes()


def answered_in_time(probes) -> bool:
    return all(status == 200 and seconds < hostile.PROBE_ANSWER_S for status, seconds in probes)


def test_expect_continue_without_a_body_holds_no_thread(stack):
    gateway, photo = stack
    result = hostile.expect_continue_without_body(gateway, photo)
    print(f"\n{result}")
    assert result["innocent_uploads"] == [200] * len(result["innocent_uploads"])
    assert result["closed_by_the_server"] == result["connections"]
    assert result["longest_open_s"] < hostile.BODY_TIMEOUT_S + 2


def test_a_64_kb_head_trickled_is_refused_and_probes_answer(stack):
    gateway, _ = stack
    result = hostile.big_head_trickled(gateway)
    print(f"\n{result}")
    assert answered_in_time(result["healthz_during"])
    assert result["closed_by_the_server"] == result["connections"]
    assert result["answers"] == ["431"]
    assert result["longest_open_s"] < hostile.HEADER_TIMEOUT_S


def test_a_probe_with_a_trickled_body_reaches_no_thread(stack):
    gateway, _ = stack
    result = hostile.get_with_trickled_body(gateway, observe_s=8.0)
    print(f"\n{result}")
    assert answered_in_time(result["healthz_during"])
    # The body is still arriving: nginx holds it and gunicorn has not seen the request.
    assert result["answered_after_s"] == [None] * result["connections"]


def test_thousands_of_idle_connections_leave_probes_answering(stack):
    gateway, _ = stack
    result = hostile.idle_connections(gateway)
    print(f"\n{result}")
    assert result["opened"] == 2600
    assert answered_in_time(result["healthz_during"])
    assert answered_in_time(result["public_healthz_during"])


def test_a_probe_flood_on_the_public_port_starves_neither_uploads_nor_memory(stack):
    gateway, photo = stack
    result = hostile.probe_flood(gateway, photo)
    print(f"\n{result}")
    assert result["upload_statuses"] == ["200"] and result["uploads"] >= 5
    assert set(result["flood_answers"]) <= {"200", "503"}
    assert result["rss_mb_after"] - result["rss_mb_before"] < 50


def test_every_refusal_is_a_line_in_the_proxy_log(stack):
    """408 (a head that stalls), 413 (a body over the limit), 431 (a head over the limit):
    each refusal is logged with its status, where docu/RELIABILITY.md points operators."""
    gateway, _ = stack
    stalled = hostile.start_all([hostile.Holder(gateway.port, b"GET /stalled HTTP/1.1\r\n")])
    too_big = requests.post(gateway.url + "/too-big", timeout=10,
                            headers={"Content-Length": str(60 * 2**20)}, data=b"")  # fmt: skip
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
    big_head = requests.get(gateway.url + "/big-head", headers={"X-Big": "a" * 9000}, timeout=10)
    assert big_head.status_code == 431
    hostile.stop_all(stalled)
    assert stalled[0].closed_after < hostile.HEADER_TIMEOUT_S + 2
    lines = [json.loads(line) for line in gateway.proxy.log_path.read_text().splitlines()
             if line.startswith("{")]  # fmt: skip
    logged = {line["uri"]: line["status"] for line in lines}
    assert logged["/too-big"] == 413 and logged["/big-head"] == 431, logged
    assert 408 in {line["status"] for line in lines if line["uri"] in ("", "/stalled")}
    assert all(set(line) >= {"time", "client", "uri", "status", "upstream"} for line in lines)
