"""`kitchenware sample-data`: layout, determinism, planted duplicates."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kitchenware.cli import main
from kitchenware.core.images import load_image
from kitchenware.core.labels import CLASSES
from kitchenware.dataprep.dedupe import fingerprint_file, hamming
from kitchenware.dataprep.prep import DEFAULT_NEAR_DUP_DISTANCE
from kitchenware.dataprep.synthetic import generate

SMALL = {"per_class": 8, "size": 96, "test_per_class": 3}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "data"
    generate(out, seed=7, **SMALL)
    return out


def test_kaggle_layout_and_counts(small):
    train, test = _rows(small / "train.csv"), _rows(small / "test.csv")
    assert list(train[0]) == ["Id", "label"] and list(test[0]) == ["Id"]
    assert Counter(r["label"] for r in train) == {c: 8 for c in CLASSES}
    assert len(test) == 18
    ids = [r["Id"] for r in train + test]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 4 and i.isdigit() for i in ids)  # zero-padded strings
    assert sorted(p.stem for p in (small / "images").iterdir()) == sorted(ids)
    submission = _rows(small / "sample_submission.csv")
    assert [r["Id"] for r in submission] == [r["Id"] for r in test]
    assert {r["label"] for r in submission} <= set(CLASSES)
    answers = _rows(small / "test_labels.csv")
    assert [r["Id"] for r in answers] == [r["Id"] for r in test]


def test_images_decode_landscape_with_exif_applied(small):
    resized = {r["Id"] for r in _rows(small / "planted_duplicates.csv") if r["kind"] == "near"}
    exif_rotated = 0
    for path in sorted((small / "images").iterdir()):
        height, width, _ = load_image(path).shape
        if path.stem in resized:
            assert width > height and abs(width / 96 - 1) <= 0.1
        else:
            assert (height, width) == (72, 96)
        with Image.open(path) as img:
            exif_rotated += img.getexif().get(0x0112, 1) == 6 and img.size == (72, 96)
    assert exif_rotated >= 1  # some are stored turned, with an EXIF Orientation tag


def test_same_seed_same_bytes_and_workers_do_not_matter(tmp_path, small):
    again = tmp_path / "again"
    generate(again, seed=7, workers=2, **SMALL)
    assert _tree_digest(again) == _tree_digest(small)
    other = tmp_path / "other"
    generate(other, seed=8, **SMALL)
    assert _tree_digest(other) != _tree_digest(small)


def test_planted_duplicates_are_real_duplicates(small):
    planted = _rows(small / "planted_duplicates.csv")
    kinds = Counter((r["kind"], r["split"]) for r in planted)
    assert kinds == {("exact", "train"): 3, ("near", "train"): 3, ("exact", "test"): 1,
                     ("near", "test"): 1}  # fmt: skip
    labels = {
        r["Id"]: r["label"] for r in _rows(small / "train.csv") + _rows(small / "test_labels.csv")
    }
    for row in planted:
        copy = (small / "images" / f"{row['Id']}.jpg").read_bytes()
        original = (small / "images" / f"{row['original']}.jpg").read_bytes()
        assert labels[row["Id"]] == labels[row["original"]]
        if row["kind"] == "exact":
            assert copy == original
        else:
            assert copy != original
            a = fingerprint_file(small / "images" / f"{row['Id']}.jpg")
            b = fingerprint_file(small / "images" / f"{row['original']}.jpg")
            assert hamming(a.phash, b.phash) <= DEFAULT_NEAR_DUP_DISTANCE


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["sample-data", str(out), "--per-class", "2", "--test-per-class", "1", "--size", "64"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    (out / "images" / "stray.jpg").write_bytes(b"x")
    assert main([*args, "--force"]) == 0
    assert not (out / "images" / "stray.jpg").exists()
    assert len(_rows(out / "train.csv")) == 12


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path / "x"), "--per-class", "0"]) == 2
    assert "--per-class" in capsys.readouterr().err
    assert main(["sample-data", str(tmp_path / "y"), "--size", "8"]) == 2
    assert "too small" in capsys.readouterr().err


def edge_energy(edges: np.ndarray, box) -> float:
    """Mean edge strength of `edges` [H, W] inside `box` (fractions x0, y0, x1, y1)."""
    height, width = edges.shape
    x0, y0, x1, y1 = box
    return float(
        edges[int(y0 * height) : int(y1 * height), int(x0 * width) : int(x1 * width)].mean()
    )


def test_off_centre_objects_sit_in_a_quadrant_inside_their_recorded_box(tmp_path, small):
    """The box is where the drawing differs from its background; it never holds the centre."""
    assert not (small / "boxes.csv").exists()  # only on request
    out = tmp_path / "off"
    assert main(["sample-data", str(out), "--per-class", "3", "--test-per-class", "1",
                 "--size", "160", "--seed", "7", "--off-centre"]) == 0  # fmt: skip
    boxes = {row["Id"]: row for row in _rows(out / "boxes.csv")}
    labels = {
        r["Id"]: r["label"] for r in _rows(out / "train.csv") + _rows(out / "test_labels.csv")
    }
    assert sorted(boxes) == sorted(labels)
    assert all(boxes[i]["label"] == labels[i] for i in labels)
    for image_id, row in boxes.items():
        x0, y0, x1, y1 = (float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert not (x0 < 0.5 < x1 and y0 < 0.5 < y1), f"{image_id}: object over the centre"
        pixels = load_image(out / "images" / f"{image_id}.jpg").astype(float).mean(-1)  # EXIF
        edges = np.abs(np.diff(pixels, axis=0))[:, :-1] + np.abs(np.diff(pixels, axis=1))[:-1]

        # The drawing's outline is inside its box; the same box mirrored through the
        # centre (the opposite quadrant) holds background only.
        mirrored = (1 - x1, 1 - y1, 1 - x0, 1 - y0)
        assert edge_energy(edges, (x0, y0, x1, y1)) > 1.3 * edge_energy(edges, mirrored), image_id
