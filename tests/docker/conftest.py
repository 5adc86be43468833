"""The deployment run for real: both images built and run under Docker, in a sandbox.

`make compose-test` runs this folder (it is not part of `make test`). The
session builds the images once with a build-only daemon, then starts the run
daemon inside a loopback-only network namespace (devtools.docker_sandbox);
every container and every client of the published ports lives there. The
sandbox checks on the way out that the machine's iptables rules and ip_forward
are unchanged, and its failure fails the session.

Without root or Docker the tests skip with the reason, unless
KITCHENWARE_REQUIRE_DOCKER=1 (set by `make compose-test`): then they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.docker_stack import (
    BUILD,
    DATA_ROOT,
    IMAGE_TAG,
    MODEL_DIR,
    MODEL_SIZE,
    MODEL_VERSION,
)
from support.paths import MINI_DATA, REPO

from devtools import docker_sandbox
from devtools.docker_images import build_stack
from devtools.stack import export_untrained_model

FIGURES = BUILD / "figures.json"
PRUNE_ABOVE_BYTES = 15 * 2**30


def source_digest() -> str:
    """A digest of the product's code: an export made by other code is made again."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "kitchenware").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def export_for_images(figures: dict) -> None:
    """The untrained export the images bake, made again when the code that made it changed
    (an old export hid what a change did to the model image)."""
    model_dir = REPO / MODEL_DIR
    version = model_dir / str(MODEL_VERSION)
    stamp = model_dir / "source-digest"
    wanted = source_digest()
    if not (
        (version / "saved_model.pb").is_file() and stamp.is_file() and stamp.read_text() == wanted
    ):
        shutil.rmtree(model_dir, ignore_errors=True)
        started = time.monotonic()
        export_untrained_model(model_dir, size=MODEL_SIZE, version=MODEL_VERSION)
        figures["export_s"] = round(time.monotonic() - started, 1)
        stamp.write_text(wanted)
    # What the OpenVINO IR of the baked version weighs on disk (its .bin files hold the weights).
    ir = version / "openvino"
    figures["export_openvino_bytes"] = sum(p.stat().st_size for p in ir.iterdir() if p.is_file())


def data_root_bytes() -> int:
    done = subprocess.run(["du", "-sb", str(DATA_ROOT)], capture_output=True, text=True)
    return int(done.stdout.split()[0]) if done.returncode == 0 else 0


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def figures():
    """Measured figures of this run, written to build/compose-test/figures.json at the end."""
    found: dict = {}
    yield found
    BUILD.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    print(f"\ncompose-test figures ({FIGURES.relative_to(REPO)}):\n{json.dumps(found, indent=2)}")


@pytest.fixture(scope="session")
def sandbox(figures):
    """The run daemon in its namespace, with both images built; yields (Sandbox, BuiltImages)."""
    reason = docker_sandbox.unavailable_reason()
    if reason:
        if os.environ.get("KITCHENWARE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"the Docker sandbox cannot run here: {reason}")
        pytest.skip(f"the Docker sandbox cannot run here: {reason}")
    export_for_images(figures)
    with docker_sandbox.Sandbox(DATA_ROOT) as box:
        with box.daemon("build"):
            built = build_stack(box, MODEL_DIR, MODEL_VERSION, IMAGE_TAG)
            # Earlier runs' images, untagged by this one, fill the data root over time;
            # pruning also drops the build stages the next build reuses, so only when big.
            if data_root_bytes() > PRUNE_ABOVE_BYTES:
                box.docker("image", "prune", "--force", capture_output=True)
        figures["images"] = {
            "model_dockerfile": built.model_dockerfile,
            "python_image": built.python_image,
            "build_s": {k: round(v, 1) for k, v in built.seconds.items()},
            "size_mb": {k: round(v, 1) for k, v in built.sizes_mb.items()},
            "notes": built.notes,
        }
        with box.daemon("run"):
            yield box, built
        figures["network_unchanged_before_exit"] = not box.network_changes()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    """A few real photos (../shared/data/kitchenware-mini), else drawn sample data."""
    images = sorted((MINI_DATA / "images").glob("*.jpg"))
    if images:
        return images[:: max(1, len(images) // 6)][:6]
    out = tmp_path_factory.mktemp("compose-sample") / "kaggle"
    subprocess.run(
        [sys.executable, "-m", "kitchenware.cli", "sample-data", str(out),
         "--per-class", "1", "--test-per-class", "1", "--size", "96"],
        check=True, capture_output=True,
    )  # fmt: skip
    return sorted((out / "images").glob("*.jpg"))[:6]
