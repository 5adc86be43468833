"""Write a Kaggle submission: one predicted label for every Id in test.csv.

Ids are read as strings (`0560` keeps its zero). The file follows
sample_submission.csv exactly (its header and its Id order) when the Kaggle
folder has one, else `Id,label` in test.csv order. Any Id whose image is
missing or unreadable stops the command before anything is written.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.images import load_image
from kitchenware.core.labels import CLASSES

SHOW_AT_MOST = 10


@dataclass(kw_only=True)  # keeps the options in --help order
class SubmitConfig:
    """`kitchenware submit` options."""

    model: str = option("runs/latest/best.keras", help="trained .keras file")
    data: str = option(help="Kaggle folder: images/, test.csv[, sample_submission.csv]")
    out: str = option("submission.csv", help="submission file to write")
    batch_size: int = option(32, help="images per prediction step")


def read_ids(path: Path) -> list[str]:
    """The `Id` column of a Kaggle csv, as strings, in file order; duplicates are an error."""
    if not path.is_file():
        raise KitchenwareError(f"{path} not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "Id" not in reader.fieldnames:
            raise KitchenwareError(f"{path} has no 'Id' column (header: {reader.fieldnames})")
        ids = [row["Id"].strip() for row in reader]
    if any(not i for i in ids):
        raise KitchenwareError(f"{path} has rows with an empty Id")
    seen: set[str] = set()
    duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
    if duplicates:
        raise KitchenwareError(
            f"{path} lists Ids more than once: {', '.join(duplicates[:SHOW_AT_MOST])}"
        )
    return ids


def submission_layout(kaggle_dir: Path) -> tuple[list[str], list[str]]:
    """(header, ids in output order), from sample_submission.csv when present."""
    test_ids = read_ids(kaggle_dir / "test.csv")
    sample = kaggle_dir / "sample_submission.csv"
    if not sample.is_file():
        return ["Id", "label"], test_ids
    with sample.open(newline="") as f:
        header = next(csv.reader(f), [])
    if len(header) != 2 or header[0] != "Id":
        raise KitchenwareError(f"{sample}: expected the header Id,<label column>, got {header}")
    sample_ids = read_ids(sample)
    if set(sample_ids) != set(test_ids):
        only_sample = sorted(set(sample_ids) - set(test_ids))
        only_test = sorted(set(test_ids) - set(sample_ids))
        raise KitchenwareError(
            f"{sample} and test.csv disagree: only in sample {only_sample[:SHOW_AT_MOST]}, "
            f"only in test.csv {only_test[:SHOW_AT_MOST]}"
        )
    return header, sample_ids


def _fail(problems: list[str], what: str) -> None:
    if problems:
        more = f" (and {len(problems) - SHOW_AT_MOST} more)" if len(problems) > SHOW_AT_MOST else ""
        raise KitchenwareError(
            f"{len(problems)} Id(s) {what}; no submission written: "
            + "; ".join(problems[:SHOW_AT_MOST])
            + more
        )


def predict_ids(model, image_dir: Path, ids: list[str], size: int, batch_size: int) -> list[str]:
    """Predicted class names for each Id; raises (listing every failure) if any image fails."""
    paths = [image_dir / f"{i}.jpg" for i in ids]
    _fail(
        [f"{i}: {p} missing" for i, p in zip(ids, paths, strict=True) if not p.is_file()],
        "have no image",
    )
    labels: list[str] = []
    problems: list[str] = []
    for start in range(0, len(ids), batch_size):
        batch, ok = [], True
        for i, path in zip(
            ids[start : start + batch_size], paths[start : start + batch_size], strict=True
        ):
            try:
                batch.append(load_image(path, size=size))
            except KitchenwareError as exc:
                problems.append(f"{i}: {exc}")
                ok = False
        if ok and not problems:
            logits = model(np.stack(batch), training=False)
            labels += [CLASSES[k] for k in np.asarray(logits).argmax(axis=1)]
    _fail(problems, "are unreadable")
    return labels


def write_submission(path: Path, header: list[str], ids: list[str], labels: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(ids, labels, strict=True))
    os.replace(tmp, path)


def submit(model_path, kaggle_dir, out, batch_size: int = SubmitConfig.batch_size) -> Path:
    kaggle = Path(kaggle_dir)
    if not kaggle.is_dir():
        raise KitchenwareError(f"Kaggle folder not found: {kaggle}")
    header, ids = submission_layout(kaggle)
    from kitchenware.training.model import image_size_of, load_keras_model

    model = load_keras_model(model_path)
    labels = predict_ids(model, kaggle / "images", ids, image_size_of(model), batch_size)
    out_path = Path(out)
    write_submission(out_path, header, ids, labels)
    return out_path


def add_arguments(parser) -> None:
    add_fields(parser, SubmitConfig)


def run(args) -> int:
    c = from_args(SubmitConfig, args)
    if c.batch_size < 1:
        raise KitchenwareError("--batch-size must be at least 1")
    path = submit(c.model, c.data, c.out, c.batch_size)
    print(f"wrote {path}")
    return 0
