"""Where every Kaggle entry goes (train, val, test or excluded) and why: prep's decisions.

Pure data in, pure data out, nothing written: duplicates are grouped across
train and test, a group whose train copies disagree on the label is left out,
otherwise one train copy is kept (the others are listed as removed), test
copies of train images are reported as leaks but stay in test, and the kept
train images are split into train and val. `prep` writes what this decides.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kitchenware.core.labels import CLASSES
from kitchenware.dataprep.dedupe import Fingerprint, group_duplicates
from kitchenware.dataprep.kaggle_layout import Entry
from kitchenware.dataprep.splitting import stratified_group_split


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
