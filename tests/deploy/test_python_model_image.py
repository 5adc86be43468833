"""The TF-Serving-compatible model image agrees with the official one, and the pod specs translate.

What only Docker can show runs in tests/docker (`make compose-test`); these are
the agreements a text can prove, in `make test` on every machine.
"""

from __future__ import annotations

from support.deploy_tools import (
    KUBE,
    MODEL_DOCKERFILE,
    PYTHON_MODEL_DOCKERFILE,
    dockerfile_copies,
    dockerfile_env,
    dockerfile_instructions,
    dockerfile_values,
    memory_bytes,
    render_kustomization,
)
from support.paths import REPO
from support.pod_spec import pod_containers

DOCKERFILES = sorted(REPO.glob("*.dockerfile"))


def pins(name: str) -> dict[str, str]:
    lines = (REPO / "requirements" / name).read_text().splitlines()
    return dict(line.lower().replace("_", "-").split("==") for line in lines if "==" in line)


def test_both_model_images_offer_the_same_contract():
    official, ours = dockerfile_env(MODEL_DOCKERFILE), dockerfile_env(PYTHON_MODEL_DOCKERFILE)
    for key in ("MODEL_NAME", "MODEL_BASE_PATH", "REST_PORT"):
        assert ours[key] == official[key], key
    for keyword in ("EXPOSE", "HEALTHCHECK", "USER"):
        assert dockerfile_values(PYTHON_MODEL_DOCKERFILE, keyword) == dockerfile_values(
            MODEL_DOCKERFILE, keyword
        ), keyword
    destinations = {dest for _, dest in dockerfile_copies(MODEL_DOCKERFILE, last_stage_only=True)}
    # Ours trims the version in its build stage (no variables/: the IR holds the weights).
    ours_copied = {
        dest
        for _, dest in dockerfile_copies(
            PYTHON_MODEL_DOCKERFILE, last_stage_only=True, from_stages=True
        )
    }
    assert destinations <= ours_copied


def test_model_image_runs_the_tests_openvino_numpy_and_grpc_without_tensorflow():
    image, tests = pins("model-server.txt"), pins("dev.txt")
    for name in ("openvino", "numpy", "grpcio", "grpcio-health-checking", "protobuf"):
        assert image[name] == tests[name], name
    assert image["tensorflow-protobuf"] == pins("gateway.txt")["tensorflow-protobuf"]
    for heavy in ("tensorflow", "tensorflow-cpu", "keras", "pandas", "matplotlib"):
        assert heavy not in image, heavy
    # What the model-venv and the image remove again (docu/deploy.md: telemetry off).
    assert "openvino-telemetry" not in image


def test_dockerfiles_build_with_the_plain_builder_of_docker_20_10():
    assert len(DOCKERFILES) == 4
    for dockerfile in DOCKERFILES:
        # A syntax directive makes BuildKit pull its frontend from a registry.
        assert not dockerfile.read_text().startswith("# syntax="), dockerfile.name
        for keyword, rest in dockerfile_instructions(dockerfile):
            if keyword in ("COPY", "ADD"):
                assert "--chmod" not in rest and "--link" not in rest, (dockerfile.name, rest)


def test_the_kind_overlay_translates_to_docker_run_field_by_field():
    resources = render_kustomization(KUBE / "overlays" / "kind")
    services = [doc for doc in resources if doc["kind"] == "Service"]
    images = {"kitchenware-model": "model:t", "kitchenware-gateway": "gateway:t",
              "kitchenware-proxy": "proxy:t"}  # fmt: skip
    by_name = {}
    for doc in resources:
        if doc["kind"] == "Deployment":
            for container in pod_containers(doc, services, images, "net", 0):
                by_name[container.name] = container
    model, gateway = by_name["model-0-model"], by_name["gateway-0-gateway"]
    proxy = by_name["gateway-0-proxy"]
    # The sidecar shares the gateway container's network namespace, as in a pod.
    assert ["--network", "container:gateway-0-gateway"] == proxy.run_args[2:4]
    assert proxy.image == "proxy:t" and proxy.ports == {"http": 9696, "probes": 9697}
    for container, memory in ((model, "2Gi"), (gateway, "512Mi"), (proxy, "128Mi")):
        args = container.run_args
        assert {"--read-only", "--cap-drop=ALL", "no-new-privileges"} <= set(args)
        assert args[args.index("--user") + 1] == "10001:10001"
        assert args[args.index("--memory") + 1] == str(memory_bytes(memory))
        assert any(a.startswith("/tmp:rw") for a in args)
    # The gateway's TF_SERVING_HOST names the headless Service the model answers to.
    host = next(a for a in gateway.run_args if a.startswith("TF_SERVING_HOST="))
    name = host.split("dns:///", 1)[1].rsplit(":", 1)[0]
    assert name in model.run_args
    assert model.image == "model:t" and gateway.pre_stop


def test_memory_quantities():
    assert memory_bytes("512Mi") == 512 * 2**20
    assert memory_bytes("2Gi") == 2 * 2**30
    assert memory_bytes("1G") == 10**9
    assert memory_bytes("1000") == 1000
    assert memory_bytes("1.5Gi") == 3 * 2**29
