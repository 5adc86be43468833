"""`bench_train frozen`: stage 1 on cached features vs through the frozen backbone, real Keras."""

from __future__ import annotations

import pytest

from devtools.bench_train import bench_frozen
from kitchenware.training.data import list_split

pytestmark = pytest.mark.slow


def test_both_ways_are_timed_on_the_whole_split_and_scaled_to_a_stage(sample_prep):
    r = bench_frozen(sample_prep, "none", backbone="mobilenet_v2", size=71, batch=16,
                     cached_epochs=2, through_epochs=2, planned_epochs=5)  # fmt: skip
    assert r["train_images"] == len(list_split(sample_prep, "train"))
    assert r["val_images"] == len(list_split(sample_prep, "val", require_all_classes=False))
    images = r["train_images"] + r["val_images"]
    assert r["forward_images_per_s"] == pytest.approx(images / r["feature_s"], rel=0.02)
    assert r["epoch_ratio"] == pytest.approx(
        r["through_epoch_s"] / r["cached_epoch_s"], rel=0.05, abs=0.01
    )
    cached = r["feature_s"] + 5 * r["cached_epoch_s"]
    through = r["through_epoch1_s"] + 4 * r["through_epoch_s"]
    assert r["stage1_cached_s"] == pytest.approx(cached, abs=0.02)
    assert r["stage1_through_s"] == pytest.approx(through, abs=0.02)
    assert r["stage1_ratio"] == pytest.approx(through / cached, rel=0.02, abs=0.01)


def test_a_steady_epoch_through_the_backbone_needs_two_epochs(sample_prep):
    with pytest.raises(ValueError, match="through_epochs >= 2"):
        bench_frozen(sample_prep, "none", backbone="mobilenet_v2", size=71, through_epochs=1)
