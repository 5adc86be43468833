"""`kitchenware prep` on real files: sample-data output, kitchenware-mini, broken inputs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.paths import REPO

from kitchenware.cli import main
from kitchenware.core.errors import ImageError
from kitchenware.core.images import load_image
from kitchenware.core.labels import CLASSES
from kitchenware.dataprep.prep import prepare
from kitchenware.dataprep.synthetic import generate

# --------------------------------------------------------------------------- helpers


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".prep-" in p.name or ".old-" in p.name)


def _check_split_invariants(out: Path, val_frac: float) -> list[dict[str, str]]:
    """No group straddles train/val, per-class val within one image of the
    target, files on disk match the manifest exactly."""
    manifest = _rows(out / "manifest.csv")
    sides = defaultdict(set)
    for row in manifest:
        if row["split"] in ("train", "val"):
            sides[row["group"]].add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    kept = Counter(r["label"] for r in manifest if r["split"] in ("train", "val"))
    val = Counter(r["label"] for r in manifest if r["split"] == "val")
    for label, n in kept.items():
        assert abs(val[label] - val_frac * n) < 1, (label, val[label], n)
    assert sum(val.values()) == math.floor(val_frac * sum(kept.values()) + 0.5)
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = sorted(
        [
            f"{r['split']}/{r['label']}/{r['Id']}.jpg"
            for r in manifest
            if r["split"] in ("train", "val")
        ]
        + [f"test/{r['Id']}.jpg" for r in manifest if r["split"] == "test"]
        + ["manifest.csv", "report.json"]
    )
    assert on_disk == expected
    return manifest


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("sample") / "data"
    generate(data, per_class=12, size=96, test_per_class=3, seed=3)
    return data


@pytest.fixture(scope="module")
def sample_prepared(sample, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    before = _tree_digest(sample)
    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare(sample, out, workers=2)
    return out, before


# --------------------------------------------------------------------------- sample data


def test_planted_duplicates_are_grouped(sample, sample_prepared):
    out, _ = sample_prepared
    manifest = {r["Id"]: r for r in _rows(out / "manifest.csv")}
    report = json.loads((out / "report.json").read_text())
    planted = _rows(sample / "planted_duplicates.csv")
    assert planted
    leaks = {leak["test_id"]: leak for leak in report["leaks"]}
    for row in planted:
        copy, original = manifest[row["Id"]], manifest[row["original"]]
        assert copy["group"] == original["group"] != ""
        if row["split"] == "train":
            # Exactly one of the two is kept; the other names it.
            kept, dropped = (original, copy) if copy["split"] == "excluded" else (copy, original)
            assert kept["split"] in ("train", "val") and dropped["split"] == "excluded"
            assert dropped["note"] == f"{row['kind']} duplicate of {kept['Id']}"
        else:
            assert copy["split"] == "test"  # test images are never removed
            leak = leaks[row["Id"]]
            assert leak["match"] == row["kind"]
            assert leak["train_labels"] == [original["label"]]
            assert row["original"] in leak["train_ids"]
    # Nothing but the planted ones: the drawings are all different.
    assert report["duplicates"]["groups"] == len(planted)
    assert report["duplicates"]["exact_copies"] == sum(r["kind"] == "exact" for r in planted)
    assert report["duplicates"]["near_copies"] == sum(r["kind"] == "near" for r in planted)
    assert report["conflicts"] == [] and report["bad_files"] == []


def test_split_is_exact_and_group_aware(sample, sample_prepared):
    out, _ = sample_prepared
    manifest = _check_split_invariants(out, 0.2)
    listed = len(_rows(sample / "train.csv")) + len(_rows(sample / "test.csv"))
    assert len(manifest) == listed  # every CSV row accounted for
    assert all(r["note"] for r in manifest if r["split"] == "excluded")
    assert {r["split"] for r in manifest} == {"train", "val", "test", "excluded"}


def test_source_tree_unchanged(sample, sample_prepared):
    _, before = sample_prepared
    assert _tree_digest(sample) == before


def test_same_input_and_seed_same_output(sample, sample_prepared, tmp_path):
    out, _ = sample_prepared
    again = tmp_path / "again"
    prepare(sample, again, workers=1)
    assert (again / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()
    assert (again / "report.json").read_bytes() == (out / "report.json").read_bytes()
    other = tmp_path / "other"
    prepare(sample, other, seed=4)
    assert (other / "manifest.csv").read_bytes() != (out / "manifest.csv").read_bytes()
    _check_split_invariants(other, 0.2)


def test_cli_summary_and_force(sample, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prep", "--data", str(sample), "--out", str(out), "--no-progress", "--val-frac", "0.3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "duplicates:" in text and "leaks: 2 test images" in text and "cup" in text
    _check_split_invariants(out, 0.3)
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    (out / "marker").write_text("old output")
    assert main([*argv, "--force"]) == 0
    assert not (out / "marker").exists() and _leftovers(tmp_path) == []


def test_dataprep_py_is_the_same_command(sample, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "dataprep.py"), "--data", str(sample), "--out", str(out),
         "--no-progress", "--workers", "1"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.csv").is_file() and "wrote" in proc.stdout


# --------------------------------------------------------------------------- kitchenware-mini


def _near_copy(data: bytes, scale: float, quality: int) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        size = (round(rgb.width * scale), round(rgb.height * scale))
        buf = io.BytesIO()
        rgb.resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_mini_data_planted_and_existing_duplicates(mini_data, tmp_path):
    """Real photos: plant re-encoded/resized copies, check they and the data
    set's own byte-identical copies are grouped, and the split holds."""
    data = tmp_path / "mini"
    (data / "images").mkdir(parents=True)
    for src in (mini_data / "images").iterdir():
        os.link(src, data / "images" / src.name)  # read-only use; saves copying
    train = _rows(mini_data / "train.csv")
    test = _rows(mini_data / "test.csv")
    planted = {}  # new Id -> original Id
    for k, row in enumerate(train[:: len(train) // 4][:4]):
        new = f"9{k:03d}"
        original = (mini_data / "images" / f"{row['Id']}.jpg").read_bytes()
        (data / "images" / f"{new}.jpg").write_bytes(_near_copy(original, (0.9, 1.08)[k % 2], 65))
        planted[new] = row["Id"]
    rows = [[r["Id"], r["label"]] for r in train] + [[n, None] for n in planted]
    labels = {r["Id"]: r["label"] for r in train}
    rows = [[i, lab if lab else labels[planted[i]]] for i, lab in rows]
    _write_rows(data / "train.csv", ["Id", "label"], rows[:-1])
    _write_rows(data / "test.csv", ["Id"], [[r["Id"]] for r in test] + [[rows[-1][0]]])

    out = tmp_path / "out"
    prepare(data, out, workers=2)
    manifest = {r["Id"]: r for r in _rows(out / "manifest.csv")}
    for new, original in planted.items():
        assert manifest[new]["group"] == manifest[original]["group"]
    by_sha = defaultdict(list)  # hashed here, independently of prep
    for row in manifest.values():
        image = data / "images" / f"{row['Id']}.jpg"
        if image.is_file():
            digest = hashlib.sha256(image.read_bytes()).hexdigest()
            assert row["sha256"] == digest, row["Id"]
            by_sha[digest].append(row["Id"])
    exact = [ids for sha, ids in by_sha.items() if sha and len(ids) > 1]
    assert exact  # kitchenware-mini has byte-identical copies
    for ids in exact:
        assert len({manifest[i]["group"] for i in ids}) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["duplicates"]["exact_copies"] == sum(len(ids) - 1 for ids in exact)
    assert rows[-1][0] in {leak["test_id"] for leak in report["leaks"]}
    _check_split_invariants(out, 0.2)
    assert sum(r["split"] == "test" for r in manifest.values()) == len(test) + 1


# --------------------------------------------------------------------------- broken inputs


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A fresh small data set per test, free to break."""
    data = tmp_path / "data"
    generate(data, per_class=4, size=64, test_per_class=2, seed=11)
    return data


def test_bad_files_are_reported_and_the_run_continues(tiny, tmp_path):
    train = _rows(tiny / "train.csv")
    test = _rows(tiny / "test.csv")
    ids = [r["Id"] for r in train]
    corrupt, empty, text, missing, bad_test = ids[0], ids[1], ids[2], ids[3], test[0]["Id"]
    jpeg = (tiny / "images" / f"{corrupt}.jpg").read_bytes()
    (tiny / "images" / f"{corrupt}.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated
    (tiny / "images" / f"{empty}.jpg").write_bytes(b"")
    (tiny / "images" / f"{text}.jpg").write_text("this is not a photo")
    (tiny / "images" / f"{missing}.jpg").unlink()
    (tiny / "images" / f"{bad_test}.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (tiny / "images" / "extra.jpg").write_bytes(jpeg)  # in no CSV
    before = _tree_digest(tiny)

    out = tmp_path / "out"
    assert main(["prep", "--data", str(tiny), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    bad = {b["Id"]: b["problem"] for b in report["bad_files"]}
    assert set(bad) == {corrupt, empty, text, bad_test}
    assert "empty" in bad[empty] and "not a recognised image" in bad[text]
    assert [m["Id"] for m in report["missing_files"]] == [missing]
    assert report["notes"]["unlisted_images"] == {"count": 1, "first": ["extra.jpg"]}
    manifest = {r["Id"]: r for r in _rows(out / "manifest.csv")}
    for i in (corrupt, empty, text, missing, bad_test):
        assert manifest[i]["split"] == "excluded" and manifest[i]["note"]
    assert manifest[missing]["note"].startswith("no file")
    assert _tree_digest(tiny) == before
    _check_split_invariants(out, 0.2)


def test_unknown_labels_stop_before_anything_is_written(tiny, tmp_path, capsys):
    rows = [[r["Id"], r["label"]] for r in _rows(tiny / "train.csv")]
    rows[0][1], rows[1][1], rows[2][1] = "spork", "Cup", ""
    _write_rows(tiny / "train.csv", ["Id", "label"], rows)
    out = tmp_path / "out"
    assert main(["prep", "--data", str(tiny), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown labels" in err and "'spork'" in err and "'Cup'" in err and "(empty)" in err
    assert rows[0][0] in err  # points at an example row
    assert not out.exists() and _leftovers(tmp_path) == []


def test_rows_without_an_id_are_named_and_counted(tiny, tmp_path, capsys):
    rows = [[r["Id"], r["label"]] for r in _rows(tiny / "train.csv")]
    _write_rows(tiny / "train.csv", ["Id", "label"], [*rows, ["", "cup"]])
    out = tmp_path / "out"
    assert main(["prep", "--data", str(tiny), "--out", str(out), "--no-progress"]) == 0
    assert "rows without an Id (left out, not in the manifest): 1 in train.csv" in (
        capsys.readouterr().out
    )
    assert json.loads((out / "report.json").read_text())["notes"]["rows_without_id"] == {"train": 1}
    # A blank row (spreadsheets write ",") has no label either: named by its line.
    _write_rows(tiny / "train.csv", ["Id", "label"], [*rows, ["", ""]])
    assert main(["prep", "--data", str(tiny), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert f"'(empty)' (e.g. Id <none, line {len(rows) + 2}>)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("Id,label\n", "no rows"),
        ("Id,category\n0001,cup\n", "lacks column(s) label"),
    ],
)
def test_bad_train_csv_is_a_clear_error(tiny, tmp_path, capsys, content, message):
    (tiny / "train.csv").write_text(content)
    out = tmp_path / "out"
    assert main(["prep", "--data", str(tiny), "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_empty_test_csv_is_a_clear_error(tiny, tmp_path, capsys):
    (tiny / "test.csv").write_text("")
    assert main(["prep", "--data", str(tiny), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "test.csv is empty" in capsys.readouterr().err


def test_extra_columns_are_tolerated_and_reported(tiny, tmp_path):
    rows = _rows(tiny / "train.csv")
    _write_rows(
        tiny / "train.csv", ["source", "Id", "label", "comment"],
        [["kaggle", r["Id"], r["label"], "ok, fine"] for r in rows],
    )  # fmt: skip
    out = tmp_path / "out"
    prepare(tiny, out)
    report = json.loads((out / "report.json").read_text())
    assert report["notes"]["ignored_columns"] == {"train.csv": ["source", "comment"]}
    assert len(_rows(out / "manifest.csv")) == len(rows) + len(_rows(tiny / "test.csv"))


def test_ids_keep_leading_zeros_and_a_stripped_id_gets_a_hint(tiny, tmp_path):
    rows = [[r["Id"], r["label"]] for r in _rows(tiny / "train.csv")]
    zero = next(i for i, _ in rows[1:] if i.startswith("00"))
    stripped = rows[0][0].lstrip("0") or "0"
    rows[0][0] = stripped  # as a spreadsheet would have saved it
    _write_rows(tiny / "train.csv", ["Id", "label"], rows)
    out = tmp_path / "out"
    prepare(tiny, out)
    manifest = {r["Id"]: r for r in _rows(out / "manifest.csv")}
    assert zero in manifest and manifest[zero]["split"] in ("train", "val")
    label = manifest[zero]["label"]
    assert (out / manifest[zero]["split"] / label / f"{zero}.jpg").is_file()
    assert manifest[stripped]["split"] == "excluded"
    assert "leading zeros" in manifest[stripped]["note"]


def test_repeated_ids_conflicts_and_train_test_overlap(tiny, tmp_path):
    train = _rows(tiny / "train.csv")
    test = _rows(tiny / "test.csv")
    by_label = defaultdict(list)
    for r in train:
        by_label[r["label"]].append(r["Id"])
    planted = {i for r in _rows(tiny / "planted_duplicates.csv") for i in (r["Id"], r["original"])}
    cup, fork = by_label["cup"], [i for i in by_label["fork"] if i not in planted]
    rows = [[r["Id"], r["label"]] for r in train]
    rows.append([cup[0], "cup"])  # same row twice: collapsed, reported
    rows.append([cup[1], "glass"])  # same Id, two labels: excluded
    # A byte copy of a fork photo labelled knife: a label conflict.
    conflict_id = "7777"
    shutil.copyfile(tiny / "images" / f"{fork[0]}.jpg", tiny / "images" / f"{conflict_id}.jpg")
    rows.append([conflict_id, "knife"])
    rows.append([test[0]["Id"], "plate"])  # also in test.csv
    _write_rows(tiny / "train.csv", ["Id", "label"], rows)

    out = tmp_path / "out"
    prepare(tiny, out)
    report = json.loads((out / "report.json").read_text())
    manifest = {r["Id"]: r for r in _rows(out / "manifest.csv")}
    repeated = {r["Id"]: r["labels"] for r in report["notes"]["repeated_ids"]}
    assert repeated[cup[0]] == ["cup", "cup"] and manifest[cup[0]]["split"] in ("train", "val")
    assert manifest[cup[1]]["split"] == "excluded" and "glass" in manifest[cup[1]]["note"]
    assert report["conflicts"] == [
        {"group": min(fork[0], conflict_id), "members": {fork[0]: "fork", conflict_id: "knife"}}
    ]
    assert manifest[fork[0]]["split"] == manifest[conflict_id]["split"] == "excluded"
    # The Id has one manifest row per CSV: kept as a test image, excluded from train.
    both = [r for r in _rows(out / "manifest.csv") if r["Id"] == test[0]["Id"]]
    assert sorted((r["split"], r["label"]) for r in both) == [("excluded", "plate"), ("test", "")]
    assert "also listed in test.csv" in next(r["note"] for r in both if r["label"])
    assert len(_rows(out / "manifest.csv")) == len({r[0] for r in rows}) + len(test)
    _check_split_invariants(out, 0.2)


def test_out_inside_the_source_tree_is_refused(tiny, capsys):
    assert main(["prep", "--data", str(tiny), "--out", str(tiny / "prepared")]) == 2
    assert "outside the source tree" in capsys.readouterr().err
    assert main(["prep", "--data", str(tiny), "--out", str(tiny), "--force"]) == 2
    assert (tiny / "train.csv").is_file()


# --------------------------------------------------------------------------- interruption


def test_interrupt_while_writing_leaves_no_out_and_keeps_the_old_one(tiny, tmp_path, monkeypatch):
    import kitchenware.dataprep.prep as prep_module

    out = tmp_path / "out"
    prepare(tiny, out)
    old = _tree_digest(out)
    real_place, placed = prep_module._place, []

    def place_then_interrupt(source, target, copy):
        placed.append(target)
        if len(placed) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
        return real_place(source, target, copy)

    monkeypatch.setattr(prep_module, "_place", place_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny, out, force=True, seed=9)
    assert _tree_digest(out) == old  # the previous output is untouched
    assert _leftovers(tmp_path) == []
    fresh = tmp_path / "fresh"
    placed.clear()
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny, fresh)
    assert not fresh.exists() and _leftovers(tmp_path) == []


def test_sigterm_during_hashing_leaves_no_out(tiny, tmp_path):
    """A real signal in a real second process, at a deterministic point."""
    out = tmp_path / "out"
    driver = textwrap.dedent(
        f"""
        import os, signal, sys
        from kitchenware.dataprep.prep import prepare

        def progress(items):
            for k, item in enumerate(items):
                if k == 5:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield item

        try:
            prepare({str(tiny)!r}, {str(out)!r}, workers=2, progress=progress)
        except KeyboardInterrupt:
            sys.exit(130)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130, proc.stderr
    assert not out.exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- robustness


def _corrupt(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    how = int(rng.integers(0, 5))
    if how == 0:  # bit flips anywhere
        for _ in range(int(rng.integers(1, 30))):
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
    elif how == 1:
        data = data[: int(rng.integers(0, len(data)))]
    elif how == 2:  # trash the header
        data[: min(len(data), 64)] = rng.bytes(min(len(data), 64))
    elif how == 3:
        data = bytearray()
    else:
        path.unlink()
        return
    path.write_bytes(bytes(data))


def test_random_corruption_of_a_copy(sample, tmp_path):
    data = _copy_tree(sample, tmp_path / "data")
    rng = np.random.default_rng(2024)
    files = sorted((data / "images").iterdir())
    for i in rng.choice(len(files), size=len(files) // 3, replace=False):
        _corrupt(files[i], rng)
    before = _tree_digest(data)
    unusable = set()
    for row in _rows(data / "train.csv") + _rows(data / "test.csv"):
        path = data / "images" / f"{row['Id']}.jpg"
        try:
            load_image(path)
        except (ImageError, FileNotFoundError):
            unusable.add(row["Id"])

    out = tmp_path / "out"
    assert main(["prep", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    reported = {b["Id"] for b in report["bad_files"]} | {m["Id"] for m in report["missing_files"]}
    assert reported == unusable and unusable
    assert _tree_digest(data) == before
    _check_split_invariants(out, 0.2)
    assert set(CLASSES) == {r["label"] for r in _rows(out / "manifest.csv") if r["label"]}


# --------------------------------------------------------------------------- split unit


def test_quotas_add_up_and_groups_never_straddle():
    from kitchenware.dataprep.splitting import class_quotas, stratified_group_split

    with pytest.raises(ValueError, match="g1 mix labels"):
        stratified_group_split({"a": ("cup", "g1"), "b": ("fork", "g1")}, 0.5, seed=0)
    # 1.4, 1.4, 0.2 -> floors 1, 1, 0; one more to reach round(3.0): the tie goes to "cup".
    assert class_quotas({"cup": 7, "fork": 7, "glass": 1}, 0.2) == {"cup": 2, "fork": 1, "glass": 0}
    rng = np.random.default_rng(5)
    for trial in range(30):
        items, next_id = {}, 0
        for label in CLASSES[: int(rng.integers(1, 7))]:
            for g in range(int(rng.integers(1, 25))):
                for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
                    items[f"{next_id:05d}"] = (label, f"{label}-{g}")
                    next_id += 1
        frac = float(rng.choice([0.0, 0.1, 0.2, 0.5]))
        split = stratified_group_split(items, frac, seed=trial)
        assert split.keys() == items.keys()  # nothing lost
        sides = defaultdict(set)
        for item_id, side in split.items():
            sides[items[item_id][1]].add(side)
        assert all(len(s) == 1 for s in sides.values())
        assert split == stratified_group_split(items, frac, seed=trial)
        singles = {i: (lab, i) for i, (lab, _) in items.items()}
        exact = stratified_group_split(singles, frac, seed=trial)
        for label in {lab for lab, _ in items.values()}:
            n = sum(lab == label for lab, _ in items.values())
            val = sum(exact[i] == "val" for i, (lab, _) in items.items() if lab == label)
            assert abs(val - frac * n) < 1


def test_image_workers_are_spawned_not_forked():
    """A forked worker of a process with gRPC/TensorFlow threads can die at random
    (seen in this suite: BrokenProcessPool after 'skipping fork() handlers')."""
    from kitchenware.dataprep.workers import process_pool

    pool = process_pool(2)
    try:
        assert pool._mp_context.get_start_method() == "spawn"
    finally:
        pool.shutdown()
