"""The quality report's arithmetic and tables, from evaluate's reports (no training)."""

from __future__ import annotations

from devtools.quality import Steps, _scores, _weights_note, markdown
from kitchenware.core.labels import CLASSES


def report(images: int, wrong: list[str], recall: float = 1.0) -> dict:
    per_class = {
        c: {"precision": 0.75 if c == "glass" else 1.0, "recall": recall if c == "glass" else 1.0,
            "f1": 0.6 if c == "glass" else 1.0, "support": 2}
        for c in CLASSES
    }  # fmt: skip
    matrix = [[2 if i == j else 0 for j in range(len(CLASSES))] for i in range(len(CLASSES))]
    matrix[CLASSES.index("glass")][CLASSES.index("cup")] = 1
    return {
        "images": images,
        "accuracy": (images - len(wrong)) / images,
        "seconds": 1.0,
        "misclassified": [{"path": f"prep/test/{i}.jpg"} for i in wrong],
        "per_class": per_class,
        "confusion_matrix": matrix,
    }


def test_accuracy_without_leaks_counts_only_the_clean_images():
    scores = _scores(report(10, wrong=["0001", "0002", "0007"]), leaked={"0001", "0005"})
    assert scores["accuracy"] == 0.7
    assert scores["images_without_leaks"] == 8
    assert scores["accuracy_without_leaks"] == 6 / 8  # 0002 and 0007 wrong among 8 clean


def result() -> dict:
    val = _scores(report(4, wrong=[]), set())
    test = _scores(report(10, wrong=["0003"], recall=0.5), {"0003"})
    trial = {"lr": 0.001, "inner": 10, "dropout": 0.2, "best_val_accuracy": 1.0,
             "best_val_loss": 0.0123, "best_epoch": 7, "seconds": 9.5}  # fmt: skip
    timing = {"size": 299, "batch_size": 32, "command": "python -m x", "train_images": 350,
              "val_images": 88, "feature_s": 44.0, "forward_images_per_s": 9.95,
              "cached_epoch_s": 0.5, "through_epoch1_s": 60.0, "through_epoch_s": 40.0,
              "epoch_ratio": 80.0, "planned_epochs": 10, "stage1_cached_s": 49.0,
              "stage1_through_s": 420.0, "stage1_ratio": 8.57}  # fmt: skip
    train = {"best_val_accuracy": 1.0, "best_epoch": 3, "epochs_run": 4, "seconds": 200.0}
    return {
        "date": "2026-12-03", "machine": "2 x cpu", "data": "mini", "leaked_test_images": 1,
        "split_counts": {"train": {c: 10 for c in CLASSES}, "val": 4, "test": 10},
        "stage1": {"size": 299, "epochs": 10}, "fine_tune": {"fine-tune-layers": 20},
        "grid": {"lr": "0.001,0.0001"}, "chosen": {"lr": 0.001},
        "trials": [trial, {**trial, "lr": 0.0001, "best_val_accuracy": 0.9}],
        "recipe_train": train,
        "stage1_variants": {"stage 1, no class weights": {
            "train": train, "scores": {"val": val, "test": test}}},
        "frozen_timing": timing, "timings": {"prep": 3.0, "total": 600.0},
        "commands": ["kitchenware prep --data DATA --out WORK/prep"],
        "models": {"recipe": {"val": val, "test": test}},
    }  # fmt: skip


def test_the_table_names_the_weakest_class_of_every_row():
    text = markdown(result())
    assert "| recipe | test (10) | 0.900 | 1.000 (9) | 0.50 (glass) |" in text
    assert "| recipe | val (4) | 1.000 |  | 1.00 (cup) |" in text


def test_per_class_precision_recall_f1_and_the_confusion_matrix_are_tables():
    text = markdown(result())
    cells = ["1.00 / 1.00 / 1.00"] * len(CLASSES)
    cells[CLASSES.index("glass")] = "0.75 / 0.50 / 0.60"
    assert "| recipe | test | " + " | ".join(cells) + " |" in text
    glass_row = ["0"] * len(CLASSES)
    glass_row[CLASSES.index("glass")], glass_row[CLASSES.index("cup")] = "2", "1"
    assert "| glass | " + " | ".join(glass_row) + " |" in text


def test_tuning_variants_timing_and_total_time_are_reported():
    text = markdown(result())
    assert "| 1 | 0.001 | 10 | 0.2 | 1.000 | 0.0123 | 7 | 9.5 |" in text
    assert "| 2 | 0.0001 | 10 | 0.2 | 0.900 |" in text
    assert (
        "| stage 1, no class weights | 4 | 200.0 | 50.0 | 1.000 | 0.900 | 0.75 / 0.50 | 0.50 |"
        in text
    )
    assert "**9.95 images/s**" in text and "**80.0x** a cached epoch" in text
    assert "**8.57x** the cached stage 1, 371 s saved" in text
    assert "**600.0 s** in all" in text
    assert "kitchenware prep --data DATA --out WORK/prep" in text


def test_balanced_weights_are_spelled_out_from_the_train_counts():
    note = _weights_note({"cup": 30, "glass": 5, "plate": 25})
    assert note == "5 of 60 train photos; weights cup 0.67, glass 4.00, plate 0.80"


def test_commands_show_placeholders_for_machine_paths_longest_first():
    steps = Steps({"/data/mini": "DATA", "/data/mini/x.h5": "WEIGHTS", "runs/q": "WORK"})
    shown = steps.shown(["train", "--data", "runs/q/prep", "--weights", "/data/mini/x.h5",
                         "--labels", "/data/mini/test_labels.csv"])  # fmt: skip
    assert shown == "train --data WORK/prep --weights WEIGHTS --labels DATA/test_labels.csv"
