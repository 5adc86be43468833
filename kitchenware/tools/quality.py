"""The model-quality report: the documented recipe on real photos, scored on the test split.

`make quality` (python -m kitchenware.tools.quality) runs, on a Kaggle-layout
folder with test answers (kitchenware-mini ships `test_labels.csv`):

1. `kitchenware prep` (dedupe, leak report, train/val split; test kept whole);
2. the recipe: frozen ImageNet Xception (`kitchenware weights fetch`), stage 1
   on cached backbone features with balanced class weights, then fine-tuning
   the top layers; model selection on val only;
3. a from-scratch baseline (the `quick` preset), for scale;
4. `kitchenware evaluate --split test` with and without `--tta flip`, also
   restricted to the test images that do not leak from train.

The test split is scored once per model, never used to choose anything. The
report is a markdown table (docu/QUALITY.md) plus the JSON of every evaluation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from kitchenware.core.contract import DEFAULT_IMAGE_SIZE
from kitchenware.tools.benchlib import MINI_DATA, cpu_model

RECIPE = {
    "size": DEFAULT_IMAGE_SIZE,
    "epochs": 10,
    "patience": 4,
    "class-weights": "balanced",
    "fine-tune-layers": 20,
    "fine-tune-lr": 1e-5,
    "fine-tune-epochs": 3,
}


def _cli(*argv: str) -> None:
    from kitchenware.cli import main

    code = main(list(argv))
    if code != 0:
        raise SystemExit(f"kitchenware {' '.join(argv)} exited with {code}")


def _flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def _scores(report: dict, leaked: set[str]) -> dict:
    """Accuracy, per-class recall, and accuracy on the test images that do not leak."""
    wrong = {Path(item["path"]).stem for item in report["misclassified"]}
    clean = report["images"] - len(leaked)
    return {
        "accuracy": report["accuracy"],
        "images": report["images"],
        "accuracy_without_leaks": (clean - len(wrong - leaked)) / clean if clean else None,
        "images_without_leaks": clean,
        "recall": {name: m["recall"] for name, m in report["per_class"].items()},
        "seconds": report["seconds"],
    }


def evaluate_model(model: Path, prep: Path, labels: Path, out: Path, leaked: set[str]) -> dict:
    from kitchenware.training.evaluate import evaluate

    results = {}
    for split, tta in (("val", "none"), ("test", "none"), ("test", "flip")):
        report = evaluate(model, prep, split=split, tta=tta, out=out / f"eval-{split}-{tta}",
                          labels=labels if split == "test" else None)  # fmt: skip
        results[f"{split}" + ("" if tta == "none" else f"+tta-{tta}")] = _scores(
            report, leaked if split == "test" else set()
        )
    return results


def run(data: Path, work: Path, cache: Path | None) -> dict:
    from kitchenware.training.weights import fetch

    labels = data / "test_labels.csv"
    if not labels.is_file():
        raise SystemExit(f"{labels} is missing: the test split cannot be scored without answers")
    prep = work / "prep"
    if not (prep / "report.json").is_file():
        _cli("prep", "--data", str(data), "--out", str(prep), "--no-progress")
    leaked = {leak["test_id"] for leak in json.loads((prep / "report.json").read_text())["leaks"]}
    weights = fetch(cache) if cache else fetch()
    timings, models = {}, {}

    started = time.perf_counter()
    recipe = work / "runs" / "recipe"
    _cli("train", "--data", str(prep), "--out", str(recipe), "--weights", str(weights),
         "--cached-features", "--no-augment", "--feature-cache", str(work / "features"),
         "--verbose", "0",
         *_flags(RECIPE))  # fmt: skip
    timings["recipe_train_s"] = round(time.perf_counter() - started, 1)
    models["recipe"] = evaluate_model(recipe / "best.keras", prep, labels, recipe, leaked)

    started = time.perf_counter()
    scratch = work / "runs" / "scratch"
    _cli("train", "--data", str(prep), "--out", str(scratch), "--preset", "quick",
         "--verbose", "0")  # fmt: skip
    timings["scratch_train_s"] = round(time.perf_counter() - started, 1)
    models["scratch (quick preset)"] = evaluate_model(
        scratch / "best.keras", prep, labels, scratch, leaked
    )
    prep_report = json.loads((prep / "report.json").read_text())
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} x {cpu_model()}, {platform.machine()}, no GPU",
        "data": str(data.name),
        "split_counts": prep_report["counts"],
        "leaked_test_images": len(leaked),
        "recipe": RECIPE,
        "timings": timings,
        "models": models,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Model quality",
        "",
        "Written by `make quality` (`python -m kitchenware.tools.quality`) on "
        f"{result['date']}, {result['machine']}, data `{result['data']}` "
        f"(split {result['split_counts']}; {result['leaked_test_images']} test images are "
        "near or exact copies of train images: prep reports them and keeps them, so the "
        "table also scores the test split without them). Model selection used val only; "
        "each test number is one evaluation.",
        "",
        "Recipe: frozen ImageNet Xception (`kitchenware weights fetch`), head trained on "
        "cached backbone features (so `--no-augment`), then fine-tuning: "
        + ", ".join(f"`--{k} {v}`" for k, v in result["recipe"].items())
        + f" (train {result['timings']['recipe_train_s']} s; from-scratch baseline "
        f"{result['timings']['scratch_train_s']} s).",
        "",
        "| model | split | accuracy | without leaks | lowest recall (class) |",
        "|---|---|---|---|---|",
    ]
    for name, results in result["models"].items():
        for split, s in results.items():
            worst = min(s["recall"], key=s["recall"].get)
            clean = (
                ""
                if split == "val"
                else f"{s['accuracy_without_leaks']:.3f} ({s['images_without_leaks']})"
            )
            lines.append(
                f"| {name} | {split} ({s['images']}) | {s['accuracy']:.3f} | {clean} | "
                f"{s['recall'][worst]:.2f} ({worst}) |"
            )
    lines += ["", "Per-class recall on the test split:", "",
              "| model | split | " + " | ".join(next(iter(result["models"].values()))["test"]["recall"]) + " |",
              "|---|---|" + "---|" * 6]  # fmt: skip
    for name, results in result["models"].items():
        for split, s in results.items():
            if split.startswith("test"):
                lines.append(f"| {name} | {split} | "
                             + " | ".join(f"{r:.2f}" for r in s["recall"].values()) + " |")  # fmt: skip
    lines += ["", "The recipe's training curves and its test confusion matrix (no TTA). The "
              "misclassified photos are in the work folder (`runs/recipe/eval-test-none/"
              "misclassified.png`), not here: the photos stay out of the repository.", "",
              "![training curves](images/quality/history.png)",
              "![confusion matrix](images/quality/confusion_matrix.png)"]  # fmt: skip
    return "\n".join(lines) + "\n"


def copy_figures(work: Path, report: Path) -> None:
    """The recipe's PNGs next to the report, where its links point."""
    figures = report.parent / "images" / "quality"
    figures.mkdir(parents=True, exist_ok=True)
    recipe = work / "runs" / "recipe"
    for source in (recipe / "history.png", recipe / "eval-test-none" / "confusion_matrix.png"):
        shutil.copy(source, figures / source.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=MINI_DATA, help="Kaggle folder + test_labels.csv"
    )
    parser.add_argument("--work", type=Path, default=Path("runs/quality"), help="working folder")
    parser.add_argument("--cache", type=Path, default=None, help="weights cache folder")
    parser.add_argument(
        "--report", type=Path, default=Path("docu/QUALITY.md"), help="markdown report"
    )
    args = parser.parse_args(argv)
    result = run(args.data, args.work, args.cache)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    args.report.write_text(markdown(result))
    copy_figures(args.work, args.report)
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
