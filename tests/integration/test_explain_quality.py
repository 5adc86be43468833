"""The Grad-CAM map means something, not only has the right shape.

Pointing game: on drawings with the object off-centre (`sample-data --off-centre`,
bounding boxes in boxes.csv), a frozen-ImageNet Xception head trained for a few
epochs puts its map's peak on the object far more often than a random peak would.
Deletion: on real photos (kitchenware-mini's test split), greying out the map's
top 10 % of cells drops the predicted class's probability more than greying out
as many random cells. Both print their figures (docu/EXPLAIN.md quotes them):

    .venv/bin/python -m pytest tests/integration/test_explain_quality.py -s -m slow
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from support.explain_checks import deletion_masks, mask_cells, pointing_game, read_boxes
from support.paths import PRETRAINED_SIZE

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]

# Off-centre drawings and the model the pointing game scores (measured on 2 cores:
# data ~16 s, training on cached features ~20 s; 5x5 grid at 160 px).
POINTING_SIZE = 160
POINTING_PER_CLASS = 20
POINTING_EPOCHS = 15
MIN_POINTING_HIT_RATE = 0.80
DELETION_SHARE = 0.10


@pytest.fixture(scope="module")
def off_centre_run(imagenet_weights, tmp_path_factory):
    """Off-centre drawings (with boxes), prepared, and a frozen-ImageNet head trained on them."""
    from kitchenware.cli import main
    from kitchenware.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("off-centre")
    kaggle, prep = root / "kaggle", root / "prep"
    args = ["sample-data", str(kaggle), "--per-class", str(POINTING_PER_CLASS),
            "--test-per-class", "10", "--size", "320", "--off-centre"]  # fmt: skip
    assert main(args) == 0
    assert main(["prep", "--data", str(kaggle), "--out", str(prep), "--no-progress"]) == 0
    config = TrainConfig(data=str(prep), out=str(root / "run"), size=POINTING_SIZE,
                         weights=str(imagenet_weights), epochs=POINTING_EPOCHS, patience=100,
                         augment=False, cached_features=True, verbose=0)  # fmt: skip
    return kaggle, train(config).model


def explain_images(model, images: np.ndarray) -> dict:
    import tensorflow as tf

    from kitchenware.training.gradcam import explain
    from kitchenware.training.model import inference_model

    served = inference_model(model)
    return {k: v.numpy() for k, v in tf.function(lambda x: explain(served, x))(images).items()}


def load_split(folder, ids, size: int) -> np.ndarray:
    from kitchenware.core.images import load_image

    return np.stack([load_image(folder / "images" / f"{i}.jpg", size=size) for i in ids])


def test_the_map_points_at_the_object(off_centre_run):
    from kitchenware.core.labels import CLASSES

    kaggle, model = off_centre_run
    with (kaggle / "test_labels.csv").open(newline="") as fh:
        labels = {row["Id"]: row["label"] for row in csv.DictReader(fh)}
    boxes = read_boxes(kaggle / "boxes.csv")
    ids = sorted(labels)
    found = explain_images(model, load_split(kaggle, ids, POINTING_SIZE))
    predicted = found["probabilities"].argmax(axis=1)
    correct = np.array([CLASSES[p] == labels[i] for p, i in zip(predicted, ids, strict=True)])
    result = pointing_game(found["heatmap"], [boxes[i] for i in ids], correct)
    print(
        f"\npointing game ({found['heatmap'].shape[1]}x{found['heatmap'].shape[2]} grid, "
        f"{POINTING_SIZE} px): accuracy {correct.mean():.2f}; peak on the object in "
        f"{result.hits}/{result.images} correctly classified test drawings "
        f"= {result.hit_rate:.1%}; a random peak: {result.random_hit_rate:.1%}"
    )
    assert result.images >= 20, "too few correctly classified drawings to score"
    assert result.hit_rate >= MIN_POINTING_HIT_RATE
    assert result.hit_rate > 3 * result.random_hit_rate


def test_deleting_the_top_cells_hurts_more_than_deleting_random_ones(pretrained_run, mini_data):
    with (mini_data / "test.csv").open(newline="") as fh:
        ids = [row["Id"] for row in csv.DictReader(fh)]
    images = load_split(mini_data, ids, PRETRAINED_SIZE)
    found = explain_images(pretrained_run.model, images)
    predicted = found["probabilities"].argmax(axis=1)
    before = found["probabilities"][np.arange(len(ids)), predicted]
    top, random = deletion_masks(found["heatmap"], DELETION_SHARE, np.random.default_rng(0))
    fill = images.reshape(len(ids), -1, 3).mean(axis=1).astype(np.uint8)  # each photo's mean
    drops = {}
    for name, masks in (("top", top), ("random", random)):
        after = explain_images(pretrained_run.model, mask_cells(images, masks, fill))
        drops[name] = float(
            np.mean(before - after["probabilities"][np.arange(len(ids)), predicted])
        )
    grid = found["heatmap"].shape[1:]
    print(
        f"\ndeletion ({grid[0]}x{grid[1]} grid, {PRETRAINED_SIZE} px, {len(ids)} real test "
        f"photos, {int(top[0].sum())} cells masked): predicted class's probability drops by "
        f"{drops['top']:.3f} masking the map's top cells, {drops['random']:.3f} masking random ones"
    )
    assert drops["top"] > drops["random"]
