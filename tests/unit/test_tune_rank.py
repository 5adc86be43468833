"""tune's ranking: validation accuracy first, then the val loss of that epoch."""

from __future__ import annotations

import pytest

from kitchenware.training.tune import rank


def row(trial: str, accuracy: float, loss: float) -> dict:
    return {"trial": trial, "best_val_accuracy": accuracy, "best_val_loss": loss}


def test_higher_accuracy_wins_over_lower_loss():
    ranked = rank([row("a", 0.9, 0.1), row("b", 1.0, 0.5)])
    assert [r["trial"] for r in ranked] == ["b", "a"]


def test_equal_accuracy_is_decided_by_lower_val_loss_not_by_name():
    ranked = rank([row("a", 1.0, 0.30), row("b", 1.0, 0.05), row("c", 0.9, 0.01)])
    assert [r["trial"] for r in ranked] == ["b", "a", "c"]


def test_cached_features_are_accepted_with_an_augment_off_grid(tmp_path):
    """The grid's augment values decide, not TrainConfig's default (augment on)."""
    from kitchenware.core.errors import KitchenwareError
    from kitchenware.training.train import TrainConfig
    from kitchenware.training.tune import grid, tune

    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"checked for existence only before training")
    base = TrainConfig(
        data=str(tmp_path / "no-prep"), out="", weights=str(weights), cached_features=True
    )
    with pytest.raises(KitchenwareError, match="--no-augment"):
        tune(base, grid([1e-3], [0], [0.0], [True]), tmp_path / "on")
    # augment off: the feature check passes, and the next check (the data) is what fails
    with pytest.raises(KitchenwareError, match="prep folder not found"):
        tune(base, grid([1e-3], [0], [0.0], [False]), tmp_path / "off")
