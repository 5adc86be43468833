"""Shared fixtures: real data when present, a real tiny exported model."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MINI_DATA = Path(os.environ.get("KITCHENWARE_MINI_DATA", REPO.parent / "shared" / "data" / "kitchenware-mini"))
# Tiny sizes keep TensorFlow tests fast on 2 CPU cores (Xception's minimum is 71).
TINY_SIZE = 71

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def mini_data() -> Path:
    """../shared/data/kitchenware-mini (real photos, Kaggle layout), or skip."""
    if not (MINI_DATA / "train.csv").is_file():
        pytest.skip(f"real sample photos not found at {MINI_DATA} (set KITCHENWARE_MINI_DATA)")
    return MINI_DATA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> Path:
    """A real (untrained, tiny) model exported to BASE/1 in TF Serving layout; returns BASE."""
    from kitchenware.export import export_saved_model
    from kitchenware.model import build_model

    base = tmp_path_factory.mktemp("models") / "kitchenware"
    model = build_model(size=TINY_SIZE, weights="none", inner=8, augment=False, seed=1)
    export_saved_model(model, base, version=1)
    return base
