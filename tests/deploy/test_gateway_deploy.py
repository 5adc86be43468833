"""The gateway as deployed: probes, env names, the image's contents and command, offline."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import time

import pytest
from support.deploy_tools import (
    GATEWAY_DOCKERFILE,
    MAKEFILE,
    MODEL_DOCKERFILE,
    PROXY_DOCKERFILE,
    TENSORFLOW_DISTRIBUTIONS,
    base_docs,
    compose,
    containers,
    dockerfile_args,
    dockerfile_copies,
    dockerfile_env,
    dockerfile_json,
    dockerfile_values,
    env_of,
    expand_args,
    makefile_variable,
)
from support.paths import REPO

from devtools.stack import free_port
from kitchenware.core.contract import GATEWAY_PORT, GRPC_PORT

# ------------------------------------------------------------ the gateway --


def gateway_app():
    from kitchenware.gateway import create_app

    return create_app()


def test_gateway_probe_paths_are_routes_of_the_gateway():
    rules = {rule.rule: rule.methods for rule in gateway_app().url_map.iter_rules()}
    container = containers(base_docs()[("Deployment", "gateway")])[0]
    probe_paths = [container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")]
    assert probe_paths == ["/readyz", "/healthz"]
    compose_check = " ".join(compose()["services"]["gateway"]["healthcheck"]["test"])
    image_check = dockerfile_values(GATEWAY_DOCKERFILE, "HEALTHCHECK")[0]
    for text in (compose_check, image_check):
        probe_paths += re.findall(r"127\.0\.0\.1:[^/]*(/\w+)", text)
    assert len(probe_paths) == 4
    for path in probe_paths:
        assert path in rules and "GET" in rules[path], f"{path} is not a GET route of the gateway"
    assert "/nosuchprobe" not in rules  # the lookup itself can fail


def gateway_env_names() -> set[str]:
    """Every variable the gateway process reads: config.py's constants + gunicorn.conf.py's."""
    from kitchenware.gateway import config

    names = {
        value
        for key, value in vars(config).items()
        if key.isupper() and isinstance(value, str) and key == value
    }
    gunicorn_conf = (REPO / "gunicorn.conf.py").read_text()
    names |= set(
        re.findall(r"""(?:_int_env\(|environ\.get\(|environ\[)\s*["'](\w+)["']""", gunicorn_conf)
    )
    return names


def test_gateway_env_names_are_ones_the_gateway_reads():
    known = gateway_env_names()
    assert {
        "TF_SERVING_HOST",
        "MODEL_NAME",
        "PORT",
        "GUNICORN_WORKERS",
        "PROMETHEUS_MULTIPROC_DIR",
    } <= known
    deployment_env = env_of(containers(base_docs()[("Deployment", "gateway")])[0])
    compose_env = compose()["services"]["gateway"]["environment"]
    image_env = dockerfile_env(GATEWAY_DOCKERFILE)
    gateway_only = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    for where, env in (("k8s", deployment_env), ("compose", compose_env), ("image", image_env)):
        unknown = set(env) - known - gateway_only
        assert not unknown, f"{where}: the gateway reads no variable named {sorted(unknown)}"
    assert "TF_SERVNG_HOST" not in known  # a misspelt name would be caught


def test_gateway_settings_accept_the_deployed_values(monkeypatch):
    from kitchenware.gateway.config import Settings

    deployment_env = env_of(containers(base_docs()[("Deployment", "gateway")])[0])
    compose_env = {k: str(v) for k, v in compose()["services"]["gateway"]["environment"].items()}
    for env in (deployment_env, compose_env):
        settings = Settings.from_env(env)
        assert settings.model_name == "kitchenware"
        assert settings.tf_serving_host.endswith(f":{GRPC_PORT}")
    binds = []
    for env in (deployment_env, compose_env):
        monkeypatch.delenv("GUNICORN_BIND", raising=False)  # set by the first only
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/not-created")
        conf = runpy.run_path(str(REPO / "gunicorn.conf.py"))
        assert conf["workers"] == int(env["GUNICORN_WORKERS"])
        assert conf["worker_class"] == "gthread"
        binds.append(conf["bind"])
    # Kubernetes: the pod's loopback, where only the proxy beside it connects.
    assert binds[0] == "127.0.0.1:8000"
    assert binds[1] == "0.0.0.0:8000"  # compose: the network, but the port is not published


def test_gateway_balances_grpc_over_the_headless_model_service():
    import inspect

    from kitchenware.serving.grpc_client import ServingClient

    docs = base_docs()
    host = env_of(containers(docs[("Deployment", "gateway")])[0])["TF_SERVING_HOST"]
    match = re.fullmatch(r"dns:///([\w-]+)\.([\w-]+)\.svc\.cluster\.local:(\d+)", host)
    assert match, host
    service = docs[("Service", match.group(1))]
    assert service["spec"]["clusterIP"] == "None", "round_robin needs a headless Service"
    assert service["metadata"]["namespace"] == match.group(2)
    assert int(match.group(3)) in [p["port"] for p in service["spec"]["ports"]]
    lb = inspect.signature(ServingClient).parameters["load_balancing"].default
    assert lb == "round_robin"


def test_gateway_image_installs_no_tensorflow():
    names = set()
    for line in (REPO / "requirements" / "gateway.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>!~\[ ;]", line)[0].lower().replace("_", "-"))
    assert {"flask", "gunicorn", "grpcio"} <= names
    assert not names & TENSORFLOW_DISTRIBUTIONS, names & TENSORFLOW_DISTRIBUTIONS
    installs = [
        cmd
        for rest in dockerfile_values(GATEWAY_DOCKERFILE, "RUN")
        for cmd in re.split(r"&&|;", rest)
        if "pip install" in cmd
    ]
    assert len(installs) == 3, installs
    for cmd in installs:
        # Only the pinned gateway tier; anything else must not pull dependencies.
        assert "-r requirements/gateway.txt" in cmd or "--no-deps" in cmd, cmd
    args = dockerfile_args(GATEWAY_DOCKERFILE)
    assert args["TFS_API"] == makefile_variable(MAKEFILE, "TFS_API")
    assert re.fullmatch(r"tensorflow-serving-api==[\d.]+", args["TFS_API"])
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), "pin the slim Python 3.11 release"
    assert [v for v in dockerfile_values(GATEWAY_DOCKERFILE, "FROM")] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE}",
    ]
    assert dockerfile_values(GATEWAY_DOCKERFILE, "USER") == ["10001"]
    assert dockerfile_values(GATEWAY_DOCKERFILE, "EXPOSE") == [str(GATEWAY_PORT)]
    assert dockerfile_json(GATEWAY_DOCKERFILE, "CMD") == [
        "gunicorn",
        "gateway:app",
        "-c",
        "gunicorn.conf.py",
    ]


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy():
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is ignored first"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for forbidden in ("data", ".venv", ".venv-gateway", "runs", "demo", ".git"):
        assert forbidden not in allowed
    for dockerfile in (MODEL_DOCKERFILE, GATEWAY_DOCKERFILE, PROXY_DOCKERFILE):
        args = dockerfile_args(dockerfile)
        for sources, _ in dockerfile_copies(dockerfile):
            for source in sources:
                source = expand_args(source, args).rstrip("/")
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"{dockerfile.name} copies {source}, which .dockerignore keeps out"
                )
                assert (REPO / source).exists() or source.startswith("models/"), source


