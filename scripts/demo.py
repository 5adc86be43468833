"""`make demo`: the whole pipeline on synthetic sample data, one step after another.

Every step is a small function that takes the demo folder and runs a real
`kitchenware` command in-process. Later stages append their steps to
STEPS. Rerunnable: each step replaces its own output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kitchenware.cli import main as kitchenware  # noqa: E402


def _run(*argv: str) -> None:
    print(f"\n$ kitchenware {' '.join(argv)}", flush=True)
    code = kitchenware(list(argv))
    if code != 0:
        raise SystemExit(f"demo: `kitchenware {argv[0]}` failed with exit code {code}")


def sample_data(demo: Path) -> None:
    """Synthetic drawings of the six classes (NOT real photos) in Kaggle layout."""
    _run("sample-data", str(demo / "data"), "--force")


def prep(demo: Path) -> None:
    """Dedupe and split; the planted duplicates show up in the report."""
    _run("prep", "--data", str(demo / "data"), "--out", str(demo / "prepared"), "--force")


def prep_summary(demo: Path) -> None:
    """What prep found, next to what sample-data planted."""
    report = json.loads((demo / "prepared" / "report.json").read_text())
    planted = (demo / "data" / "planted_duplicates.csv").read_text().splitlines()[1:]
    found = report["duplicates"]
    print(
        f"\nprep found {found['exact_copies']} exact + {found['near_copies']} near copies "
        f"({len(planted)} planted by sample-data), {len(report['leaks'])} train->test leaks"
    )


STEPS: list[Callable[[Path], None]] = [sample_data, prep, prep_summary]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="demo working folder")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    for step in STEPS:
        started = time.monotonic()
        print(f"\n=== {step.__name__}: {(step.__doc__ or '').strip()}", flush=True)
        step(args.dir)
        print(f"=== {step.__name__} done in {time.monotonic() - started:.1f}s", flush=True)
    print(f"\ndemo finished; everything is under {args.dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
