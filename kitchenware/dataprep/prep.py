"""Prepare Kaggle-layout data for training: dedupe, leak report, exact split.

Reads DATA/train.csv, DATA/test.csv and DATA/images/<Id>.jpg, and writes

  OUT/train/<class>/<Id>.jpg   training images (one per duplicate group)
  OUT/val/<class>/<Id>.jpg     validation images (stratified, seeded, exact counts)
  OUT/test/<Id>.jpg            every readable test image (never removed)
  OUT/manifest.csv             Id,label,split,sha256,group,note for every CSV row with an Id
  OUT/report.json              duplicates, conflicts, leaks, bad and missing files

Duplicates are found across train and test: exact (same sha256) and near
(256-bit perceptual hash of the decoded pixels within --near-dup-distance
bits). The default, 24, was measured on kitchenware-mini: re-encoded (quality
60-90), resized (x0.5-1.08), EXIF-rotated and PNG-converted copies of 60
photos were at most 20 bits from their originals, while the closest two
photos with different labels were 54 bits apart. Files are hard-linked (or
copied, see --copy), so the source tree is never modified. The output is
built in a temporary folder next to OUT and renamed into place at the end:
an interrupted run leaves no OUT.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES
from kitchenware.dataprep.dedupe import HASH_BITS, Fingerprint, fingerprint_files, group_duplicates
from kitchenware.dataprep.kaggle_layout import Entry, read_layout
from kitchenware.dataprep.splitting import stratified_group_split

DEFAULT_NEAR_DUP_DISTANCE = 24
MANIFEST_COLUMNS = ("Id", "label", "split", "sha256", "group", "note")


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--val-frac", type=float, default=0.2, help="validation fraction")
    parser.add_argument("--seed", type=int, default=42, help="split seed")
    parser.add_argument(
        "--near-dup-distance",
        type=int,
        default=DEFAULT_NEAR_DUP_DISTANCE,
        help=f"max Hamming distance (of {HASH_BITS} bits) between near duplicates; -1 turns "
        "near-duplicate detection off",
    )
    parser.add_argument("--workers", type=int, default=_default_workers(), help="hashing processes")
    parser.add_argument("--copy", action="store_true", help="copy files instead of hard links")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- analysis


@dataclass
class Plan:
    """Where every entry goes, and why; pure data, nothing written yet."""

    rows: list[dict[str, str]]  # manifest rows, sorted by Id
    files: list[tuple[Path, str]]  # (source file, path relative to OUT)
    report: dict = field(default_factory=dict)


Key = tuple[str, str]  # (source, Id): an Id is unique within its CSV
Status = dict[Key, tuple[str, str]]  # -> (split, note)


def _key(entry: Entry) -> Key:
    return (entry.source, entry.id)


@dataclass
class _Group:
    """Valid entries that are copies of each other (an entry with no copy is a group of one)."""

    name: str  # the smallest member Id, so names do not depend on hashing order
    members: list[Entry]  # in input order

    @property
    def train(self) -> list[Entry]:
        return [e for e in self.members if e.source == "train"]

    @property
    def test(self) -> list[Entry]:
        return [e for e in self.members if e.source == "test"]


@dataclass
class _TrainChoice:
    """What deduplication decided for the train side of every group."""

    kept: dict[str, tuple[str, str]] = field(default_factory=dict)  # Id -> (label, group)
    status: Status = field(default_factory=dict)  # the train entries left out, and why
    conflicts: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)


def plan_output(
    entries: list[Entry],
    prints: dict[str, Fingerprint],
    near_dup_distance: int,
    val_frac: float,
    seed: int,
) -> Plan:
    """Decide train/val/test/excluded for every entry. `prints` maps Id to the
    fingerprint of its file (hashed entries only)."""
    status, bad_files, missing = _screen(entries, prints)
    valid = [e for e in entries if _key(e) not in status]
    groups, near_links = _duplicate_groups(valid, prints, near_dup_distance)
    train = _choose_train(groups, prints)
    status.update(train.status)
    status.update({_key(t): ("test", "") for g in groups for t in g.test})
    for item_id, side in stratified_group_split(train.kept, val_frac, seed).items():
        status[("train", item_id)] = (side, "")
    rows, files = _manifest(entries, status, groups, prints)
    described = [_describe_group(g, prints) for g in groups if len(g.members) > 1]
    report = {
        "counts": _counts(entries, rows),
        "duplicates": _duplicate_counts(described, valid, prints, near_links, train.removed),
        "conflicts": train.conflicts,
        "leaks": [leak for g in groups for leak in _leaks(g, prints)],
        "bad_files": bad_files,
        "missing_files": missing,
        "removed_duplicates": train.removed,
        "groups": sorted(described, key=lambda g: g["group"]),
    }
    return Plan(rows, files, report)


def _screen(entries: list[Entry], prints: dict[str, Fingerprint]) -> tuple[Status, list, list]:
    """Exclude the entries the CSVs or their files rule out: (status, bad files, missing files)."""
    status: Status = {}
    bad_files, missing = [], []
    for e in entries:
        if e.problem:
            status[_key(e)] = ("excluded", e.problem)
            if e.problem.startswith("no file"):
                missing.append({"Id": e.id, "csv": f"{e.source}.csv", "problem": e.problem})
            continue
        fp = prints.get(e.id)
        if fp is None or fp.error:
            reason = fp.error if fp else "not hashed"
            status[_key(e)] = ("excluded", f"bad file: {reason}")
            bad_files.append(
                {"Id": e.id, "csv": f"{e.source}.csv", "file": e.path.name, "problem": reason}
            )
    return status, bad_files, missing


def _duplicate_groups(
    valid: list[Entry], prints: dict[str, Fingerprint], near_dup_distance: int
) -> tuple[list[_Group], set[tuple[int, int]]]:
    """Exact and near copies across train and test, grouped; and the near-only links."""
    roots, near_links = group_duplicates(
        [prints[e.id].sha256 for e in valid],
        [prints[e.id].phash for e in valid],
        near_dup_distance,
    )
    members: dict[int, list[Entry]] = defaultdict(list)
    for entry, root in zip(valid, roots, strict=True):
        members[root].append(entry)
    groups = [_Group(min(e.id for e in group), group) for group in members.values()]
    return groups, near_links


def _choose_train(groups: list[_Group], prints: dict[str, Fingerprint]) -> _TrainChoice:
    """One train image per group, the largest file (the least re-compressed copy), ties by
    Id; a group whose train copies disagree on the label gives no train image at all."""
    choice = _TrainChoice()
    for group in groups:
        train = group.train
        if len({e.label for e in train}) > 1:
            choice.conflicts.append(
                {"group": group.name, "members": {e.id: e.label for e in train}}
            )
            for e in train:
                choice.status[_key(e)] = ("excluded", f"label conflict in group {group.name}")
        elif train:
            kept = min(train, key=lambda e: (-prints[e.id].size_bytes, e.id))
            choice.kept[kept.id] = (kept.label, group.name)
            for e in train:
                if e is not kept:
                    same = prints[e.id].sha256 == prints[kept.id].sha256
                    kind = "exact" if same else "near"
                    choice.status[_key(e)] = ("excluded", f"{kind} duplicate of {kept.id}")
                    choice.removed.append({"Id": e.id, "kept": kept.id, "match": kind})
    return choice


def _leaks(group: _Group, prints: dict[str, Fingerprint]) -> list[dict]:
    """The group's test images that copy one of its train images (they stay in test)."""
    train = group.train
    if not train:
        return []
    labels = sorted({e.label for e in train})
    return [
        {
            "test_id": t.id,
            "train_ids": sorted(e.id for e in train),
            "train_labels": labels,
            "match": (
                "exact"
                if any(prints[e.id].sha256 == prints[t.id].sha256 for e in train)
                else "near"
            ),
        }
        for t in group.test
    ]


