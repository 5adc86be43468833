"""Kubernetes manifests and overlays, validated offline against pinned schemas.

Each manifest and each kustomize overlay's rendered output is checked against
the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown kinds and
fields fail); where `kubectl` is on PATH, its `kubectl kustomize` output must
equal ours. The validators are also shown broken copies and must reject them.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from support.deploy_tools import (
    BASE,
    DEPLOY_MK,
    INSTANCE_MEMORY_GIB,
    K8S_VERSION,
    KUBE,
    OVERLAYS,
    RenderError,
    base_docs,
    base_manifests,
    by_kind_name,
    containers,
    load_yaml_documents,
    makefile_variable,
    parse_quantity_gib,
    render_kustomization,
    rendered,
    split_image,
    validate,
)
from support.paths import REPO

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
        ports = {
            p["name"]: p["containerPort"] for c in containers(target) for p in c.get("ports", [])
        }
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


def test_kind_cluster_maps_the_gateway_node_port_and_pins_the_version():
    config = yaml.safe_load((KUBE / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    (node,) = config["nodes"]
    assert re.fullmatch(rf"kindest/node:v{re.escape(K8S_VERSION)}\.\d+", node["image"])
    (mapping,) = node["extraPortMappings"]
    service = rendered("kind")[("Service", "gateway")]
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == mapping["containerPort"]
    assert f"http://localhost:{mapping['hostPort']}" == makefile_variable(DEPLOY_MK, "KIND_URL")
    assert makefile_variable(DEPLOY_MK, "KIND_CLUSTER") == config["name"]
    for name in ("model", "gateway"):
        for container in containers(rendered("kind")[("Deployment", name)]):
            assert container["imagePullPolicy"] == "Never", "kind runs what `kind load` put there"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_images_carry_the_placeholders_make_fills_in(overlay):
    makefile = DEPLOY_MK.read_text()
    assert "-e 's|:IMAGE_TAG$$|:$(IMAGE_TAG)|'" in makefile
    assert "-e 's|ECR_REGISTRY/|$(ECR_REGISTRY)/|'" in makefile
    seen = []
    for deployment in ("model", "gateway"):
        for container in containers(rendered(overlay)[("Deployment", deployment)]):
            name = container["name"]
            image, tag = split_image(container["image"])
            assert tag == "IMAGE_TAG", container["image"]
            expected = (
                f"kitchenware-{name}" if overlay == "kind" else f"ECR_REGISTRY/kitchenware-{name}"
            )
            assert image == expected
            assert image.endswith(makefile_variable(DEPLOY_MK, f"{name.upper()}_IMAGE"))
            seen.append(name)
    assert seen == ["model", "gateway", "proxy"]


def test_eks_node_group_fits_the_measured_memory():
    config = yaml.safe_load((REPO / "eks-config.yaml").read_text())
    assert config["apiVersion"] == "eksctl.io/v1alpha5" and config["kind"] == "ClusterConfig"
    assert config["metadata"]["version"] == K8S_VERSION
    assert makefile_variable(DEPLOY_MK, "AWS_REGION").startswith("$(shell sed")
    (group,) = config["managedNodeGroups"]
    assert group["minSize"] <= group["desiredCapacity"] <= group["maxSize"]
    node_gib = INSTANCE_MEMORY_GIB[group["instanceType"]]
    allocatable_gib = (
        node_gib - 1.0
    )  # kubelet, system reserve and DaemonSets (aws-node, kube-proxy)
    docs = base_docs()
    requested = 0.0
    for name in ("model", "gateway"):
        pod = containers(docs[("Deployment", name)])
        limit = sum(parse_quantity_gib(c["resources"]["limits"]["memory"]) for c in pod)
        request = sum(parse_quantity_gib(c["resources"]["requests"]["memory"]) for c in pod)
        assert limit <= allocatable_gib, f"a {name} pod at its limit must fit on one node"
        requested += request * docs[("HorizontalPodAutoscaler", name)]["spec"]["maxReplicas"]
    # Every replica the autoscalers may start fits on the largest node group.
    assert requested <= allocatable_gib * group["maxSize"]
    model = containers(docs[("Deployment", "model")])[0]
    # Measured: TF + SavedModel peak ~900 MB while loading; requests cover it.
    assert parse_quantity_gib(model["resources"]["requests"]["memory"]) >= 0.9
