"""The model-quality report: the documented recipe on real photos, scored on the test split.

`make quality` (python -m devtools.quality) runs, on a Kaggle-layout
folder with test answers (kitchenware-mini ships `test_labels.csv`):

1. `kitchenware prep` (dedupe, leak report, train/val split; test kept whole);
2. `kitchenware tune`: a small lr x inner x dropout grid of stage 1 on cached
   frozen-ImageNet features (`kitchenware weights fetch`), ranked on val only;
3. the recipe: the tune winner's head, balanced class weights, then
   fine-tuning the top layers;
4. stage-1 variants of the winner: without class weights, and with
   augmentation (through the backbone, no cache, fewer epochs);
5. a from-scratch baseline (the `quick` preset), for scale;
6. `bench_train frozen`: cached features vs the frozen backbone every epoch;
7. `kitchenware evaluate` on val and on the test split (with and without
   `--tta flip`), also restricted to the test images that do not leak from train.

The test split is scored once per model, never used to choose anything. Every
figure comes from this one run; the report (docu/QUALITY.md) lists its commands.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devtools.benchlib import MINI_DATA, cpu_model
from kitchenware.core.contract import DEFAULT_IMAGE_SIZE

STAGE1 = {"size": DEFAULT_IMAGE_SIZE, "epochs": 10, "patience": 4, "class-weights": "balanced"}
FINE_TUNE = {"fine-tune-layers": 20, "fine-tune-lr": 1e-5, "fine-tune-epochs": 3}
# 2 x 2 x 2 trials; the seed's head (lr 1e-3, inner 100, dropout 0.2) is one of them.
GRID = {"lr": "0.001,0.0001", "inner": "10,100", "dropout": "0.2,0.5"}
# Augmented images must go through the backbone every epoch (~10x a cached epoch).
AUGMENTED_EPOCHS = 4
# Folders this tool owns inside --work; cleared first so every figure is from this run.
OWNED = ("prep", "runs", "tune", "features")


def _flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


class Steps:
    """Runs `kitchenware` commands, remembering each command line and its wall time."""

    def __init__(self, names: dict[str, str]):
        self.names = names  # machine-specific paths -> the placeholders the report uses
        self.commands: list[str] = []
        self.timings: dict[str, float] = {}

    def shown(self, argv) -> str:
        text = " ".join(str(a) for a in argv)
        for path, name in sorted(self.names.items(), key=lambda item: -len(item[0])):
            text = text.replace(path, name)
        return text

    def cli(self, stage: str, *argv) -> None:
        """One step in its own process: TensorFlow's memory goes back after each step
        (in one process ~20 steps of Xception at 299 grew past 24 GB)."""
        self.run(
            stage,
            "kitchenware " + self.shown(argv),
            [sys.executable, "-m", "kitchenware.cli", *argv],
        )

    def run(self, stage: str, shown: str, command: list) -> None:
        started = time.perf_counter()
        code = subprocess.run([str(a) for a in command], check=False).returncode
        if code != 0:
            raise SystemExit(f"{shown} exited with {code}")
        self.commands.append(shown)
        self.timings[stage] = round(self.timings.get(stage, 0) + time.perf_counter() - started, 1)


def _scores(report: dict, leaked: set[str]) -> dict:
    """Accuracy, per-class metrics, and accuracy on the test images that do not leak."""
    wrong = {Path(item["path"]).stem for item in report["misclassified"]}
    clean = report["images"] - len(leaked)
    return {
        "accuracy": report["accuracy"],
        "images": report["images"],
        "accuracy_without_leaks": (clean - len(wrong - leaked)) / clean if clean else None,
        "images_without_leaks": clean,
        "recall": {name: m["recall"] for name, m in report["per_class"].items()},
        "per_class": report["per_class"],
        "confusion_matrix": report.get("confusion_matrix"),
        "seconds": report["seconds"],
    }


def evaluate_model(steps, model: Path, prep: Path, labels: Path, leaked: set[str], tta=True):
    """Scores on val and test (and test with flip TTA); the test split is read once per mode."""
    results = {}
    modes = (("val", "none"), ("test", "none")) + ((("test", "flip"),) if tta else ())
    for split, mode in modes:
        out = model.parent / f"eval-{split}-{mode}"
        answers = ("--labels", labels) if split == "test" else ()
        steps.cli("evaluate", "evaluate", "--model", model, "--data", prep, "--split", split,
                  "--tta", mode, "--out", out, *answers)  # fmt: skip
        report = json.loads((out / "report.json").read_text())
        name = split + ("" if mode == "none" else f"+tta-{mode}")
        results[name] = _scores(report, leaked if split == "test" else set())
    return results


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "history.json").read_text())
    return {k: summary[k] for k in ("best_val_accuracy", "best_epoch", "epochs_run", "seconds")}


def run(data: Path, work: Path, cache: Path | None, size: int = DEFAULT_IMAGE_SIZE) -> dict:
    from kitchenware.training.weights import fetch

    begun = time.perf_counter()
    stage1 = {**STAGE1, "size": size}
    labels = data / "test_labels.csv"
    if not labels.is_file():
        raise SystemExit(f"{labels} is missing: the test split cannot be scored without answers")
    for name in OWNED:
        shutil.rmtree(work / name, ignore_errors=True)
    weights = fetch(cache) if cache else fetch()
    steps = Steps({str(data): "DATA", str(weights): "WEIGHTS", str(work): "WORK"})
    prep, runs, features = work / "prep", work / "runs", work / "features"
    steps.cli("prep", "prep", "--data", data, "--out", prep, "--no-progress")
    prep_report = json.loads((prep / "report.json").read_text())
    leaked = {leak["test_id"] for leak in prep_report["leaks"]}
    cached = ["--weights", weights, "--cached-features", "--no-augment",
              "--feature-cache", features, "--verbose", "0"]  # fmt: skip

    tune_flags = [a for a in cached if a != "--no-augment"]  # tune's --augment is a grid axis
    steps.cli("tune (val only)", "tune", "--data", prep, "--out", work / "tune",
              *_flags(GRID), "--augment", "off", *tune_flags, *_flags(stage1))  # fmt: skip
    best = json.loads((work / "tune" / "best.json").read_text())["result"]
    chosen = {key: best[key] for key in ("lr", "inner", "dropout")}
    from kitchenware.training.tune import rank

    trials = [
        {**row, "model": str(Path(row["model"]).relative_to(work))}
        for row in rank(_tune_rows(work / "tune"))
    ]

    recipe = runs / "recipe"
    steps.cli("recipe train", "train", "--data", prep, "--out", recipe, *cached,
              *_flags({**stage1, **chosen, **FINE_TUNE}))  # fmt: skip
    unweighted = runs / "stage1-no-class-weights"
    steps.cli("stage-1 variants", "train", "--data", prep, "--out", unweighted, *cached,
              *_flags({**stage1, **chosen, "class-weights": "none"}))  # fmt: skip
    augmented = runs / "stage1-augmented"
    steps.cli("stage-1 variants", "train", "--data", prep, "--out", augmented,
              "--weights", weights, "--augment", "--verbose", "0",
              *_flags({**stage1, **chosen, "epochs": AUGMENTED_EPOCHS}))  # fmt: skip
    scratch = runs / "scratch"
    steps.cli("scratch train", "train", "--data", prep, "--out", scratch, "--preset", "quick",
              "--verbose", "0")  # fmt: skip

    bench = ["-m", "devtools.bench_train", "frozen", "--prep", prep, "--weights", weights,
             "--size", size, "--epochs", stage1["epochs"]]  # fmt: skip
    bench_command = steps.shown(["python", *bench])
    steps.run("bench_train frozen", bench_command,
              [sys.executable, *bench, "--json", work / "frozen.json"])  # fmt: skip
    timing = json.loads((work / "frozen.json").read_text())

    winner = Path(best["model"])
    models = {
        "recipe": evaluate_model(steps, recipe / "best.keras", prep, labels, leaked),
        "scratch (quick preset)": evaluate_model(
            steps, scratch / "best.keras", prep, labels, leaked
        ),
    }
    variants = {
        "stage 1, class weights balanced (tune winner)": winner.parent,
        "stage 1, no class weights": unweighted,
        f"stage 1, augmented, {AUGMENTED_EPOCHS} epochs": augmented,
    }
    variant_scores = {
        name: {
            "train": _summary(folder),
            "scores": evaluate_model(steps, folder / "best.keras", prep, labels, leaked, tta=False),
        }
        for name, folder in variants.items()
    }
    steps.timings["total"] = round(time.perf_counter() - begun, 1)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} x {cpu_model()}, {platform.machine()}, no GPU",
        "data": str(data.name),
        "split_counts": prep_report["counts"],
        "leaked_test_images": len(leaked),
        "stage1": stage1,
        "fine_tune": FINE_TUNE,
        "grid": GRID,
        "chosen": chosen,
        "trials": trials,
        "recipe_train": _summary(recipe),
        "stage1_variants": variant_scores,
        "frozen_timing": {**timing, "command": bench_command},
        "timings": steps.timings,
        "commands": steps.commands,
        "models": models,
    }


def _tune_rows(out: Path) -> list[dict]:
    import csv

    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    numbers = {"lr": float, "inner": int, "dropout": float, "best_val_accuracy": float,
               "best_val_loss": float, "best_epoch": int, "epochs_run": int, "seconds": float}  # fmt: skip
    return [{k: numbers.get(k, str)(v) for k, v in row.items()} for row in rows]


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def _accuracy_rows(models: dict) -> list[list]:
    rows = []
    for name, results in models.items():
        for split, s in results.items():
            worst = min(s["recall"], key=s["recall"].get)
            clean = (
                ""
                if split == "val"
                else f"{s['accuracy_without_leaks']:.3f} ({s['images_without_leaks']})"
            )
            rows.append([name, f"{split} ({s['images']})", f"{s['accuracy']:.3f}", clean,
                         f"{s['recall'][worst]:.2f} ({worst})"])  # fmt: skip
    return rows


def _per_class_rows(models: dict) -> tuple[list[str], list[list]]:
    """One row per model and test mode, one 'precision / recall / F1' cell per class."""
    classes = list(next(iter(models.values()))["test"]["per_class"])
    rows = []
    for name, results in models.items():
        for split, s in results.items():
            if split.startswith("test"):
                cells = [f"{m['precision']:.2f} / {m['recall']:.2f} / {m['f1']:.2f}"
                         for m in s["per_class"].values()]  # fmt: skip
                rows.append([name, split, *cells])
    support = next(iter(models.values()))["test"]["per_class"]
    rows.append(["(test images per class)", "", *(support[c]["support"] for c in classes)])
    return ["model", "split", *classes], rows


def _confusion_rows(scores: dict) -> tuple[list[str], list[list]]:
    classes = list(scores["per_class"])
    header = ["true \\ predicted", *classes]
    return header, [[c, *row] for c, row in zip(classes, scores["confusion_matrix"], strict=True)]


def _variant_rows(variants: dict) -> list[list]:
    rows = []
    for name, v in variants.items():
        t, val, test = v["train"], v["scores"]["val"], v["scores"]["test"]
        glass = test["per_class"].get("glass", {})
        rows.append([name, t["epochs_run"], t["seconds"], round(t["seconds"] / t["epochs_run"], 1),
                     f"{val['accuracy']:.3f}", f"{test['accuracy']:.3f}",
                     f"{glass.get('precision', 0):.2f} / {glass.get('recall', 0):.2f}",
                     f"{min(test['recall'].values()):.2f}"])  # fmt: skip
    return rows


def _timing_rows(t: dict) -> list[list]:
    return [
        [f"backbone features of {t['train_images']} train + {t['val_images']} val images, once "
         "(decode + forward pass)", t["feature_s"], f"**{t['forward_images_per_s']} images/s**"],
        ["one epoch of the head on cached features", t["cached_epoch_s"], ""],
        ["epoch 1 through the frozen backbone (decode + trace + forward)", t["through_epoch1_s"], ""],
        ["later epoch through the frozen backbone", t["through_epoch_s"],
         f"**{t['epoch_ratio']}x** a cached epoch"],
        [f"stage 1 of {t['planned_epochs']} epochs on cached features (features + epochs)",
         t["stage1_cached_s"], ""],
        [f"stage 1 of {t['planned_epochs']} epochs through the frozen backbone",
         t["stage1_through_s"], f"**{t['stage1_ratio']}x** the cached stage 1, "
         f"{round(t['stage1_through_s'] - t['stage1_cached_s'])} s saved"],
    ]  # fmt: skip


def _weights_note(train_counts: dict[str, int]) -> str:
    """'10 of 350 train photos; weights glass 5.83, ...' as --class-weights balanced sets them."""
    total = sum(train_counts.values())
    weights = ", ".join(
        f"{name} {total / (len(train_counts) * n):.2f}" for name, n in train_counts.items() if n
    )
    return f"{train_counts.get('glass', 0)} of {total} train photos; weights {weights}"


def markdown(result: dict) -> str:
    r = result
    chosen = ", ".join(f"`--{k} {v}`" for k, v in r["chosen"].items())
    timing = r["frozen_timing"]
    lines = [
        "# Model quality",
        "",
        "Written by `make quality` (`python -m devtools.quality`) on "
        f"{r['date']}, {r['machine']}, data `{r['data']}` "
        f"(split {r['split_counts']}; {r['leaked_test_images']} test images are "
        "near or exact copies of train images: prep reports them and keeps them, so the "
        "table also scores the test split without them). Every figure below comes from that "
        f"one run, which took **{r['timings']['total']} s** in all. Model selection used the "
        "val split only (tuning, early stopping, checkpoints); each test figure is one "
        "evaluation of a model that was fixed before the test split was read. The splits are "
        "small (val has 3 glasses, test 3): one image moves a class's recall by 0.33.",
        "",
        "## Tuning (stage 1, ranked on val)",
        "",
        f"`kitchenware tune`: {' x '.join(v.replace(',', '/') for v in r['grid'].values())} "
        f"(lr x inner x dropout) on cached frozen-ImageNet features, no augmentation, "
        + ", ".join(f"`--{k} {v}`" for k, v in r["stage1"].items())
        + f". Ranked by best val accuracy, ties by that epoch's val loss. Winner: {chosen}.",
        "",
        *_table(
            ["rank", "lr", "inner", "dropout", "best val acc", "its val loss", "epoch", "seconds"],
            [
                [
                    i,
                    f"{t['lr']:g}",
                    t["inner"],
                    f"{t['dropout']:g}",
                    f"{t['best_val_accuracy']:.3f}",
                    f"{t['best_val_loss']:.4f}",
                    t["best_epoch"],
                    t["seconds"],
                ]
                for i, t in enumerate(r["trials"], 1)
            ],
        ),  # fmt: skip
        "",
        "## The recipe and the baseline",
        "",
        "Recipe: frozen ImageNet Xception (`kitchenware weights fetch`), the tune winner's head "
        f"({chosen}) trained on cached backbone features (so `--no-augment`), balanced class "
        "weights, then fine-tuning "
        + ", ".join(f"`--{k} {v}`" for k, v in r["fine_tune"].items())
        + f" (train {r['recipe_train']['seconds']} s, best val epoch "
        f"{r['recipe_train']['best_epoch']} of {r['recipe_train']['epochs_run']}). Baseline: "
        "Xception from scratch, the `quick` preset (96 px, no augmentation).",
        "",
        *_table(
            ["model", "split", "accuracy", "without leaks", "lowest recall (class)"],
            _accuracy_rows(r["models"]),
        ),  # fmt: skip
        "",
        "Per class on the test split, precision / recall / F1:",
        "",
        *_table(*_per_class_rows(r["models"])),
        "",
        "The recipe's confusion matrix on the test split (no TTA):",
        "",
        *_table(*_confusion_rows(r["models"]["recipe"]["test"])),
        "",
        "## Imbalance and augmentation (stage 1 of the tune winner)",
        "",
        f"Glass is rare ({_weights_note(r['split_counts']['train'])}), so the recipe weighs "
        "each class's loss by N / (classes x count) (`--class-weights balanced`). The rows "
        "below are stage 1 only (no fine-tuning), the same head and seed, each checkpoint "
        "chosen on val. The augmented row is the seed's augmentation (random flip, rotation, "
        "zoom, shift, contrast), which needs the backbone every epoch instead of cached "
        f"features, so it ran **{AUGMENTED_EPOCHS} epochs** instead of up to "
        f"{r['stage1']['epochs']} to fit the time.",
        "",
        *_table(
            [
                "stage 1",
                "epochs run",
                "fit s",
                "fit s / epoch",
                "val acc",
                "test acc",
                "glass test precision / recall",
                "lowest test recall",
            ],
            _variant_rows(r["stage1_variants"]),
        ),  # fmt: skip
        "",
        "## Where the time goes",
        "",
        f"Stage 1 with the frozen backbone at {timing['size']} px, batch {timing['batch_size']}, "
        "no augmentation, both ways side by side in one process "
        f"(`{timing['command']}`, run by `make quality`):",
        "",
        *_table(["what", "seconds", ""], _timing_rows(timing)),
        "",
        "Wall time of each step of this run (seconds):",
        "",
        *_table(list(r["timings"]), [list(r["timings"].values())]),
        "",
        "## Commands",
        "",
        "As run, in order (DATA = the kitchenware-mini folder, WORK = the `--work` folder, "
        "`runs/quality` by default, WEIGHTS = the path `kitchenware weights fetch` prints):",
        "",
        "```bash",
        "kitchenware weights fetch",
        *r["commands"],
        "```",
        "",
        "## Figures",
        "",
        "The recipe's training curves and its test confusion matrix (no TTA). The "
        "misclassified photos are in the work folder (`WORK/runs/recipe/eval-test-none/"
        "misclassified.png`), not here: the photos stay out of the repository.",
        "",
        "![training curves](images/quality/history.png)",
        "![confusion matrix](images/quality/confusion_matrix.png)",
    ]
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
    parser.add_argument(
        "--size", type=int, default=DEFAULT_IMAGE_SIZE, help="input size (smaller: a quick check)"
    )
    args = parser.parse_args(argv)
    result = run(args.data, args.work, args.cache, args.size)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    args.report.write_text(markdown(result))
    copy_figures(args.work, args.report)
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
