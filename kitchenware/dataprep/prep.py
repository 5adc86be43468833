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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES
from kitchenware.dataprep.dedupe import HASH_BITS, fingerprint_files
from kitchenware.dataprep.kaggle_layout import read_layout
from kitchenware.dataprep.plan import Plan, plan_output

DEFAULT_NEAR_DUP_DISTANCE = 24
MANIFEST_COLUMNS = ("Id", "label", "split", "sha256", "group", "note")


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(kw_only=True)
class PrepConfig:
    """`kitchenware prep` options; prepare()'s keyword defaults are these where they agree."""

    data: Path = option(help="Kaggle-layout folder")
    out: Path = option(help="output folder")
    val_frac: float = option(0.2, help="validation fraction")
    seed: int = option(42, help="split seed")
    near_dup_distance: int = option(
        DEFAULT_NEAR_DUP_DISTANCE,
        help=f"max Hamming distance (of {HASH_BITS} bits) between near duplicates; -1 turns "
        "near-duplicate detection off",
    )
    # The command uses every core; prepare() called from Python uses one unless told.
    workers: int = field(default_factory=_default_workers, metadata={"help": "hashing processes"})
    copy: bool = option(False, help="copy files instead of hard links")
    force: bool = option(False, help="replace an existing --out")
    no_progress: bool = option(False, help="no progress bar")


def add_arguments(parser) -> None:
    add_fields(parser, PrepConfig)


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
    val_frac: float = PrepConfig.val_frac,
    seed: int = PrepConfig.seed,
    near_dup_distance: int = PrepConfig.near_dup_distance,
    workers: int = 1,
    force: bool = PrepConfig.force,
    copy: bool = PrepConfig.copy,
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
    c = from_args(PrepConfig, args)
    plan = prepare(
        c.data,
        c.out,
        val_frac=c.val_frac,
        seed=c.seed,
        near_dup_distance=c.near_dup_distance,
        workers=c.workers,
        force=c.force,
        copy=c.copy,
        progress=not c.no_progress,
    )
    print(summary(plan, c.data, c.out))
    return 0
