"""tf.data input pipeline over `prep` output (PREP/<split>/<class>/<Id>.jpg).

Pixels come from `kitchenware.core.images.load_image`, the same function the gateway
uses, so a photo looks identical to the model in training, evaluation and
serving. The pipeline only decodes and resizes: scaling and augmentation are
layers inside the model, which is why validation can never see augmented
images (Keras runs them with `training=False` outside `fit`'s train step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchenware.core.errors import KitchenwareError
from kitchenware.core.images import load_image
from kitchenware.core.labels import CLASSES

# prep keeps each file's own suffix, and Kaggle's images/ may hold any format
# load_image reads: accept all of them here, or train would call them strays.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Split:
    """The files of one split and their labels (indices into CLASSES)."""

    name: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        found = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(CLASSES))
        return {name: int(n) for name, n in zip(CLASSES, found, strict=True)}


def list_split(prep_dir: str | os.PathLike, split: str, require_all_classes: bool = True) -> Split:
    """Read PREP/<split>/<class>/*.jpg; raise KitchenwareError for anything unexpected.

    Every file and folder must be accounted for: an unknown class folder or a
    non-image file is an error rather than silently ignored.
    """
    prep = Path(prep_dir)
    if not prep.is_dir():
        raise KitchenwareError(f"prep folder not found: {prep} (run `kitchenware prep` first)")
    root = prep / split
    if not root.is_dir():
        raise KitchenwareError(f"{root} is missing: is {prep} the output of `kitchenware prep`?")
    entries = sorted(root.iterdir())
    unknown = [p.name for p in entries if p.name not in CLASSES and not p.name.startswith(".")]
    if unknown:
        raise KitchenwareError(
            f"{root} holds entries that are not class folders: {', '.join(unknown[:5])} "
            f"(classes: {', '.join(CLASSES)})"
        )
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for index, name in enumerate(CLASSES):
        folder = root / name
        files = (
            sorted(p for p in folder.iterdir() if not p.name.startswith("."))
            if folder.is_dir()
            else []
        )
        strays = [
            p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file()
        ]
        if strays:
            raise KitchenwareError(f"{folder} holds non-image entries: {', '.join(strays[:5])}")
        if not files:
            empty.append(name)
        paths += [str(p) for p in files]
        labels += [index] * len(files)
    if not paths:
        raise KitchenwareError(f"{root} holds no images")
    if empty and require_all_classes:
        raise KitchenwareError(
            f"{root}: no images for class(es) {', '.join(empty)}; every class needs examples"
        )
    return Split(split, tuple(paths), tuple(labels))


def _load(path, size: int):
    """numpy_function body: one file -> (size, size, 3) uint8 via the shared loader."""
    name = path.decode() if isinstance(path, bytes) else str(path)
    try:
        return load_image(name, size=int(size))
    except KitchenwareError as exc:  # re-raised by tf.data as an error naming the file
        raise KitchenwareError(f"{name}: {exc}") from exc


def make_dataset(
    split: Split,
    size: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 42,
    cache: bool | str = True,
):
    """Batches of (uint8 images [B, size, size, 3], int32 labels [B]).

    Decoding runs in parallel (`num_parallel_calls=AUTOTUNE`) but deterministic
    order is kept, so an unshuffled dataset follows `split.paths`. `cache=True`
    keeps decoded pixels in memory after the first epoch; a string caches to
    that file prefix instead.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise KitchenwareError(f"--batch-size must be at least 1, got {batch_size}")
    ds = tf.data.Dataset.from_tensor_slices(
        (list(split.paths), np.asarray(split.labels, dtype=np.int32))
    )

    def decode(path, label):
        image = tf.numpy_function(lambda p: _load(p, size), [path], tf.uint8, stateful=False)
        image.set_shape((size, size, 3))
        return image, label

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache(cache if isinstance(cache, str) else "")
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_pixels(split: Split, size: int) -> np.ndarray:
    """All images of a split as one uint8 array, straight from `load_image` (no tf.data)."""
    return np.stack([load_image(p, size=size) for p in split.paths])
