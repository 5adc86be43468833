"""Offline readers for the deployment files, used by the tests in tests/deploy/.

No kustomize binary can be installed from a package registry here, so
`render_kustomization` applies the few kustomize features our overlays use
(resources, images, JSON 6902 patches with a kind/name target) and refuses any
other key, so an overlay can never use a feature these tests would silently
skip. Where `kubectl` is on PATH, the tests compare its `kubectl kustomize`
output with ours.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import kubernetes_validate
import yaml

from support.paths import REPO

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}
IMAGE_KEYS = {"name", "newName", "newTag"}
PATCH_KEYS = {"target", "patch"}
TARGET_KEYS = {"kind", "name"}


class RenderError(Exception):
    """The kustomization uses something this renderer does not implement."""


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# ---------------------------------------------------------------- kustomize --


def render_kustomization(folder: Path) -> list[dict]:
    """The resources `kustomize build folder` would output (order aside)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{folder}: kustomization keys not implemented: {sorted(unknown)}")
    if kustomization.get("kind") != "Kustomization":
        raise RenderError(f"{folder}: kind must be Kustomization")
    resources: list[dict] = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            resources += render_kustomization(target)
        elif target.is_file():
            resources += load_yaml_documents(target)
        else:
            raise RenderError(f"{folder}: resource {entry} does not exist")
    for patch in kustomization.get("patches", []):
        _apply_patch(folder, patch, resources)
    for image in kustomization.get("images", []):
        _apply_image(folder, image, resources)
    return resources


def _apply_patch(folder: Path, patch: dict, resources: list[dict]) -> None:
    if set(patch) != PATCH_KEYS or set(patch["target"]) - TARGET_KEYS:
        raise RenderError(
            f"{folder}: only inline JSON 6902 patches with a kind/name target: {patch}"
        )
    target = patch["target"]
    matches = [
        doc
        for doc in resources
        if doc["kind"] == target.get("kind", doc["kind"])
        and doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"])
    ]
    if not matches:
        raise RenderError(f"{folder}: patch target {target} matches no resource")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise RenderError(f"{folder}: patch for {target} is not a JSON 6902 operation list")
    for doc in matches:
        for operation in operations:
            apply_json_patch_operation(doc, operation)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch_operation(doc: dict, operation: dict) -> None:
    """RFC 6902 add / replace / remove on `doc`, in place (all that the overlays use)."""
    op, parts = operation["op"], _pointer(operation["path"])
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise RenderError(f"JSON patch op {op!r} not implemented")
        return
    if op in ("replace", "remove") and last not in parent:
        raise RenderError(f"JSON patch {op} of missing path {operation['path']}")
    if op in ("add", "replace"):
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del parent[last]
    else:
        raise RenderError(f"JSON patch op {op!r} not implemented")


def split_image(image: str) -> tuple[str, str | None]:
    """('registry/name', 'tag') from an image reference (no digests here)."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, None
    return name, tag


def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def _apply_image(folder: Path, image: dict, resources: list[dict]) -> None:
    if set(image) - IMAGE_KEYS or "name" not in image:
        raise RenderError(f"{folder}: image entry not implemented: {image}")
    used = False
    for doc in resources:
        for container in containers(doc):
            name, tag = split_image(container["image"])
            if name != image["name"]:
                continue
            used = True
            name = image.get("newName", name)
            tag = str(image["newTag"]) if "newTag" in image else tag
            container["image"] = f"{name}:{tag}" if tag else name
    if not used:
        raise RenderError(f"{folder}: image {image['name']} is used by no container")


# --------------------------------------------------------------- Dockerfile --


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_values(path: Path, keyword: str) -> list[str]:
    return [rest for key, rest in dockerfile_instructions(path) if key == keyword]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions of the last stage: what the image that runs is made of."""
    last_from = max(i for i, (key, _) in enumerate(instructions) if key == "FROM")
    return instructions[last_from:]