def _manifest(
    entries: list[Entry], status: Status, groups: list[_Group], prints: dict[str, Fingerprint]
) -> tuple[list[dict[str, str]], list[tuple[Path, str]]]:
    """Manifest rows sorted by Id, and the (source file, path under OUT) of every kept image."""
    group_of = {_key(e): g.name for g in groups for e in g.members}
    rows, files = [], []
    for e in sorted(entries, key=lambda e: (e.id, e.source)):
        split, note = status[_key(e)]
        fp = None if e.problem else prints.get(e.id)
        rows.append(
            {
                "Id": e.id,
                "label": e.label,
                "split": split,
                "sha256": (fp.sha256 or "") if fp else "",
                "group": group_of.get(_key(e), ""),
                "note": note,
            }
        )
        if split in ("train", "val"):
            files.append((e.path, f"{split}/{e.label}/{e.id}{e.path.suffix.lower()}"))
        elif split == "test":
            files.append((e.path, f"test/{e.id}{e.path.suffix.lower()}"))
    return rows, files


def _describe_group(group: _Group, prints: dict[str, Fingerprint]) -> dict:
    """A group of copies as report.json lists it, members sorted by Id."""
    return {
        "group": group.name,
        "members": [
            {
                "Id": e.id,
                "csv": f"{e.source}.csv",
                "label": e.label,
                "sha256": prints[e.id].sha256,
            }
            for e in sorted(group.members, key=lambda e: e.id)
        ],
    }


