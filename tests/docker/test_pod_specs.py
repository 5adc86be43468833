"""kind without kind: the kind overlay's pods, run by Docker as their specs say, probed as kubelet does.

Each Deployment of the rendered overlay becomes `replicas` sets of containers
(support/pod_spec.py translates the pod template field by field), on one Docker
network in the sandbox's namespace, with the headless Services as network
aliases. Then every startup, readiness and liveness probe runs against them,
the gateway classifies a photo through the model it found by the manifest's
`dns:///model-headless...` address, and a gateway pod stops the way Kubernetes
stops it: preStop hook, then SIGTERM within the grace period.

Not emulated: a ClusterIP Service's virtual IP, the NodePort, the
HorizontalPodAutoscaler and PodDisruptionBudget (no scheduler here), and the
headless Service's "only ready pods" rule (Docker's DNS lists a container from its start).
"""

from __future__ import annotations

import time

import pytest
from support.deploy_tools import render_kustomization
from support.docker_stack import await_probe, container_ip, curl, inspect, save_logs
from support.paths import REPO
from support.pod_spec import pod_containers

from kitchenware.core.labels import CLASSES

NETWORK = "kwpods"
OVERLAY = REPO / "kube-config" / "overlays" / "kind"
READY_DEADLINE_S = 240


@pytest.fixture(scope="module")
def pods(sandbox, figures):
    box, built = sandbox
    resources = render_kustomization(OVERLAY)
    services = [doc for doc in resources if doc["kind"] == "Service"]
    deployments = {doc["metadata"]["name"]: doc for doc in resources if doc["kind"] == "Deployment"}
    assert set(deployments) == {"model", "gateway"}
    images = {"kitchenware-model": built.model, "kitchenware-gateway": built.gateway,
              "kitchenware-proxy": built.proxy}  # fmt: skip
    box.docker("network", "create", NETWORK, capture_output=True)
    started = []
    try:
        for deployment in deployments.values():
            for replica in range(deployment["spec"].get("replicas", 1)):
                for container in pod_containers(deployment, services, images, NETWORK, replica):
                    box.docker("run", "--detach", *container.run_args, container.image,
                               *container.command_args, capture_output=True, text=True)  # fmt: skip
                    started.append(container)
        at = time.monotonic()
        for container in started:
            container.ip = container_ip(box, container.pod, NETWORK)
        yield box, started, at
    finally:
        save_logs(box, [c.name for c in started], REPO / "build" / "compose-test" / "logs" / "pods")
        for container in started:
            box.docker("rm", "--force", container.name, check=False, capture_output=True)
        box.docker("network", "rm", NETWORK, check=False, capture_output=True)


def test_every_probe_passes_as_kubelet_runs_it(pods, figures):
    box, containers, at = pods
    seconds = {}
    for container in containers:
        if "startupProbe" in container.probes:
            probe = container.probes["startupProbe"]
            await_probe(box, container.name, container.ip, container.ports, probe,
                        "startupProbe", READY_DEADLINE_S)  # fmt: skip
        for kind in ("readinessProbe", "livenessProbe"):
            if kind in container.probes:
                await_probe(box, container.name, container.ip, container.ports,
                            container.probes[kind], kind, READY_DEADLINE_S)  # fmt: skip
        seconds[container.name] = round(time.monotonic() - at, 1)
    assert {kind for c in containers for kind in c.probes} == {
        "startupProbe", "readinessProbe", "livenessProbe"
    }  # fmt: skip
    figures["pods_start_to_every_probe_passing_s"] = seconds


def test_containers_run_with_the_pod_security_context(pods):
    box, containers, _ = pods
    for container in containers:
        info = inspect(box, container.name)
        assert info["State"]["Running"] and info["RestartCount"] == 0, container.name
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["HostConfig"]["CapDrop"] == ["ALL"]
        ids = box.output("exec", container.name, "sh", "-c", "id -u; id -g")
        assert ids.split() == ["10001", "10001"], (container.name, ids)
        # The emptyDir at /tmp is the one writable place.
        write = box.docker("exec", container.name, "sh", "-c", "touch /tmp/probe && touch /probe",
                           check=False, capture_output=True, text=True)  # fmt: skip
        assert write.returncode != 0 and "/probe" in write.stderr and "/tmp" not in write.stderr


def test_gateway_pod_reaches_the_model_through_the_headless_service(pods, photos):
    box, containers, _ = pods
    proxies = [c for c in containers if c.name.startswith("gateway-") and c.name.endswith("-proxy")]
    assert len(proxies) == 2
    for proxy in proxies:
        url = f"http://{proxy.ip}:{proxy.ports['http']}/predict"
        answer = curl(box, url, "--form", f"file=@{photos[0]}")
        assert answer.status == 200, answer.body
        assert answer.json()["label"] in CLASSES


def test_gateway_pod_exposes_the_proxy_only(pods):
    """gunicorn listens on the pod's loopback; the probe port passes the probes alone."""
    box, containers, _ = pods
    proxy = next(
        c for c in containers if c.name.startswith("gateway-") and c.name.endswith("-proxy")
    )
    probes = f"http://{proxy.ip}:{proxy.ports['probes']}"
    assert curl(box, f"{probes}/healthz").status == 200
    refused = curl(box, f"{probes}/predict", "--form", "file=@/dev/null")
    assert refused.status == 404 and refused.json()["error"]["code"] == "not_found"
    assert curl(box, f"{probes}/metrics").status == 404
    gunicorn = curl(box, f"http://{proxy.ip}:8000/healthz", timeout=5)
    assert gunicorn.status == 0, "gunicorn must not be reachable on the pod address"


def test_gateway_pod_stops_cleanly_after_its_pre_stop_hook(pods):
    box, containers, _ = pods
    gateway = next(c for c in containers if c.name.startswith("gateway-") and c.pre_stop)
    box.docker("exec", gateway.name, *gateway.pre_stop)
    started = time.monotonic()
    box.docker("stop", gateway.name, capture_output=True)
    stopped = time.monotonic() - started
    state = inspect(box, gateway.name)["State"]
    assert state["ExitCode"] == 0, state
    grace = int(gateway.run_args[gateway.run_args.index("--stop-timeout") + 1])
    assert stopped < grace, f"SIGTERM to exit took {stopped:.1f} s, the grace period is {grace} s"
