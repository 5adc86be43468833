"""Evaluate a trained model on a clean (never augmented) prep split.

Writes report.json (accuracy, per-class precision/recall/F1/support, the
confusion matrix and every misclassified file), confusion_matrix.png and
misclassified.png (a grid of wrong predictions with true and predicted labels).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES
from kitchenware.training.data import IMAGE_SUFFIXES, Split, list_split, make_dataset
from kitchenware.training.predict import TTA_MODES

MAX_GRID = 36


@dataclass(kw_only=True)  # keeps the options in --help order
class EvaluateConfig:
    """`kitchenware evaluate` options; evaluate()'s keyword defaults are these."""

    model: str = option("runs/latest/best.keras", help="trained .keras file")
    data: str = option(help="output folder of `kitchenware prep`")
    split: str = option("val", help="split to evaluate: val, train, or test with --labels")
    labels: str | None = option(None, help="CSV of Id,label answers for --split test")
    tta: str = option(
        "none",
        help="test-time augmentation: flip = mean of image and mirror (as export --tta)",
        choices=TTA_MODES,
    )
    out: str | None = option(None, help="report folder (default: next to the model)")
    batch_size: int = option(32, help="images per prediction step")


def confusion_matrix(y_true, y_pred, num_classes: int = len(CLASSES)) -> np.ndarray:
    """matrix[true, predicted] = count."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray, classes=CLASSES) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class; 0.0 where a ratio is undefined."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, name in enumerate(classes)
    }


def predict_split(model, split, size: int, batch_size: int = 32, tta: str = "none") -> np.ndarray:
    """Class probabilities for every image of `split`, in `split.paths` order, inference mode."""
    import tensorflow as tf

    from kitchenware.training.predict import probabilities

    ds = make_dataset(split, size, batch_size, shuffle=False, cache=False)
    outputs = [probabilities(model, images, tta) for images, _ in ds]
    return tf.concat(outputs, axis=0).numpy() if outputs else np.zeros((0, len(CLASSES)))


def labelled_test_split(prep_dir, labels_csv) -> Split:
    """PREP/test/<Id>.<ext> with labels from a CSV of Id,label (e.g. Kaggle-style answers).

    Every test image needs a label and every label an image: a mismatch is an
    error naming the Ids, so no image is silently left out of the score.
    """
    root = Path(prep_dir) / "test"
    if not root.is_dir():
        raise KitchenwareError(
            f"{root} is missing: is {prep_dir} the output of `kitchenware prep`?"
        )
    images = {p.stem: p for p in sorted(root.iterdir()) if not p.name.startswith(".")}
    strays = [p.name for p in images.values() if p.suffix.lower() not in IMAGE_SUFFIXES]
    if strays:
        raise KitchenwareError(f"{root} holds non-image entries: {', '.join(strays[:5])}")
    answers = read_labels_csv(labels_csv)
    unlabelled = sorted(set(images) - set(answers))
    missing = sorted(set(answers) - set(images))
    if unlabelled or missing:
        parts = []
        if unlabelled:
            parts.append(
                f"{len(unlabelled)} test images have no label (e.g. {', '.join(unlabelled[:5])})"
            )
        if missing:
            parts.append(
                f"{len(missing)} labelled Ids have no image in {root} (e.g. {', '.join(missing[:5])})"
            )
        raise KitchenwareError(f"{labels_csv}: " + "; ".join(parts))
    ids = sorted(images)
    return Split(
        "test",
        tuple(str(images[i]) for i in ids),
        tuple(CLASSES.index(answers[i]) for i in ids),
    )


def read_labels_csv(path) -> dict[str, str]:
    """Id -> label from a CSV with Id and label columns; Ids stay strings ('0560')."""
    from kitchenware.dataprep.kaggle_layout import read_table

    path = Path(path)
    rows, _ = read_table(path, ("Id", "label"))
    answers: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        image_id, label = row["Id"], row["label"]
        if not image_id:
            raise KitchenwareError(f"{path} line {line}: empty Id")
        if label not in CLASSES:
            raise KitchenwareError(
                f"{path} line {line}: unknown label {label!r} (classes: {', '.join(CLASSES)})"
            )
        if answers.get(image_id, label) != label:
            raise KitchenwareError(f"{path} line {line}: Id {image_id} has two labels")
        answers[image_id] = label
    if not answers:
        raise KitchenwareError(f"{path} holds no labels")
    return answers


def plot_confusion(matrix: np.ndarray, path: Path, classes=CLASSES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > threshold else "black",
        )
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_misclassified(items: list[dict], path: Path, size: int) -> None:
    """Grid of up to MAX_GRID wrong predictions, titled 'true -> predicted'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kitchenware.core.images import load_image

    shown = items[:MAX_GRID]
    cols = max(1, min(6, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, shown, strict=False):
        ax.imshow(load_image(item["path"], size=size))
        ax.set_title(f"{item['true']} -> {item['predicted']}\n{item['confidence']:.2f}", fontsize=8)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(
    model_path,
    data,
    split: str = EvaluateConfig.split,
    out=None,
    batch_size: int = EvaluateConfig.batch_size,
    tta: str = EvaluateConfig.tta,
    labels=None,
) -> dict:
    """Evaluate and write the report files; returns the report dict.

    The test split is scored only with `labels` (a CSV of Id,label answers).
    """
    from kitchenware.training.predict import check_tta

    check_tta(tta)
    if split == "test":
        if labels is None:
            raise KitchenwareError(
                "the test split has no labels: evaluate --split val or train, or give "
                "--labels CSV with its answers (`kitchenware submit` predicts the test images)"
            )
        split_files = labelled_test_split(data, labels)
    elif labels is not None:
        raise KitchenwareError("--labels is for --split test; train and val carry their labels")
    else:
        split_files = list_split(data, split, require_all_classes=False)
    from kitchenware.training.model import image_size_of, load_keras_model

    model = load_keras_model(model_path)
    size = image_size_of(model)
    started = time.perf_counter()
    probabilities = predict_split(model, split_files, size, batch_size, tta)
    seconds = time.perf_counter() - started
    y_true = np.asarray(split_files.labels)
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred)
    wrong = [
        {
            "path": split_files.paths[i],
            "true": CLASSES[y_true[i]],
            "predicted": CLASSES[y_pred[i]],
            "confidence": float(probabilities[i, y_pred[i]]),
        }
        for i in np.flatnonzero(y_true != y_pred)
    ]
    report = {
        "model": str(model_path),
        "data": str(data),
        "split": split,
        "tta": tta,
        "images": int(len(y_true)),
        "seconds": round(seconds, 2),
        "accuracy": float((y_true == y_pred).mean()),
        "classes": list(CLASSES),
        "per_class": per_class_metrics(matrix),
        "confusion_matrix": matrix.tolist(),
        "misclassified": wrong,
    }
    suffix = "" if tta == "none" else f"-tta-{tta}"
    out_dir = Path(out) if out else Path(model_path).parent / f"eval-{split}{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(matrix, out_dir / "confusion_matrix.png")
    plot_misclassified(
        sorted(wrong, key=lambda w: -w["confidence"]), out_dir / "misclassified.png", size
    )
    report["out"] = str(out_dir)
    return report


def format_report(report: dict) -> str:
    lines = [
        f"{report['split']}: {report['images']} images, accuracy {report['accuracy']:.4f}"
        + (f" (tta {report['tta']})" if report.get("tta", "none") != "none" else ""),
        f"{'class':<8} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}",
    ]
    for name, m in report["per_class"].items():
        lines.append(
            f"{name:<8} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>8}"
        )
    lines.append(f"written to {report['out']}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    add_fields(parser, EvaluateConfig)


def run(args) -> int:
    c = from_args(EvaluateConfig, args)
    if c.batch_size < 1:
        raise KitchenwareError("--batch-size must be at least 1")
    report = evaluate(c.model, c.data, c.split, c.out, c.batch_size, c.tta, c.labels)
    print(format_report(report))
    return 0