def dockerfile_env(path: Path, last_stage_only: bool = True) -> dict[str, str]:
    """ENV of the image that runs (the last stage), or of every stage."""
    instructions = dockerfile_instructions(path)
    if last_stage_only:
        instructions = final_stage(instructions)
    env: dict[str, str] = {}
    for rest in (rest for key, rest in instructions if key == "ENV"):
        for token in shlex.split(rest):
            key, sep, value = token.partition("=")
            assert sep, f"{path}: ENV without '=': {token}"
            env[key] = value
    return env


def dockerfile_args(path: Path) -> dict[str, str]:
    args: dict[str, str] = {}
    for rest in dockerfile_values(path, "ARG"):
        key, _, value = rest.partition("=")
        args[key] = value
    return args


def dockerfile_copies(
    path: Path, last_stage_only: bool = False, from_stages: bool = False
) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (and, with
    `from_stages`, from earlier stages: COPY --from=...)."""
    instructions = dockerfile_instructions(path)
    if last_stage_only:
        instructions = final_stage(instructions)
    copies = []
    for rest in (rest for key, rest in instructions if key == "COPY"):
        tokens = shlex.split(rest)
        if any(token.startswith("--from") for token in tokens) and not from_stages:
            continue
        tokens = [token for token in tokens if not token.startswith("--")]
        copies.append((tokens[:-1], tokens[-1]))
    return copies


def dockerfile_json(path: Path, keyword: str) -> list[str]:
    """The exec-form (JSON array) arguments of the last CMD / ENTRYPOINT."""
    return json.loads(dockerfile_values(path, keyword)[-1])


def expand_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


# ----------------------------------------------------------------- Makefile --


def makefile_variable(makefile: Path, name: str) -> str:
    match = re.search(rf"^{name}\s*[:?]?=\s*(.+)$", makefile.read_text(), re.MULTILINE)
    assert match, f"{makefile}: no variable {name}"
    return match.group(1).strip()


def makefile_prerequisites(makefile: Path, target: str) -> list[str]:
    match = re.search(rf"^{re.escape(target)}:(?!=)(.*)$", makefile.read_text(), re.MULTILINE)
    assert match, f"{makefile}: no target {target}"
    return match.group(1).split("#", 1)[0].split()  # the `## help` comment is no prerequisite


# --- the repository's deployment files and readers over them ---


KUBE = REPO / "kube-config"
BASE = KUBE / "base"
OVERLAYS = ["kind", "eks"]
MODEL_DOCKERFILE = REPO / "image-model.dockerfile"
PYTHON_MODEL_DOCKERFILE = REPO / "image-model-python.dockerfile"
GATEWAY_DOCKERFILE = REPO / "image-gateway.dockerfile"
PROXY_DOCKERFILE = REPO / "image-proxy.dockerfile"
COMPOSE = REPO / "docker-compose.yaml"
BATCHING_FILE = REPO / "serving" / "batching_parameters.txt"
HEALTHCHECK = REPO / "serving" / "model-healthcheck.sh"
MAKEFILE = REPO / "Makefile"
DEPLOY_MK = REPO / "make" / "deploy.mk"  # the deployment targets, included by the Makefile
# Kubernetes minor version the schemas are pinned to; kind's node image and
# eksctl's cluster version must name the same one.
K8S_VERSION = "1.32"
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


MEMORY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def memory_bytes(text: str) -> int:
    """A Kubernetes memory quantity (512Mi, 1.5Gi, 1G, 1000) in bytes."""
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text))
    if not match or match.group(2) not in MEMORY_UNITS:
        raise ValueError(f"unsupported memory quantity {text!r}")
    return int(float(match.group(1)) * MEMORY_UNITS[match.group(2)])


def parse_quantity_gib(text: str) -> float:
    return memory_bytes(text) / 2**30


def batching_text_fields(text: str) -> dict[str, int | bool]:
    flags = {"true": True, "false": False}
    return {
        m.group(1): flags[m.group(2)] if m.group(2) in flags else int(m.group(2))
        for m in re.finditer(r"^(\w+)\s*\{\s*value:\s*(\d+|true|false)\s*\}", text, re.M)
    }
