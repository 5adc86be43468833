"""Draw a small synthetic data set of the six classes in the Kaggle layout.

The drawings are SYNTHETIC (Pillow shapes, not photos). They exist so the
whole pipeline (prep, training, export, serving) runs and is tested with no
download. Each class has a distinct silhouette a tiny CNN can learn: a cup is a
body with a handle, a glass a tall see-through trapezoid (sometimes on a stem),
a plate an ellipse with a rim, a spoon a handle with an oval bowl, a fork a
handle with tines, a knife a handle with a tapered blade. Proportions, colours,
position, scale, rotation, background, lighting and noise vary per image.

A few exact duplicates (byte copies) and near duplicates (re-encoded at another
JPEG quality and slightly resized) are planted on purpose, inside train and
from train into test, and listed in `planted_duplicates.csv` so tests can
check that `kitchenware prep` finds them. Output: `images/<Id>.jpg`,
`train.csv` (Id,label), `test.csv` (Id), `sample_submission.csv` (Id,label),
`test_labels.csv` (the answers for the test Ids, as kitchenware-mini has) and
`planted_duplicates.csv`. Same seed -> byte-identical files.

`--off-centre` draws each object smaller and wholly inside one quadrant of the
photo, and writes `boxes.csv` (Id,label,x_min,y_min,x_max,y_max: the object's
bounding box as fractions of the displayed photo's width and height) for every
image, train and test: the data the Grad-CAM pointing-game test needs.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES
from kitchenware.dataprep.drawing import draw_photo_boxed, encode_photo
from kitchenware.dataprep.workers import process_pool

# What the command writes; `--force` removes exactly these, nothing else.
OUTPUT_FILES = (
    "train.csv",
    "test.csv",
    "sample_submission.csv",
    "test_labels.csv",
    "planted_duplicates.csv",
    "boxes.csv",
)
# Images are landscape 4:3 like most Kaggle photos; --size is the long side.
ASPECT = 3 / 4


@dataclass(frozen=True)
class SampleDataConfig:
    """`kitchenware sample-data` options (OUT, positional, is added by hand); generate()'s too."""

    per_class: int = option(60, help="train images per class")
    size: int = option(256, help="long side in pixels (4:3)")
    test_per_class: int = option(10, help="test images per class")
    seed: int = option(42, help="random seed (same seed, same bytes)")
    workers: int = option(1, help="processes drawing images")
    force: bool = option(False, help="replace an earlier sample-data output")
    off_centre: bool = option(
        False, help="smaller objects, each inside one quadrant; writes boxes.csv (bounding boxes)"
    )


def add_arguments(parser) -> None:
    parser.add_argument("out", type=Path, help="folder to write (Kaggle layout)")
    add_fields(parser, SampleDataConfig)


def run(args) -> int:
    summary = generate(args.out, **asdict(from_args(SampleDataConfig, args)))
    print(
        f"wrote {summary['train']} train + {summary['test']} test synthetic images "
        f"({summary['planted']} planted duplicates) to {args.out}"
    )
    return 0


# --------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class Item:
    index: int  # position in generation order: the RNG stream of this image
    label: str
    split: str  # "train" or "test"


@dataclass(frozen=True)
class Planted:
    """A duplicate written on purpose: `copy` repeats `original`."""

    copy: int
    original: int
    kind: str  # "exact" or "near"
    how: str


def _render(args: tuple[int, int, str, int, int, bool]) -> tuple[bytes, tuple]:
    seed, index, label, width, height, off_centre = args
    rng = np.random.default_rng([seed, index])
    pixels, box = draw_photo_boxed(label, rng, width, height, off_centre)
    quality = int(rng.integers(82, 96))
    return encode_photo(pixels, quality, exif_rotate=rng.random() < 0.05), box


