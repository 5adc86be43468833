"""Read a data set in the Kaggle layout: images/<Id>.jpg, train.csv, test.csv.

Ids are kept as strings (`0560` stays `0560`). Problems the user must fix
first (no train.csv, an empty CSV, missing columns, unknown labels) raise
KitchenwareError before anything is written; problems that only affect some
rows (duplicated rows, an Id in both CSVs, an Id with no image file) are
recorded on the entries and in `notes`, and the run goes on without them.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES, unknown_labels

IMAGE_DIR = "images"
PREFERRED_SUFFIX = ".jpg"


@dataclass
class Entry:
    """One Id from train.csv or test.csv. `problem` set means it is left out."""

    id: str
    source: str  # "train" or "test"
    label: str = ""  # empty for test
    path: Path | None = None
    problem: str = ""


@dataclass
class Layout:
    entries: list[Entry]
    notes: dict = field(default_factory=dict)


def read_table(path: Path, required: tuple[str, ...]) -> tuple[list[dict[str, str]], list[str]]:
    """Rows (stripped strings) and the columns beyond `required` (ignored, reported)."""
    if not path.is_file():
        raise KitchenwareError(f"{path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KitchenwareError(f"{path} is not UTF-8 text: {exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise KitchenwareError(f"{path} is empty: expected a header row {','.join(required)}")
    reader = csv.DictReader(lines)
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in required if name not in header]
    if missing:
        raise KitchenwareError(
            f"{path} lacks column(s) {', '.join(missing)}; its header is {','.join(header)!r}"
        )
    reader.fieldnames = header
    rows = []
    for row in reader:
        rows.append({name: (row.get(name) or "").strip() for name in required})
    extra = [name for name in header if name not in required]
    return rows, extra


def _dedupe_rows(rows: list[dict[str, str]], source: str, notes: dict) -> list[Entry]:
    """One Entry per Id. Identical repeated rows collapse (reported); an Id
    listed with different labels is kept as an entry with a problem."""
    by_id: dict[str, list[str]] = defaultdict(list)
    order: list[str] = []
    blank = 0
    for row in rows:
        if not row["Id"]:
            blank += 1
            continue
        if row["Id"] not in by_id:
            order.append(row["Id"])
        by_id[row["Id"]].append(row.get("label", ""))
    if blank:
        notes.setdefault("rows_without_id", {})[source] = blank
    entries = []
    for item_id in order:
        labels = by_id[item_id]
        entry = Entry(item_id, source, labels[0])
        if len(labels) > 1:
            notes.setdefault("repeated_ids", []).append(
                {"Id": item_id, "csv": f"{source}.csv", "labels": labels}
            )
            if len(set(labels)) > 1:
                entry.problem = (
                    f"listed {len(labels)} times in {source}.csv with labels "
                    f"{', '.join(sorted(set(labels)))}"
                )
        entries.append(entry)
    return entries


def _image_index(images: Path) -> dict[str, list[str]]:
    """stem -> file names in images/ (one directory scan instead of a stat per Id)."""
    index: dict[str, list[str]] = defaultdict(list)
    with_files = (e for e in images.iterdir() if e.is_file() or e.is_symlink())
    for path in with_files:
        index[path.stem].append(path.name)
    return index


def _locate(entry: Entry, images: Path, index: dict[str, list[str]]) -> None:
    names = index.get(entry.id, [])
    if names:
        preferred = [n for n in names if n == entry.id + PREFERRED_SUFFIX]
        entry.path = images / (preferred or sorted(names))[0]
        return
    hint = ""
    if entry.id.isdigit() and len(entry.id) < 4 and entry.id.zfill(4) in index:
        hint = f" ({entry.id.zfill(4)}{PREFERRED_SUFFIX} exists: were leading zeros lost?)"
    entry.problem = entry.problem or f"no file {IMAGE_DIR}/{entry.id}{PREFERRED_SUFFIX}{hint}"


def read_layout(data: Path) -> Layout:
    """All train and test entries of `data`, with files located and labels checked."""
    data = Path(data)
    if not data.is_dir():
        raise KitchenwareError(f"--data {data} is not a folder")
    images = data / IMAGE_DIR
    if not images.is_dir():
        raise KitchenwareError(f"{images} not found: expected the Kaggle layout images/<Id>.jpg")
    notes: dict = {}
    train_rows, train_extra = read_table(data / "train.csv", ("Id", "label"))
    if not train_rows:
        raise KitchenwareError(f"{data / 'train.csv'} has a header but no rows")
    bad = unknown_labels(row["label"] for row in train_rows)
    if bad:
        # An Id names the row; a row without one is named by its line in the file.
        where = [r["Id"] or f"<none, line {n}>" for n, r in enumerate(train_rows, 2)]
        examples = {
            label: [w for w, r in zip(where, train_rows, strict=True) if r["label"] == label][:3]
            for label in bad
        }
        listed = "; ".join(
            f"{label or '(empty)'!r} (e.g. Id {', '.join(ids)})" for label, ids in examples.items()
        )
        raise KitchenwareError(
            f"train.csv has unknown labels: {listed}. Known classes: {', '.join(CLASSES)}"
        )
    if (data / "test.csv").is_file():
        test_rows, test_extra = read_table(data / "test.csv", ("Id",))
    else:
        test_rows, test_extra = [], []
        notes["test_csv"] = "absent: no test images"
    ignored = {name: cols for name, cols in (("train.csv", train_extra), ("test.csv", test_extra))}
    notes["ignored_columns"] = {name: cols for name, cols in ignored.items() if cols}

    train = _dedupe_rows(train_rows, "train", notes)
    test = _dedupe_rows([{"Id": r["Id"], "label": ""} for r in test_rows], "test", notes)
    test_ids = {e.id for e in test}
    for entry in train:
        if entry.id in test_ids and not entry.problem:
            entry.problem = "also listed in test.csv (kept as a test image only)"

    index = _image_index(images)
    entries = train + test
    for entry in entries:
        _locate(entry, images, index)
    listed = {e.path.name for e in entries if e.path is not None}
    unlisted = sorted(name for names in index.values() for name in names if name not in listed)
    notes["unlisted_images"] = {"count": len(unlisted), "first": unlisted[:20]}
    return Layout(entries, notes)
