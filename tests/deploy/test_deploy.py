"""Offline checks of every deployment artefact: no Docker engine or cluster needed.

- Kubernetes: each manifest and each kustomize overlay's rendered output
  against the Kubernetes 1.32 OpenAPI schemas (kubernetes-validate, strict:
  unknown kinds and fields fail). Overlays are rendered by
  tests/support/deploy_tools.py; where `kubectl` is on PATH, its `kubectl kustomize`
  output must equal ours.
- docker-compose.yaml: `docker-compose config -q` (Debian's docker-compose).
- Dockerfiles: hadolint at error threshold.
- Consistency of ports, env var names, model name and path, batching file,
  probe paths and the gateway image's requirements with the code.
Each validator is also shown a broken copy and must reject it.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support.deploy_tools import (
    RenderError,
    containers,
    dockerfile_args,
    dockerfile_copies,
    dockerfile_env,
    dockerfile_instructions,
    dockerfile_json,
    dockerfile_values,
    expand_args,
    load_yaml_documents,
    makefile_prerequisites,
    makefile_variable,
    render_kustomization,
    split_image,
)
from support.paths import REPO

KUBE = REPO / "kube-config"
BASE = KUBE / "base"
OVERLAYS = ["kind", "eks"]
MODEL_DOCKERFILE = REPO / "image-model.dockerfile"
GATEWAY_DOCKERFILE = REPO / "image-gateway.dockerfile"
COMPOSE = REPO / "docker-compose.yaml"
BATCHING_FILE = REPO / "serving" / "batching_parameters.txt"
HEALTHCHECK = REPO / "serving" / "model-healthcheck.sh"
MAKEFILE = REPO / "Makefile"
# Kubernetes minor version the schemas are pinned to; kind's node image and
# eksctl's cluster version must name the same one.
K8S_VERSION = "1.32"
GRPC_PORT, REST_PORT, GATEWAY_PORT = 8500, 8501, 9696
# Memory per instance type named in eks-config.yaml (GiB).
INSTANCE_MEMORY_GIB = {"t3.large": 8, "t3.xlarge": 16, "m5.large": 8, "m5.xlarge": 16}
TENSORFLOW_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly", "keras"}


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def base_manifests() -> list[Path]:
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def by_kind_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def rendered(overlay: str) -> dict[tuple[str, str], dict]:
    return by_kind_name(render_kustomization(KUBE / "overlays" / overlay))


def base_docs() -> dict[tuple[str, str], dict]:
    return by_kind_name(render_kustomization(BASE))


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def parse_quantity_gib(text: str) -> float:
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "M": 1e6 / 2**30, "G": 1e9 / 2**30}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text))
    assert match and match.group(2) in units, f"unsupported memory quantity {text!r}"
    return float(match.group(1)) * units[match.group(2)]


def batching_text_fields(text: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s*\{\s*value:\s*(\d+)\s*\}", text, re.M)
    }


# ------------------------------------------------------------- Kubernetes --


@pytest.mark.parametrize("path", base_manifests(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path):
    docs = load_yaml_documents(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        validate(doc)


def test_base_kustomization_lists_every_manifest():
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in base_manifests()]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay):
    docs = render_kustomization(KUBE / "overlays" / overlay)
    assert {("Deployment", "model"), ("Deployment", "gateway"), ("Service", "gateway")} <= set(
        by_kind_name(docs)
    )
    for doc in docs:
        validate(doc)


def test_validator_rejects_unknown_field_kind_and_bad_type():
    deployment = copy.deepcopy(base_docs()[("Deployment", "model")])
    validate(deployment)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong_type)
    unknown_kind = {"apiVersion": "v1", "kind": "Servise", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(unknown_kind)


def test_renderer_refuses_features_it_does_not_implement(tmp_path):
    shutil.copytree(BASE, tmp_path / "base")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../base]\nnamePrefix: staging-\n"
    )
    with pytest.raises(RenderError, match="namePrefix"):
        render_kustomization(overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../base]\nimages: [{name: kitchenware-modle, newTag: '2'}]\n"
    )
    with pytest.raises(RenderError, match="used by no container"):
        render_kustomization(overlay)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_our_rendering_equals_kubectl_kustomize(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: only our own rendering of the overlay is checked")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    theirs = by_kind_name([d for d in yaml.safe_load_all(result.stdout) if d])
    assert theirs == rendered(overlay)


def test_services_hpas_and_pdbs_point_at_the_deployments():
    docs = base_docs()
    deployments = {name: d for (kind, name), d in docs.items() if kind == "Deployment"}
    assert set(deployments) == {"model", "gateway"}
    for name, deployment in deployments.items():
        assert deployment["metadata"]["namespace"] == "kitchenware"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        hpa = docs[("HorizontalPodAutoscaler", name)]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert (
            hpa["spec"]["minReplicas"]
            <= deployment["spec"]["replicas"]
            <= hpa["spec"]["maxReplicas"]
        )
        pdb = docs[("PodDisruptionBudget", name)]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], (
            "a PDB must let drains proceed"
        )
    for (kind, name), service in docs.items():
        if kind != "Service":
            continue
        target = deployments[service["spec"]["selector"]["app.kubernetes.io/name"]]
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        ports = {p["name"]: p["containerPort"] for c in containers(target) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (
                f"Service {name}: no container port {port['targetPort']}"
            )


def test_every_pod_runs_locked_down_with_requests_and_limits():
    for (kind, name), doc in base_docs().items():
        if kind != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in containers(doc):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"
            for kind_ in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind_]), name
            assert container["readinessProbe"] and container["livenessProbe"], name


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
    for env in (deployment_env, compose_env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/not-created")
        conf = runpy.run_path(str(REPO / "gunicorn.conf.py"))
        assert conf["bind"] == f"0.0.0.0:{GATEWAY_PORT}"
        assert conf["workers"] == int(env["GUNICORN_WORKERS"])


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
    for dockerfile in (MODEL_DOCKERFILE, GATEWAY_DOCKERFILE):
        args = dockerfile_args(dockerfile)
        for sources, _ in dockerfile_copies(dockerfile):
            for source in sources:
                source = expand_args(source, args).rstrip("/")
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"{dockerfile.name} copies {source}, which .dockerignore keeps out"
                )
                assert (REPO / source).exists() or source.startswith("models/"), source


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


def test_model_dockerfile_copies_what_export_writes():
    from kitchenware.cli import build_parser

    args = dockerfile_args(MODEL_DOCKERFILE)
    env = dockerfile_env(MODEL_DOCKERFILE)
    copies = {expand_args(d, args): s for s, d in dockerfile_copies(MODEL_DOCKERFILE)}
    served = f"{env['MODEL_BASE_PATH']}/{env['MODEL_NAME']}/{args['MODEL_VERSION']}"
    assert served in copies, f"the model must land where TF Serving looks: {served}"
    export_out = build_parser("export")[0].parse_args([]).out
    assert copies[served] == [f"{export_out}/${{MODEL_VERSION}}"]
    server_base = build_parser("model-server")[0].parse_args([]).model_base_path
    assert server_base == export_out
    assert "models/kitchenware/$(MODEL_VERSION)/saved_model.pb" in MAKEFILE.read_text()
    from_line = dockerfile_values(MODEL_DOCKERFILE, "FROM")
    assert len(from_line) == 1 and re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", from_line[0])


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
    assert f"{GATEWAY_PORT}:{GATEWAY_PORT}" in services["gateway"]["ports"]
    assert services["gateway"]["environment"]["TF_SERVING_HOST"] == f"model:{GRPC_PORT}"
    assert services["gateway"]["environment"]["PORT"] == str(GATEWAY_PORT)
    docs = base_docs()
    model = containers(docs[("Deployment", "model")])[0]
    gateway = containers(docs[("Deployment", "gateway")])[0]
    assert {p["name"]: p["containerPort"] for p in model["ports"]} == {
        "grpc": GRPC_PORT,
        "rest": REST_PORT,
    }
    assert env_of(model)["REST_PORT"] == str(REST_PORT)
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {"http": GATEWAY_PORT}
    assert env_of(gateway)["PORT"] == str(GATEWAY_PORT)
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


def test_kind_cluster_maps_the_gateway_node_port_and_pins_the_version():
    config = yaml.safe_load((KUBE / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    (node,) = config["nodes"]
    assert re.fullmatch(rf"kindest/node:v{re.escape(K8S_VERSION)}\.\d+", node["image"])
    (mapping,) = node["extraPortMappings"]
    service = rendered("kind")[("Service", "gateway")]
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == mapping["containerPort"]
    assert f"http://localhost:{mapping['hostPort']}" == makefile_variable(MAKEFILE, "KIND_URL")
    assert makefile_variable(MAKEFILE, "KIND_CLUSTER") == config["name"]
    for name in ("model", "gateway"):
        (container,) = containers(rendered("kind")[("Deployment", name)])
        assert container["imagePullPolicy"] == "Never", "kind runs the images `kind load` put there"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_images_carry_the_placeholders_make_fills_in(overlay):
    makefile = MAKEFILE.read_text()
    assert "-e 's|:IMAGE_TAG$$|:$(IMAGE_TAG)|'" in makefile
    assert "-e 's|ECR_REGISTRY/|$(ECR_REGISTRY)/|'" in makefile
    for name in ("model", "gateway"):
        (container,) = containers(rendered(overlay)[("Deployment", name)])
        image, tag = split_image(container["image"])
        assert tag == "IMAGE_TAG", container["image"]
        expected = (
            f"kitchenware-{name}" if overlay == "kind" else f"ECR_REGISTRY/kitchenware-{name}"
        )
        assert image == expected
        assert image.endswith(makefile_variable(MAKEFILE, f"{name.upper()}_IMAGE"))


def test_eks_node_group_fits_the_measured_memory():
    config = yaml.safe_load((REPO / "eks-config.yaml").read_text())
    assert config["apiVersion"] == "eksctl.io/v1alpha5" and config["kind"] == "ClusterConfig"
    assert config["metadata"]["version"] == K8S_VERSION
    assert makefile_variable(MAKEFILE, "AWS_REGION").startswith("$(shell sed")
    (group,) = config["managedNodeGroups"]
    assert group["minSize"] <= group["desiredCapacity"] <= group["maxSize"]
    node_gib = INSTANCE_MEMORY_GIB[group["instanceType"]]
    allocatable_gib = (
        node_gib - 1.0
    )  # kubelet, system reserve and DaemonSets (aws-node, kube-proxy)
    docs = base_docs()
    requested = 0.0
    for name in ("model", "gateway"):
        (container,) = containers(docs[("Deployment", name)])
        limit = parse_quantity_gib(container["resources"]["limits"]["memory"])
        request = parse_quantity_gib(container["resources"]["requests"]["memory"])
        assert limit <= allocatable_gib, f"a {name} pod at its limit must fit on one node"
        requested += request * docs[("HorizontalPodAutoscaler", name)]["spec"]["maxReplicas"]
    # Every replica the autoscalers may start fits on the largest node group.
    assert requested <= allocatable_gib * group["maxSize"]
    model = containers(docs[("Deployment", "model")])[0]
    # Measured: TF + SavedModel peak ~900 MB while loading; requests cover it.
    assert parse_quantity_gib(model["resources"]["requests"]["memory"]) >= 0.9


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
    from support.paths import free_port

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


# ---------------------------------------------------- compose and hadolint --


def tool_or_skip(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI (make test installs it)")
        pytest.skip(f"{name} not installed (make system-deps / make venv installs it)")
    return path


def test_compose_file_passes_docker_compose_config(tmp_path):
    docker_compose = tool_or_skip("docker-compose")

    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [docker_compose, "-f", str(path), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    result = check(COMPOSE)
    assert result.returncode == 0, result.stderr
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(
        COMPOSE.read_text().replace("condition: service_healthy", "condition: service_happy")
    )
    assert check(broken).returncode != 0
    broken.write_text(COMPOSE.read_text().replace("mem_limit:", "mem_limt:"))
    assert check(broken).returncode != 0


@pytest.mark.parametrize("dockerfile", [MODEL_DOCKERFILE, GATEWAY_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile, tmp_path):
    hadolint = tool_or_skip("hadolint")

    def lint(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [hadolint, "--no-color", "--failure-threshold", "error", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = lint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / dockerfile.name
    # DL3000 (error): WORKDIR must be absolute.
    broken.write_text(dockerfile.read_text() + "WORKDIR relative/dir\n")
    result = lint(broken)
    assert result.returncode != 0 and "DL3000" in result.stdout


def test_dockerfiles_declare_healthchecks_and_non_root_users():
    for dockerfile in (MODEL_DOCKERFILE, GATEWAY_DOCKERFILE):
        keywords = [key for key, _ in dockerfile_instructions(dockerfile)]
        assert keywords.count("HEALTHCHECK") == 1, dockerfile.name
        users = dockerfile_values(dockerfile, "USER")
        assert users and users[-1] not in ("root", "0"), dockerfile.name


# --------------------------------------------------------------- Makefile --

DEPLOY_TARGETS = {
    "images": "docker",
    "compose-up": "docker",
    "compose-down": "docker",
    "kind-up": "docker",
    "kind-load": "kind",
    "kind-deploy": "kubectl",
    "kind-down": "kind",
    "ecr-push": "AWS CLI",
    "eks-up": "eksctl",
    "eks-deploy": "kubectl",
    "eks-test": "kubectl",
    "eks-down": "eksctl",
}


def run_make(target: str, path: str) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    return subprocess.run(
        [make, "--no-print-directory", "-C", str(REPO), target],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("target", sorted(DEPLOY_TARGETS))
def test_deploy_target_stops_early_when_its_tool_is_missing(target, tmp_path):
    """With an empty PATH, each target names the first missing tool and runs nothing else."""
    result = run_make(target, str(tmp_path))
    assert result.returncode != 0
    assert f"{DEPLOY_TARGETS[target]}" in result.stderr and "is not installed" in result.stderr, (
        result.stderr
    )
    for prerequisite in makefile_prerequisites(MAKEFILE, target):
        assert prerequisite.startswith("need-") or prerequisite in (
            "images",
            "model-check",
            "gateway-venv",
            "smoke-images",
        ), f"{target}: {prerequisite} runs before the tool checks"


def test_tool_check_passes_once_the_tool_is_there(tmp_path):
    fake = tmp_path / "kind"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert run_make("need-kind", str(tmp_path)).returncode == 0
    fake.unlink()
    assert run_make("need-kind", str(tmp_path)).returncode != 0


def test_architecture_diagram_renders_from_its_source(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "architecture.png"
    runpy.run_path(str(REPO / "docu" / "architecture.py"))["draw"](out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (REPO / "docu" / "architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    guide = (REPO / "docu" / "deploy.md").read_text()
    assert "](architecture.png)" in guide and "make eks-down" in guide
    assert "docu/deploy.md" in (REPO / "README.md").read_text()


# ------------------------------------------ the gateway image, without Docker --

GATEWAY_VENV = REPO / ".venv-gateway"


def free_local_port() -> int:
    from support.paths import free_port

    return free_port()


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
    site = tmp_path / "site"
    shutil.copytree(
        REPO / "kitchenware", site / "kitchenware", ignore=shutil.ignore_patterns("__pycache__")
    )
    return python, app, site


def test_gateway_image_command_and_healthcheck_work_without_tensorflow(
    gateway_image_layout, tmp_path
):
    python, app, site = gateway_image_layout
    assert sorted(p.name for p in app.iterdir()) == ["gateway.py", "gunicorn.conf.py"]
    port = free_local_port()
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
