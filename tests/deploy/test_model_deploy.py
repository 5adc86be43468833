"""The model server as deployed: name, paths, ports, memory, batching file, healthcheck."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import threading

import pytest
from support.deploy_tools import (
    BATCHING_FILE,
    DEPLOY_MK,
    GATEWAY_DOCKERFILE,
    HEALTHCHECK,
    MODEL_DOCKERFILE,
    PROXY_DOCKERFILE,
    PYTHON_MODEL_DOCKERFILE,
    base_docs,
    batching_text_fields,
    compose,
    containers,
    dockerfile_args,
    dockerfile_copies,
    dockerfile_env,
    dockerfile_json,
    dockerfile_values,
    env_of,
    expand_args,
    parse_quantity_gib,
)

from kitchenware.core.contract import GATEWAY_PORT, GRPC_PORT, REST_PORT

# -------------------------------------------------------------- the model --


def test_model_name_agrees_everywhere():
    from kitchenware.core.contract import MODEL_NAME
    from kitchenware.gateway.config import Settings

    names = {
        "contract": MODEL_NAME,
        "gateway default": Settings().model_name,
        "model image": dockerfile_env(MODEL_DOCKERFILE)["MODEL_NAME"],
        "gateway image": dockerfile_env(GATEWAY_DOCKERFILE)["MODEL_NAME"],
        "compose model": compose()["services"]["model"]["environment"]["MODEL_NAME"],
        "compose gateway": compose()["services"]["gateway"]["environment"]["MODEL_NAME"],
        "healthcheck": re.search(r"MODEL_NAME:-(\w+)", HEALTHCHECK.read_text()).group(1),
    }
    for name in ("model", "gateway"):
        env = env_of(containers(base_docs()[("Deployment", name)])[0])
        names[f"k8s {name}"] = env["MODEL_NAME"]
    from kitchenware.cli import build_parser

    parser, _ = build_parser("model-server")
    names["model-server default"] = parser.parse_args([]).model_name
    assert set(names.values()) == {"kitchenware"}, names


@pytest.mark.parametrize("dockerfile", [MODEL_DOCKERFILE, PYTHON_MODEL_DOCKERFILE])
def test_model_dockerfile_copies_what_export_writes(dockerfile):
    from kitchenware.cli import build_parser

    args = dockerfile_args(dockerfile)
    env = dockerfile_env(dockerfile)
    copies = {expand_args(d, args): s for s, d in dockerfile_copies(dockerfile)}
    served = f"{env['MODEL_BASE_PATH']}/{env['MODEL_NAME']}/{args['MODEL_VERSION']}"
    assert served in copies, f"the model must land where TF Serving looks: {served}"
    export_out = build_parser("export")[0].parse_args([]).out
    assert [expand_args(s, args) for s in copies[served]] == [
        f"{export_out}/{args['MODEL_VERSION']}"
    ]
    if dockerfile != MODEL_DOCKERFILE:
        return
    from kitchenware.model_server.cli import config_from_args

    server_base = config_from_args(build_parser("model-server")[0].parse_args([]), {})
    server_base = server_base.model_base_path
    assert server_base == export_out
    assert "models/kitchenware/$(MODEL_VERSION)/saved_model.pb" in DEPLOY_MK.read_text()
    from_line = dockerfile_values(MODEL_DOCKERFILE, "FROM")
    assert from_line == ["tensorflow/serving:${TF_SERVING_VERSION}"]
    # a pinned release, the same one the version-skew check loads exports with
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TF_SERVING_VERSION"])


@pytest.mark.slow
def test_export_layout_is_what_the_model_image_copies(exported_model):
    """A real `export_saved_model` output has the files TF Serving loads from the copied folder."""
    from kitchenware.core.contract import WARMUP_FILE, versions

    assert exported_model.name == dockerfile_env(MODEL_DOCKERFILE)["MODEL_NAME"]
    version = versions(exported_model)[-1]
    folder = exported_model / str(version)
    assert (folder / "saved_model.pb").is_file()
    assert (folder / "variables").is_dir()
    assert (folder / WARMUP_FILE).is_file()
    assert str(WARMUP_FILE) == "assets.extra/tf_serving_warmup_requests"


def test_ports_agree_everywhere():
    model_ports = [int(p) for p in " ".join(dockerfile_values(MODEL_DOCKERFILE, "EXPOSE")).split()]
    assert model_ports == [GRPC_PORT, REST_PORT]
    assert dockerfile_env(MODEL_DOCKERFILE)["REST_PORT"] == str(REST_PORT)
    assert dockerfile_env(GATEWAY_DOCKERFILE)["PORT"] == str(GATEWAY_PORT)
    services = compose()["services"]
    # Clients reach the proxy; gunicorn's port is the proxy's upstream, not published.
    assert services["proxy"]["ports"] == [f"{GATEWAY_PORT}:{GATEWAY_PORT}"]
    assert "ports" not in services["gateway"]
    assert services["gateway"]["environment"]["TF_SERVING_HOST"] == f"model:{GRPC_PORT}"
    gunicorn_port = services["gateway"]["environment"]["PORT"]
    assert services["proxy"]["environment"]["GATEWAY_UPSTREAM"] == f"gateway:{gunicorn_port}"
    assert dockerfile_env(PROXY_DOCKERFILE)["PROXY_PORT"] == str(GATEWAY_PORT)
    docs = base_docs()
    model = containers(docs[("Deployment", "model")])[0]
    gateway, proxy = containers(docs[("Deployment", "gateway")])
    assert {p["name"]: p["containerPort"] for p in model["ports"]} == {
        "grpc": GRPC_PORT,
        "rest": REST_PORT,
    }
    assert env_of(model)["REST_PORT"] == str(REST_PORT)
    assert "ports" not in gateway
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {
        "http": GATEWAY_PORT,
        "probes": int(dockerfile_env(PROXY_DOCKERFILE)["PROXY_PROBE_PORT"]),
    }
    assert env_of(proxy)["GATEWAY_UPSTREAM"] == env_of(gateway)["GUNICORN_BIND"]
    assert env_of(gateway)["TF_SERVING_HOST"].endswith(f":{GRPC_PORT}")
    assert model["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    public = docs[("Service", "gateway")]
    assert public["spec"]["type"] == "LoadBalancer"
    assert public["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    from kitchenware.cli import build_parser
    from kitchenware.gateway.config import Settings

    assert build_parser("model-server")[0].parse_args([]).port == GRPC_PORT
    assert Settings().tf_serving_host == f"localhost:{GRPC_PORT}"


def test_compose_memory_limits_cover_the_measured_peaks():
    services = compose()["services"]
    assert parse_quantity_gib(services["model"]["mem_limit"].upper() + "i") >= 1.0
    assert parse_quantity_gib(services["gateway"]["mem_limit"].upper().replace("M", "Mi")) >= 0.25
    assert services["gateway"]["depends_on"]["model"]["condition"] == "service_healthy"
    for service in services.values():
        assert service["restart"] in {"unless-stopped", "always", "on-failure"}


# ------------------------------------------------------------- batching --


def test_batching_file_is_accepted_by_the_model_server():
    from kitchenware.cli import main
    from kitchenware.model_server.batching_config import load_batching_parameters

    config = load_batching_parameters(BATCHING_FILE)
    fields = batching_text_fields(BATCHING_FILE.read_text())
    assert fields == {
        "max_batch_size": config.max_batch_size,
        "batch_timeout_micros": config.batch_timeout_micros,
        "max_enqueued_batches": config.max_enqueued_batches,
        "num_batch_threads": config.num_batch_threads,
        "enable_large_batch_splitting": config.enable_large_batch_splitting,
        "max_execution_batch_size": config.max_execution_batch_size,
    }
    assert (
        main(["model-server", "--check-config", "--batching-parameters-file", str(BATCHING_FILE)])
        == 0
    )


def test_model_server_rejects_a_broken_batching_file(tmp_path):
    from kitchenware.core.errors import KitchenwareError
    from kitchenware.model_server.batching_config import load_batching_parameters

    broken = tmp_path / "batching.txt"
    broken.write_text(BATCHING_FILE.read_text().replace("max_batch_size", "max_batchsize"))
    with pytest.raises(KitchenwareError):
        load_batching_parameters(broken)


def test_batching_file_fits_the_gateway_and_the_model_pod():
    from kitchenware.gateway.config import Settings

    fields = batching_text_fields(BATCHING_FILE.read_text())
    # Real TF Serving refuses a request with more rows than max_batch_size
    # (large-batch splitting is off by default), so one gateway batch must fit.
    assert fields["max_batch_size"] >= Settings().max_batch
    model = containers(base_docs()[("Deployment", "model")])[0]
    assert fields["num_batch_threads"] <= int(model["resources"]["limits"]["cpu"])
    assert fields["num_batch_threads"] <= compose()["services"]["model"]["cpus"]
    copies = {d: s for s, d in dockerfile_copies(MODEL_DOCKERFILE)}
    cmd = dockerfile_json(MODEL_DOCKERFILE, "CMD")
    (flag,) = [a for a in cmd if a.startswith("--batching_parameters_file=")]
    assert copies[flag.split("=", 1)[1]] == ["serving/batching_parameters.txt"]
    assert "--enable_batching=true" in cmd and "--enable_model_warmup=true" in cmd


# ----------------------------------------------------- model healthcheck --


class _FakeStatus(http.server.BaseHTTPRequestHandler):
    """Answers GET /v1/models/kitchenware like TF Serving's REST API, in a chosen state."""

    state = "AVAILABLE"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path != "/v1/models/kitchenware":
            self.send_error(404)
            return
        body = (
            '{\n "model_version_status": [\n  {\n   "version": "1",\n'
            f'   "state": "{self.state}",\n   "status": {{\n    "error_code": "OK",\n'
            '    "error_message": ""\n   }\n  }\n ]\n}\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def status_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeStatus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int, model: str = "kitchenware") -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "REST_PORT": str(port),
        "MODEL_NAME": model,
    }
    return subprocess.run(
        ["bash", str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=20
    )


def test_model_healthcheck_passes_only_when_available(status_server):
    """TF Serving cannot run here: a stand-in answers its REST status format (docs' example)."""
    port = status_server.server_address[1]
    _FakeStatus.state = "AVAILABLE"
    assert run_healthcheck(port).returncode == 0
    for state in ("LOADING", "START", "UNLOADING", "END"):
        _FakeStatus.state = state
        result = run_healthcheck(port)
        assert result.returncode == 1 and "no AVAILABLE version" in result.stderr, state
    _FakeStatus.state = "AVAILABLE"
    result = run_healthcheck(port, model="other")
    assert result.returncode == 1 and "404" in result.stderr


def test_model_healthcheck_fails_when_nothing_listens():
    from devtools.stack import free_port

    result = run_healthcheck(free_port())
    assert result.returncode == 1 and "nothing listens" in result.stderr


def test_model_probes_and_healthchecks_run_the_same_check():
    script = "/usr/local/bin/model-healthcheck"
    copies = {d: s for s, d in dockerfile_copies(MODEL_DOCKERFILE)}
    assert copies[script] == ["serving/model-healthcheck.sh"]
    assert os.access(HEALTHCHECK, os.X_OK)
    assert script in dockerfile_values(MODEL_DOCKERFILE, "HEALTHCHECK")[0]
    assert compose()["services"]["model"]["healthcheck"]["test"] == ["CMD", script]
    model = containers(base_docs()[("Deployment", "model")])[0]
    for probe in ("startupProbe", "readinessProbe"):
        assert model[probe]["exec"]["command"] == [script], probe
