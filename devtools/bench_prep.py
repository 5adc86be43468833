"""Benchmark `kitchenware prep`: images per second, 1 process vs 2, side by side.

Draws N synthetic 1000x750 JPEG photos (the Kaggle photos' size) into a
temporary folder, then runs the whole prep step (fingerprinting, grouping,
split, output by hard links) alternately with --workers 1 and --workers 2,
`--repeats` times each, and prints the best time of each and their ratio.

    python -m devtools.bench_prep             # N=2000, about 2-3 minutes on 2 cores
    python -m devtools.bench_prep --n 10000   # about the Kaggle set's size (9,367 images)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from devtools.benchlib import cpu_model
from kitchenware.dataprep.prep import prepare
from kitchenware.dataprep.synthetic import generate


def _timed_prep(data: Path, out: Path, workers: int) -> tuple[float, float, dict]:
    """(total seconds, hashing seconds, report) for one run of prep."""
    marks: dict[str, float] = {}

    def progress(items):
        marks["start"] = time.perf_counter()
        yield from items
        marks["hashed"] = time.perf_counter()

    started = time.perf_counter()
    plan = prepare(data, out, workers=workers, force=True, progress=progress)
    total = time.perf_counter() - started
    return total, marks["hashed"] - marks["start"], plan.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=2000, help="photos to draw (60%% train, 40%% test)"
    )
    parser.add_argument("--width", type=int, default=1000, help="photo width (height is 3/4)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per worker count (best kept)")
    parser.add_argument("--keep", type=Path, help="keep the drawn data set in this folder")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-prep-"))
    try:
        data = args.keep or tmp / "data"
        per_class = max(1, round(args.n * 0.6 / 6))
        test_per_class = max(0, round(args.n * 0.4 / 6))
        if not (data / "train.csv").is_file():
            started = time.perf_counter()
            generate(data, per_class=per_class, size=args.width,
                     test_per_class=test_per_class, seed=1, workers=os.cpu_count() or 1)  # fmt: skip
            print(f"drew {6 * (per_class + test_per_class)} photos in "
                  f"{time.perf_counter() - started:.0f}s", flush=True)  # fmt: skip
        n_images = sum(1 for _ in (data / "images").iterdir())
        best: dict[int, tuple[float, float]] = {}
        for repeat in range(args.repeats):
            for workers in (1, 2):
                total, hashing, report = _timed_prep(data, tmp / "out", workers)
                print(f"run {repeat + 1}: --workers {workers}: {total:6.1f}s total "
                      f"({hashing:.1f}s hashing) = {n_images / total:6.1f} images/s", flush=True)  # fmt: skip
                if workers not in best or total < best[workers][0]:
                    best[workers] = (total, hashing)
        one, two = best[1][0], best[2][0]
        d = report["duplicates"]
        print()
        print(f"images: {n_images} at {args.width}x{round(args.width * 3 / 4)} "
              f"(duplicate groups found: {d['groups']})")  # fmt: skip
        print(f"1 process : {n_images / one:6.1f} images/s  (best of {args.repeats}: {one:.1f}s)")
        print(f"2 processes: {n_images / two:6.1f} images/s  (best of {args.repeats}: {two:.1f}s)")
        print(f"speed-up 2 vs 1 processes: {one / two:.2f}x (same data, same run)")
        print(f"hashing share of the 2-process run: {best[2][1] / two:.0%}")
        print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, "
              f"{date.today().isoformat()}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
