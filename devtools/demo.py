"""`make demo`: the whole pipeline on synthetic sample data, one step after another.

    python -m devtools.demo [--dir demo]

Every step is a small function that takes the demo folder and runs a real
`kitchenware` command in-process. Later stages append their steps to
STEPS. Rerunnable: each step replaces its own output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from devtools.stack import GUNICORN_ALONE_NOTE, ServingStack, gateway_python_note
from kitchenware.cli import main as kitchenware


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


# -- training: quick settings so the demo finishes in minutes on a CPU ---------------
# From scratch (no download) at 96 px, so accuracy on the drawings is modest; real
# training uses ImageNet weights at 299 px (README, "Training").


def train(demo: Path) -> None:
    """Quick Xception from scratch (the `quick` preset: 96 px, weights none); writes runs/latest."""
    run = demo / "runs" / "quick"
    shutil.rmtree(run, ignore_errors=True)
    _run("train", "--data", str(demo / "prepared"), "--out", str(run), "--preset", "quick")


def evaluate(demo: Path) -> None:
    """Accuracy, per-class metrics and confusion matrix on the clean validation split."""
    _run(
        "evaluate", "--model", str(demo / "runs" / "latest" / "best.keras"),
        "--data", str(demo / "prepared"), "--out", str(demo / "runs" / "quick" / "eval-val"),
    )  # fmt: skip


def export(demo: Path) -> None:
    """SavedModel version for TF Serving (signature image -> probabilities, classes)."""
    model = str(demo / "runs" / "latest" / "best.keras")
    _run("export", "--model", model, "--out", str(model_base(demo)))
    _run("inspect", str(model_base(demo)))


STEPS: list[Callable[[Path], None]] = [sample_data, prep, prep_summary, train, evaluate, export]


# -- serving: runs after every build step in STEPS ----------------------------------


def model_base(demo: Path) -> Path:
    """Where the demo's export step writes SavedModel versions (TF Serving layout)."""
    return demo / "models" / "kitchenware"


def serve_and_classify(demo: Path) -> None:
    """Model server + gunicorn gateway in the background, `test.py` on a few images, stop."""
    from kitchenware.core.contract import versions

    base = model_base(demo)
    if not versions(base):
        raise SystemExit(f"demo: no exported model under {base}; the export step must write there")
    photos, truth = _unseen_photos(demo / "data", per_class=1)
    if not photos:
        raise SystemExit(f"demo: no test images under {demo / 'data'}")
    logs = demo / "serve-logs"
    shutil.rmtree(logs, ignore_errors=True)
    stack = ServingStack(base, log_dir=logs)
    print(gateway_python_note(stack.gateway.gunicorn.python), flush=True)
    print(GUNICORN_ALONE_NOTE, flush=True)
    with stack:
        print(f"model server + gateway starting (logs: {logs}/) ...", flush=True)
        stack.wait_ready()
        print(f"gateway ready at {stack.url}/ serving {base} (versions {versions(base)})")
        print("true labels: " + ", ".join(f"{p.name} {truth[p.stem]}" for p in photos))
        _run_classify([str(p) for p in photos] + ["--gateway", stack.url])
    print("model server and gateway stopped")


def _unseen_photos(data: Path, per_class: int) -> tuple[list[Path], dict[str, str]]:
    """Test-split photos (never trained on), `per_class` of each class when labels are known."""
    import csv

    labels_file = data / "test_labels.csv"
    if not labels_file.is_file():
        ids = [row["Id"] for row in csv.DictReader((data / "test.csv").open())][:4]
        return [data / "images" / f"{i}.jpg" for i in ids], dict.fromkeys(ids, "?")
    truth = {row["Id"]: row["label"] for row in csv.DictReader(labels_file.open())}
    chosen: dict[str, list[str]] = {}
    for image_id, label in sorted(truth.items()):
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(image_id)
    ids = [i for label in sorted(chosen) for i in chosen[label]]
    return [data / "images" / f"{i}.jpg" for i in ids], truth


def _run_classify(argv: list[str]) -> None:
    print(f"\n$ python test.py {' '.join(argv)}", flush=True)
    code = kitchenware(argv, command="classify")
    if code != 0:
        raise SystemExit(f"demo: `test.py` failed with exit code {code}")


SERVING_STEPS: list[Callable[[Path], None]] = [serve_and_classify]


def _run_steps(steps: list[Callable[[Path], None]], demo: Path) -> None:
    demo.mkdir(parents=True, exist_ok=True)
    for step in steps:
        started = time.monotonic()
        print(f"\n=== {step.__name__}: {(step.__doc__ or '').strip()}", flush=True)
        step(demo)
        print(f"=== {step.__name__} done in {time.monotonic() - started:.1f}s", flush=True)


def build(demo: Path) -> None:
    """Every step up to an exported model (what `make serve` runs when there is none)."""
    _run_steps(STEPS, demo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="demo working folder")
    args = parser.parse_args(argv)
    _run_steps(STEPS + SERVING_STEPS, args.dir)
    print(f"\ndemo finished; everything is under {args.dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
