"""Stratified, seeded, group-aware train/validation split with exact counts.

Rounding each class's share on its own loses images. Here the validation
size of every class is fixed first by the largest-remainder method, so the
per-class counts add up exactly, every class is within one image of
`val_frac * n`, and no image is lost. Groups (duplicates) move as a whole.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import numpy as np


def class_quotas(counts: Mapping[str, int], val_frac: float) -> dict[str, int]:
    """Validation images per class: floors of val_frac*n, then the images left
    over from rounding the total go to the classes with the largest remainders
    (ties by class name), so sum(quotas) == round(val_frac * total)."""
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    exact = {label: val_frac * n for label, n in counts.items()}
    quotas = {label: math.floor(x) for label, x in exact.items()}
    total = math.floor(val_frac * sum(counts.values()) + 0.5)
    by_remainder = sorted(exact, key=lambda label: (-(exact[label] - quotas[label]), label))
    for label in by_remainder[: max(0, total - sum(quotas.values()))]:
        quotas[label] += 1
    return quotas


def stratified_group_split(
    items: Mapping[str, tuple[str, str]], val_frac: float, seed: int
) -> dict[str, str]:
    """items: Id -> (label, group). Returns Id -> "train" | "val".

    All members of a group share one label (conflicting groups are removed
    before this) and land on the same side. Per class, groups are shuffled
    with a seeded generator and taken into validation while they fit the
    quota; with single-image groups (what prep passes after keeping one
    image per duplicate group) the quota is met exactly.
    """
    labels_of: dict[str, set[str]] = defaultdict(set)
    for label, group in items.values():
        labels_of[group].add(label)
    mixed = sorted(group for group, labels in labels_of.items() if len(labels) > 1)
    if mixed:  # it would be split per class, i.e. straddle train and val
        raise ValueError(f"group(s) {', '.join(mixed[:5])} mix labels")
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for item_id, (label, group) in items.items():
        groups[label][group].append(item_id)

    counts = {label: sum(len(ids) for ids in members.values()) for label, members in groups.items()}
    quotas = class_quotas(counts, val_frac)
    split: dict[str, str] = {}
    for label in sorted(groups):
        names = sorted(groups[label])
        # One stream per class name: adding a class never reshuffles the others.
        order = np.random.default_rng([seed, *label.encode()]).permutation(len(names))
        left = quotas[label]
        for k in order:
            ids = groups[label][names[k]]
            side = "val" if 0 < len(ids) <= left else "train"
            if side == "val":
                left -= len(ids)
            for item_id in ids:
                split[item_id] = side
    return split