def _counts(entries: list[Entry], rows: list[dict[str, str]]) -> dict:
    """Images per class and split, and how many Ids each CSV listed."""
    per_class = {s: Counter(r["label"] for r in rows if r["split"] == s) for s in ("train", "val")}
    return {
        "train": {c: per_class["train"][c] for c in CLASSES},
        "val": {c: per_class["val"][c] for c in CLASSES},
        "test": sum(r["split"] == "test" for r in rows),
        "excluded": sum(r["split"] == "excluded" for r in rows),
        "listed": {
            "train.csv": sum(e.source == "train" for e in entries),
            "test.csv": sum(e.source == "test" for e in entries),
        },
    }


def _duplicate_counts(
    described: list[dict],
    valid: list[Entry],
    prints: dict[str, Fingerprint],
    near_links: set[tuple[int, int]],
    removed: list[dict],
) -> dict:
    """How many groups and copies were found, and how many train images they cost."""
    exact_copies = sum(n - 1 for n in Counter(prints[e.id].sha256 for e in valid).values())
    in_groups = sum(len(g["members"]) for g in described)
    return {
        "groups": len(described),
        "images_in_groups": in_groups,
        "exact_copies": exact_copies,
        "near_copies": in_groups - len(described) - exact_copies,
        "near_links": len(near_links),
        "train_removed": len(removed),
    }


# --------------------------------------------------------------------------- output


def _check_out(data: Path, out: Path, force: bool) -> None:
    data_r, out_r = data.resolve(), out.resolve()
    if out_r == data_r or out_r in data_r.parents or data_r in out_r.parents:
        raise KitchenwareError(
            f"--out {out} overlaps --data {data}: write the output outside the source tree"
        )
    if out.exists() or out.is_symlink():
        if not force:
            raise KitchenwareError(f"{out} already exists; pass --force to replace it")
        if not out.is_dir() or out.is_symlink():
            raise KitchenwareError(f"{out} exists and is not a folder; not replacing it")


def _place(source: Path, target: Path, copy: bool) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(source, target)
            return "linked"
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    shutil.copyfile(source, target)
    return "copied"


