"""docker-compose config, hadolint, the Makefile's deploy targets and the diagram."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.deploy_tools import (
    COMPOSE,
    DEPLOY_MK,
    GATEWAY_DOCKERFILE,
    MAKEFILE,
    MODEL_DOCKERFILE,
    PYTHON_MODEL_DOCKERFILE,
    dockerfile_instructions,
    dockerfile_values,
    makefile_prerequisites,
)
from support.paths import REPO

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


@pytest.mark.parametrize(
    "dockerfile",
    [MODEL_DOCKERFILE, PYTHON_MODEL_DOCKERFILE, GATEWAY_DOCKERFILE],
    ids=lambda p: p.name,
)
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
    for prerequisite in makefile_prerequisites(DEPLOY_MK, target):
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


def _phony_targets() -> set[str]:
    """Every .PHONY target of the Makefile and what it includes, from make's own database."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    database = subprocess.run(
        [make, "--no-print-directory", "-C", str(REPO), "-pRrq", "-f", "Makefile", "help"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    phony = [line for line in database.splitlines() if line.startswith(".PHONY:")]
    assert phony, "make printed no .PHONY line"
    return {target for line in phony for target in line.split(":", 1)[1].split()}


def test_make_help_lists_every_target_once_with_its_help():
    phony = _phony_targets()
    rules = set()
    for path in (MAKEFILE, DEPLOY_MK):  # every named rule is phony (files are $(...) paths)
        rules |= set(re.findall(r"^([a-z][\w-]*):(?!=)", path.read_text(), re.MULTILINE))
    assert rules == phony, (rules ^ phony, "declare each target .PHONY")
    listed = run_make("help", os.environ["PATH"])
    assert listed.returncode == 0, listed.stderr
    entries = re.findall(r"^  ([\w-]+) +(\S.*)$", listed.stdout, re.MULTILINE)
    names = [name for name, _ in entries]
    assert sorted(names) == sorted(phony), set(names) ^ phony
    assert {"test", "compose-test", "lint", "help", "eks-down"} <= set(names)
    assert all(len(text) > 10 for _, text in entries)


def test_no_recipe_is_longer_than_a_few_lines():
    """Longer recipes belong in scripts/, where they can be read and run on their own."""
    for path in (MAKEFILE, DEPLOY_MK):
        recipe, target = [], None
        for line in [*path.read_text().splitlines(), ""]:
            if line.startswith("\t"):
                recipe.append(line)
                continue
            if target and len(recipe) > 5:
                raise AssertionError(f"{path.name}: {target} has a {len(recipe)}-line recipe")
            recipe = []
            match = re.match(r"^([^\s:=#]+):(?!=)", line)
            target = match.group(1) if match else (target if line.startswith(" ") else None)


def test_architecture_diagram_renders_from_its_source(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "architecture.png"
    runpy.run_path(str(REPO / "docu" / "architecture.py"))["draw"](out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (REPO / "docu" / "architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    guide = (REPO / "docu" / "deploy.md").read_text()
    assert "](architecture.png)" in guide and "make eks-down" in guide
    assert "docu/deploy.md" in (REPO / "README.md").read_text()
