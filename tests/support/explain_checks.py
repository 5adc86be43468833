"""Checks that a Grad-CAM map means something: the pointing game and the deletion check.

Used by tests/integration/test_explain_quality.py, which prints the figures docu/ quotes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PointingResult:
    images: int  # correctly classified test images scored
    hits: int  # of those, the map's peak cell touches the object's box
    random_hit_rate: float  # expected hit rate of a peak at a uniformly random cell

    @property
    def hit_rate(self) -> float:
        return self.hits / self.images if self.images else 0.0


def read_boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """boxes.csv of `kitchenware sample-data --off-centre`: Id -> (x0, y0, x1, y1) fractions."""
    with path.open(newline="") as fh:
        return {
            row["Id"]: tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            for row in csv.DictReader(fh)
        }


def touching(box, grid: tuple[int, int]) -> np.ndarray:
    """Boolean [rows, cols]: which cells of a map covering the whole image overlap `box`.

    A cell is the map's resolution: the pointing game's usual tolerance of a few
    pixels around the box becomes "the peak's cell overlaps the box", and the
    random baseline is scored by the same rule, so both get the same allowance.
    """
    rows, cols = grid
    x0, y0, x1, y1 = box
    xs, ys = np.arange(cols) / cols, np.arange(rows) / rows  # cell left and top edges
    across = (xs < x1) & (xs + 1 / cols > x0)
    down = (ys < y1) & (ys + 1 / rows > y0)
    return down[:, None] & across[None, :]


def pointing_game(heatmaps: np.ndarray, boxes: list, correct: np.ndarray) -> PointingResult:
    """Peak-in-box rate of `heatmaps` [N, H, W] over the correctly classified images, and
    the rate a peak at a random cell would reach (each image's share of cells in its box)."""
    grid = heatmaps.shape[1:]
    hits, chance = 0, []
    for heatmap, box, right in zip(heatmaps, boxes, correct, strict=True):
        if not right:
            continue
        in_box = touching(box, grid)
        peak = np.unravel_index(np.argmax(heatmap), grid)
        hits += bool(in_box[peak])
        chance.append(in_box.mean())
    return PointingResult(len(chance), hits, float(np.mean(chance)) if chance else 0.0)


def mask_cells(images: np.ndarray, masks: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Images [N, S, S, 3] with each True cell of masks [N, H, W] replaced by `fill` [N, 3]."""
    size = images.shape[1]
    rows, cols = masks.shape[1:]
    ys = np.minimum(np.arange(size) * rows // size, rows - 1)
    xs = np.minimum(np.arange(size) * cols // size, cols - 1)
    pixel_masks = masks[:, ys][:, :, xs]  # [N, S, S]
    out = images.copy()
    for i in range(len(images)):
        out[i][pixel_masks[i]] = fill[i]
    return out


def deletion_masks(heatmaps: np.ndarray, share: float, rng: np.random.Generator):
    """(top-`share` cells of each map, the same number of random cells) as boolean masks."""
    n, rows, cols = heatmaps.shape
    count = max(1, round(share * rows * cols))
    top = np.zeros((n, rows * cols), bool)
    random = np.zeros((n, rows * cols), bool)
    for i, heatmap in enumerate(heatmaps.reshape(n, -1)):
        top[i, np.argsort(-heatmap, kind="stable")[:count]] = True
        random[i, rng.choice(rows * cols, count, replace=False)] = True
    return top.reshape(n, rows, cols), random.reshape(n, rows, cols)