def near_copy(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Re-encode at another JPEG quality and resize by a few percent."""
    with Image.open(io.BytesIO(data)) as img:
        exif = img.getexif()
        scale = float(rng.choice([0.88, 0.92, 1.08]))
        quality = int(rng.integers(60, 76))
        size = (round(img.width * scale), round(img.height * scale))
        small = img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue(), f"re-encoded at quality {quality}, resized x{scale:g}"


def _plan(per_class: int, test_per_class: int) -> tuple[list[Item], list[tuple[int, int, str]]]:
    """All items in generation order, and (copy, original, kind) duplicate slots.

    Planted copies take the last train slots of a class (train counts stay
    exactly `per_class`) or a test slot; each original is an earlier,
    drawn train image of the same class.
    """
    items: list[Item] = []
    first: dict[str, int] = {}
    for label in CLASSES:
        first[label] = len(items)
        items += [Item(first[label] + k, label, "train") for k in range(per_class)]
    test_first: dict[str, int] = {}
    for label in CLASSES:
        test_first[label] = len(items)
        items += [Item(test_first[label] + k, label, "test") for k in range(test_per_class)]

    slots: list[tuple[int, int, str]] = []
    if per_class >= 4:
        # Inside train: exact copies for cup/fork/glass, near copies for knife/plate/spoon.
        for k, label in enumerate(CLASSES):
            kind = "exact" if k < 3 else "near"
            slots.append((first[label] + per_class - 1, first[label] + k % 2, kind))
    if per_class >= 4 and test_per_class >= 2:
        # Train -> test leaks: one exact, one near.
        slots.append((test_first["plate"], first["plate"] + 2, "exact"))
        slots.append((test_first["spoon"], first["spoon"] + 2, "near"))
    return items, slots


def _clear(out: Path, force: bool) -> None:
    existing = [out / name for name in (*OUTPUT_FILES, "images") if (out / name).exists()]
    if out.exists() and not out.is_dir():
        raise KitchenwareError(f"{out} exists and is not a folder")
    if existing and not force:
        raise KitchenwareError(
            f"{out} already holds a data set ({existing[0].name}); pass --force to replace it"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def generate(
    out: Path,
    per_class: int = SampleDataConfig.per_class,
    size: int = SampleDataConfig.size,
    test_per_class: int = SampleDataConfig.test_per_class,
    seed: int = SampleDataConfig.seed,
    workers: int = SampleDataConfig.workers,
    force: bool = SampleDataConfig.force,
    off_centre: bool = SampleDataConfig.off_centre,
) -> dict:
    """Write the data set; returns counts {'train', 'test', 'planted'}."""
    if per_class < 1 or test_per_class < 0:
        raise KitchenwareError("--per-class must be >= 1 and --test-per-class >= 0")
    if size < 32:
        raise KitchenwareError(f"--size {size} is too small (minimum 32)")
    out = Path(out)
    _clear(out, force)
    width, height = size, max(24, round(size * ASPECT))
    items, slots = _plan(per_class, test_per_class)
    copies = {copy for copy, _, _ in slots}

    # Kaggle Ids: a seeded shuffle, so Id order says nothing about the class.
    width_id = max(4, len(str(len(items) - 1)))
    order = np.random.default_rng([seed, 2**31]).permutation(len(items))
    ids = {it.index: f"{int(order[it.index]):0{width_id}d}" for it in items}
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    # Files are written as they come; only the originals of planted copies stay in memory.
    originals = {original for _, original, _ in slots}
    kept: dict[int, bytes] = {}
    jobs = [
        (seed, it.index, it.label, width, height, off_centre)
        for it in items
        if it.index not in copies
    ]
    boxes: dict[int, tuple] = {}
    pool = process_pool(workers) if workers > 1 else None
    try:
        chunk = max(1, min(32, len(jobs) // (workers * 8)))
        rendered = pool.map(_render, jobs, chunksize=chunk) if pool else map(_render, jobs)
        for job, (blob, box) in zip(jobs, rendered, strict=True):
            (images / f"{ids[job[1]]}.jpg").write_bytes(blob)
            boxes[job[1]] = box
            if job[1] in originals:
                kept[job[1]] = blob
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)

    planted: list[Planted] = []
    for copy, original, kind in slots:
        if kind == "exact":
            blob, how = kept[original], "byte copy"
        else:
            blob, how = near_copy(kept[original], np.random.default_rng([seed, copy, 1]))
        (images / f"{ids[copy]}.jpg").write_bytes(blob)
        boxes[copy] = boxes[original]  # a resize keeps the box's fractions
        planted.append(Planted(copy, original, kind, how))

    train = sorted((ids[it.index], it.label) for it in items if it.split == "train")
    test = sorted((ids[it.index], it.label) for it in items if it.split == "test")
    _write_csv(out / "train.csv", ["Id", "label"], train)
    _write_csv(out / "test.csv", ["Id"], [(i,) for i, _ in test])
    _write_csv(out / "sample_submission.csv", ["Id", "label"], [(i, CLASSES[0]) for i, _ in test])
    _write_csv(out / "test_labels.csv", ["Id", "label"], test)
    split_of = {it.index: it.split for it in items}
    _write_csv(
        out / "planted_duplicates.csv",
        ["Id", "original", "kind", "split", "how"],
        [(ids[p.copy], ids[p.original], p.kind, split_of[p.copy], p.how) for p in planted],
    )
    if off_centre:
        _write_csv(
            out / "boxes.csv",
            ["Id", "label", "x_min", "y_min", "x_max", "y_max"],
            sorted(
                (ids[it.index], it.label, *(f"{v:.4f}" for v in boxes[it.index])) for it in items
            ),
        )
    return {"train": len(train), "test": len(test), "planted": len(planted)}


def _write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