def write_output(plan: Plan, out: Path, force: bool, copy: bool) -> None:
    """Build everything in a temp folder beside `out`, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.prep-", dir=out.parent))
    try:
        for split in ("train", "val"):
            for label in CLASSES:
                (tmp / split / label).mkdir(parents=True)
        (tmp / "test").mkdir()
        placed = Counter(_place(src, tmp / rel, copy) for src, rel in plan.files)
        plan.report["files"] = {"linked": placed["linked"], "copied": placed["copied"]}
        with (tmp / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, MANIFEST_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(plan.rows)
        (tmp / "report.json").write_text(json.dumps(plan.report, indent=2) + "\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- summary


def summary(plan: Plan, data: Path, out: Path) -> str:
    r = plan.report
    listed = r["counts"]["listed"]
    lines = [f"prep: {listed['train.csv']} train + {listed['test.csv']} test Ids in {data}"]
    lines.append(f"  {'class':<8}{'train':>7}{'val':>7}")
    for c in CLASSES:
        lines.append(f"  {c:<8}{r['counts']['train'][c]:>7}{r['counts']['val'][c]:>7}")
    total_train = sum(r["counts"]["train"].values())
    total_val = sum(r["counts"]["val"].values())
    lines.append(f"  {'total':<8}{total_train:>7}{total_val:>7}    test: {r['counts']['test']}")
    d = r["duplicates"]
    lines.append(
        f"duplicates: {d['groups']} groups ({d['exact_copies']} exact copies, "
        f"{d['near_copies']} near copies); {d['train_removed']} train images removed"
    )
    conflicted = sum(len(c["members"]) for c in r["conflicts"])
    lines.append(f"conflicts: {len(r['conflicts'])} groups, {conflicted} train images excluded")
    lines.append(f"leaks: {len(r['leaks'])} test images duplicate train images")
    lines.append(
        f"bad files: {len(r['bad_files'])}; missing files: {len(r['missing_files'])}; "
        f"other excluded rows: {r['counts']['excluded'] - conflicted - d['train_removed'] - len(r['bad_files']) - len(r['missing_files'])}; "
        f"images not in any CSV: {r['notes']['unlisted_images']['count']}"
    )
    no_id = r["notes"].get("rows_without_id", {})
    if no_id:
        counts = ", ".join(f"{n} in {name}.csv" for name, n in sorted(no_id.items()))
        lines.append(f"rows without an Id (left out, not in the manifest): {counts}")
    lines.append(f"wrote {out}/ (manifest.csv, report.json)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def prepare(
    data: Path,
    out: Path,
    val_frac: float = 0.2,
    seed: int = 42,
    near_dup_distance: int = DEFAULT_NEAR_DUP_DISTANCE,
    workers: int = 1,
    force: bool = False,
    copy: bool = False,
    progress: bool | Callable[[Iterable], Iterable] = False,
) -> Plan:
    """The whole step; returns the plan (report included) after OUT is in place.

    `progress`: True for a tqdm bar, or a callable wrapping the iterator of
    fingerprints. SIGTERM is turned into KeyboardInterrupt while this runs (in
    the main thread), so `kill` cleans up exactly like Ctrl-C.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if main_thread:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _prepare(
            data, out, val_frac, seed, near_dup_distance, workers, force, copy, progress
        )
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _prepare(data, out, val_frac, seed, near_dup_distance, workers, force, copy, progress) -> Plan:
    if not 0.0 <= val_frac < 1.0:
        raise KitchenwareError(f"--val-frac must be in [0, 1), got {val_frac}")
    if not -1 <= near_dup_distance <= HASH_BITS:
        raise KitchenwareError(f"--near-dup-distance must be in -1..{HASH_BITS}")
    if workers < 1:
        raise KitchenwareError("--workers must be >= 1")
    data, out = Path(data), Path(out)
    _check_out(data, out, force)
    layout = read_layout(data)
    todo = [e for e in layout.entries if not e.problem]
    wrap = progress if callable(progress) else None
    if progress is True:
        from tqdm import tqdm

        def wrap(it):
            return tqdm(
                it, total=len(todo), desc="hashing", unit="img", file=sys.stderr, disable=None
            )

    prints = fingerprint_files([e.path for e in todo], workers=workers, progress=wrap)
    plan = plan_output(
        layout.entries,
        dict(zip((e.id for e in todo), prints, strict=True)),
        near_dup_distance,
        val_frac,
        seed,
    )
    plan.report["notes"] = layout.notes
    plan.report["settings"] = {
        "data": str(data),
        "val_frac": val_frac,
        "seed": seed,
        "near_dup_distance": near_dup_distance,
        "hash": f"imagehash.phash, {HASH_BITS} bits, of kitchenware.core.images.load_image pixels",
    }
    write_output(plan, out, force, copy)
    return plan


def run(args) -> int:
    plan = prepare(
        args.data,
        args.out,
        val_frac=args.val_frac,
        seed=args.seed,
        near_dup_distance=args.near_dup_distance,
        workers=args.workers,
        force=args.force,
        copy=args.copy,
        progress=not args.no_progress,
    )
    print(summary(plan, args.data, args.out))
    return 0
