"""The quality report's arithmetic: leak-free accuracy and the table, from evaluate's reports."""

from __future__ import annotations

from kitchenware.core.labels import CLASSES
from kitchenware.tools.quality import _scores, markdown


def report(images: int, wrong: list[str], recall: float = 1.0) -> dict:
    return {
        "images": images,
        "accuracy": (images - len(wrong)) / images,
        "seconds": 1.0,
        "misclassified": [{"path": f"prep/test/{i}.jpg"} for i in wrong],
        "per_class": {c: {"recall": recall if c == "glass" else 1.0} for c in CLASSES},
    }


def test_accuracy_without_leaks_counts_only_the_clean_images():
    scores = _scores(report(10, wrong=["0001", "0002", "0007"]), leaked={"0001", "0005"})
    assert scores["accuracy"] == 0.7
    assert scores["images_without_leaks"] == 8
    assert scores["accuracy_without_leaks"] == 6 / 8  # 0002 and 0007 wrong among 8 clean


def test_the_table_names_the_weakest_class_of_every_row():
    val = _scores(report(4, wrong=[]), set())
    test = _scores(report(10, wrong=["0003"], recall=0.5), {"0003"})
    result = {
        "date": "2026-12-03", "machine": "2 x cpu", "data": "mini", "leaked_test_images": 1,
        "split_counts": {"train": 1, "val": 4, "test": 10}, "recipe": {"size": 299},
        "timings": {"recipe_train_s": 1, "scratch_train_s": 2},
        "models": {"recipe": {"val": val, "test": test}},
    }  # fmt: skip
    text = markdown(result)
    assert "| recipe | test (10) | 0.900 | 1.000 (9) | 0.50 (glass) |" in text
    assert "| recipe | val (4) | 1.000 |  | 1.00 (cup) |" in text