# ------------------------------------------ the gateway image, without Docker --

GATEWAY_VENV = REPO / ".venv-gateway"


@pytest.fixture
def gateway_image_layout(tmp_path):
    """The gateway image's files outside Docker: /app holds what the Dockerfile copies,
    the package is a fresh copy of kitchenware/ next to the TensorFlow-free gateway venv
    (`make gateway-venv`, installed exactly as the Dockerfile installs it)."""
    python = GATEWAY_VENV / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail("make test builds .venv-gateway before the tests")
        pytest.skip("no .venv-gateway (make gateway-venv)")
    app = tmp_path / "app"
    app.mkdir()
    for sources, destination in dockerfile_copies(GATEWAY_DOCKERFILE, last_stage_only=True):
        if destination == "./":
            for source in sources:
                shutil.copy(REPO / source, app / source)
    # The package: exactly the parts the build stage copies (the TF-free tiers).
    site = tmp_path / "site"
    for sources, destination in dockerfile_copies(GATEWAY_DOCKERFILE):
        for source in sources:
            if destination.startswith("kitchenware"):
                target = site / destination
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / source, target)
    assert (site / "kitchenware" / "gateway" / "app.py").is_file()
    assert not (site / "kitchenware" / "training").exists()
    return python, app, site


def test_gateway_image_command_and_healthcheck_work_without_tensorflow(
    gateway_image_layout, tmp_path
):
    python, app, site = gateway_image_layout
    assert sorted(p.name for p in app.iterdir()) == ["gateway.py", "gunicorn.conf.py"]
    port = free_port()
    env = dockerfile_env(GATEWAY_DOCKERFILE)
    env.update(
        PATH=f"{python.parent}:/usr/bin:/bin",
        PYTHONPATH=str(site),
        PORT=str(port),
        # Loopback only in tests; the image binds 0.0.0.0:$PORT.
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="1",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "tmp" / "prometheus-multiproc"),
        HOME=str(tmp_path),
    )
    assert env["PROMETHEUS_MULTIPROC_DIR"].endswith(
        dockerfile_env(GATEWAY_DOCKERFILE)["PROMETHEUS_MULTIPROC_DIR"][4:]
    )
    command = dockerfile_json(GATEWAY_DOCKERFILE, "CMD")
    healthcheck = json.loads(
        dockerfile_values(GATEWAY_DOCKERFILE, "HEALTHCHECK")[0].split("CMD", 1)[1]
    )
    server = subprocess.Popen(
        [str(python), "-m", *command],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            check = subprocess.run(healthcheck, cwd=app, env=env, capture_output=True, timeout=10)
            if check.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.3)
        assert check.returncode == 0, check.stderr
        # No model server behind it: ready must say no, with a reason.
        ready = subprocess.run(
            [
                str(python),
                "-c",
                f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=8)",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert ready.returncode != 0 and "503" in ready.stderr
        no_tf = subprocess.run(
            [
                str(python),
                "-c",
                "import importlib.util as u; print(u.find_spec('tensorflow.python'))",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        # tensorflow-protobuf ships a `tensorflow` package of protos only; the
        # TensorFlow runtime lives in tensorflow.python.
        assert no_tf.stdout.strip() == "None", "the gateway tier must not contain TensorFlow"
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output


def test_gateway_waits_for_endpoint_removal_then_drains_within_the_grace_period():
    doc = base_docs()[("Deployment", "gateway")]
    container = containers(doc)[0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, command
    pause_s = float(command[1])
    graceful_s = int(env_of(container)["GUNICORN_GRACEFUL_TIMEOUT"])
    # Endpoint controllers and kube-proxy take a few seconds to drop a terminating pod.
    assert pause_s >= 3
    grace_s = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause_s + graceful_s < grace_s, (pause_s, graceful_s, grace_s)
