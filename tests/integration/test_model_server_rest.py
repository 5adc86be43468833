"""TF Serving's REST API in `kitchenware model-server`: status, :predict, and the healthcheck.

A real model server process (TensorFlow, a tiny exported model) on 127.0.0.1;
the JSON shapes are the ones TF Serving documents for its REST API.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from support.paths import REPO, TINY_SIZE

from devtools.stack import ModelServer, free_port

HEALTHCHECK = REPO / "serving" / "model-healthcheck.sh"


def call(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def healthcheck(port: int) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "REST_PORT": str(port), "MODEL_NAME": "kitchenware"}
    return subprocess.run(
        ["bash", str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=20
    )


@pytest.fixture(scope="module")
def rest_server(exported_model, tmp_path_factory, backend):
    port = free_port()
    log_dir = tmp_path_factory.mktemp(f"rest-{backend}")
    with ModelServer(exported_model, log_dir, rest_port=port, backend=backend) as server:
        yield f"http://127.0.0.1:{port}", port, server


def test_status_answers_tf_serving_json(rest_server):
    url, _, _ = rest_server
    expected = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert call(f"{url}/v1/models/kitchenware") == (200, expected)
    assert call(f"{url}/v1/models/kitchenware/versions/1") == (200, expected)
    status, body = call(f"{url}/v1/models/kitchenware/versions/7")
    assert status == 404 and body["error"] == "Could not find version 7 of model kitchenware"
    status, body = call(f"{url}/v1/models/other")
    assert status == 404 and "Could not find any versions of model other" in body["error"]
    status, body = call(f"{url}/v2/anything")
    assert status == 404 and "Malformed request" in body["error"]


def test_the_one_healthcheck_script_passes_against_it(rest_server):
    _, port, _ = rest_server
    result = healthcheck(port)
    assert result.returncode == 0, result.stderr


def test_predict_row_and_columnar_formats_agree(rest_server):
    url, _, _ = rest_server
    image = np.random.default_rng(0).integers(0, 256, (TINY_SIZE, TINY_SIZE, 3)).tolist()
    status, rows = call(f"{url}/v1/models/kitchenware:predict", {"instances": [image, image]})
    assert status == 200, rows
    assert len(rows["predictions"]) == 2
    first = rows["predictions"][0]
    assert set(first) == {"classes", "probabilities"}
    assert first["classes"] == ["cup", "fork", "glass", "knife", "plate", "spoon"]
    assert sum(first["probabilities"]) == pytest.approx(1.0, rel=1e-4)
    status, columns = call(
        f"{url}/v1/models/kitchenware/versions/1:predict", {"inputs": {"image": [image]}}
    )
    assert status == 200, columns
    assert columns["outputs"]["probabilities"][0] == pytest.approx(first["probabilities"], rel=1e-4)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"instances": [[[[1, 2, 3]]]]}, 400, "has shape [1, 1, 1, 3]"),
        ({"instances": [["not a pixel"]]}, 400, "cannot convert to uint8"),
        ({"instances": []}, 400, "non-empty list"),
        ({"instances": [1], "inputs": [1]}, 400, 'exactly one of "instances" or "inputs"'),
        ({"inputs": {"wrong": [1]}}, 400, "keys ['image']"),
        ({"instances": [1], "signature_name": "nope"}, 400, '"nope" not found'),
        ([1, 2], 400, "must be a JSON object"),
    ],
)
def test_predict_refuses_bad_bodies_with_a_clear_error(rest_server, body, status, message):
    url, _, _ = rest_server
    got, answer = call(f"{url}/v1/models/kitchenware:predict", body)
    assert got == status and message in answer["error"], answer


def test_predict_refuses_garbage_and_unknown_models(rest_server):
    url, _, server = rest_server
    got, answer = call(f"{url}/v1/models/kitchenware:predict", raw=b"\xff{not json")
    assert got == 400 and "not JSON" in answer["error"]
    got, answer = call(f"{url}/v1/models/other:predict", {"instances": [1]})
    assert got == 404 and "Latest(other)" in answer["error"]
    got, answer = call(f"{url}/v1/models/kitchenware/versions/3:predict", {"instances": [1]})
    assert got == 404 and "version 3" in answer["error"]
    assert server.alive()


def test_no_version_yet_is_a_closed_port_and_the_healthcheck_fails(tmp_path):
    port = free_port()
    server = ModelServer(tmp_path / "empty", tmp_path, rest_port=port)
    with server.start():
        server.wait_polling()
        assert server.ports_closed()  # TF Serving opens no port before a version loads
        result = healthcheck(port)
        assert result.returncode == 1 and "nothing listens" in result.stderr


def test_a_taken_rest_port_is_logged_and_grpc_keeps_serving(exported_model, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Ready by gRPC: the REST port is someone else's.
        with ModelServer(exported_model, tmp_path, rest_port=port, ready="grpc") as server:
            assert f"REST API cannot listen on 127.0.0.1:{port}" in server.log()
