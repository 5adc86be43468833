"""Training, tuning, evaluation and submission with real TensorFlow at tiny sizes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kitchenware.cli import main
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES
from kitchenware.training.data import list_split, load_pixels, make_dataset
from kitchenware.training.evaluate import confusion_matrix, per_class_metrics
from kitchenware.training.model import load_keras_model
from kitchenware.training.presets import PRESETS

SIZE = PRESETS["tiny"]["size"]

# One clearly different colour per class: a from-scratch CNN learns these in a
# few epochs, so "learning happens" is checked in seconds, not minutes.
DISC_COLOURS = [
    (200, 40, 40),
    (40, 160, 40),
    (40, 40, 200),
    (200, 200, 40),
    (160, 40, 160),
    (40, 180, 180),
]


def draw_disc_prep(root: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """A prep-layout tree (train/val/<class>/<Id>.jpg) of noisy discs coloured by class."""
    rng = np.random.default_rng(seed)
    number = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                background = rng.integers(100, 180, 3)
                noise = rng.normal(0, 20, (96, 96, 3))
                image = Image.fromarray((noise + background).clip(0, 255).astype(np.uint8))
                x, y = rng.integers(24, 72, 2)
                r = int(rng.integers(16, 32))
                colour = np.clip(np.array(DISC_COLOURS[index]) + rng.integers(-30, 30, 3), 0, 255)
                ImageDraw.Draw(image).ellipse(
                    [x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in colour)
                )
                image.save(folder / f"{number:04d}.jpg", quality=90)
                number += 1
    return root


@pytest.fixture(scope="module")
def disc_prep(tmp_path_factory) -> Path:
    return draw_disc_prep(tmp_path_factory.mktemp("discs") / "prep", 20, 8)


@pytest.fixture(scope="module")
def disc_run(disc_prep, tmp_path_factory):
    """Xception from scratch (the demo's preset), 5 epochs on the disc set, through the CLI."""
    runs = tmp_path_factory.mktemp("disc-runs")
    args = [
        "train", "--data", str(disc_prep), "--out", str(runs / "discs"), "--preset", "quick",
        "--size", str(SIZE), "--epochs", "5", "--batch-size", "8", "--patience", "10",
    ]  # fmt: skip
    assert main(args) == 0
    return runs / "discs"


# --- input pipeline -----------------------------------------------------------------


def test_pipeline_pixels_are_exactly_load_image(sample_prep):
    split = list_split(sample_prep, "val", require_all_classes=False)
    batches = list(make_dataset(split, SIZE, batch_size=5, shuffle=False))
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert images.dtype == np.uint8 and images.shape == (len(split), SIZE, SIZE, 3)
    np.testing.assert_array_equal(images, load_pixels(split, SIZE))
    np.testing.assert_array_equal(labels, split.labels)
    assert [CLASSES[i] for i in labels] == [Path(p).parent.name for p in split.paths]


def test_training_pipeline_shuffles_reproducibly_and_keeps_every_image(sample_prep):
    split = list_split(sample_prep, "train")

    def first_epoch_labels(seed):
        ds = make_dataset(split, SIZE, batch_size=64, shuffle=True, seed=seed)
        return np.concatenate([labels.numpy() for _, labels in ds])

    a, b = first_epoch_labels(1), first_epoch_labels(1)
    np.testing.assert_array_equal(a, b)
    assert sorted(a) == sorted(split.labels)
    assert not np.array_equal(a, np.asarray(split.labels))


def test_list_split_rejects_bad_prep_folders(tmp_path, disc_prep):
    with pytest.raises(KitchenwareError, match="not found"):
        list_split(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KitchenwareError, match="missing"):
        list_split(tmp_path / "empty", "train")
    (tmp_path / "empty" / "train").mkdir()
    with pytest.raises(KitchenwareError, match="no images"):
        list_split(tmp_path / "empty", "train")
    # prep keeps a file's own suffix: every format load_image reads is an image here
    (tmp_path / "formats" / "train" / "cup").mkdir(parents=True)
    for suffix in ("jpg", "png", "webp", "bmp"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / "formats" / "train" / "cup" / f"1.{suffix}")
    assert len(list_split(tmp_path / "formats", "train", require_all_classes=False)) == 4
    stray = disc_prep / "train" / "bowl"
    stray.mkdir()
    try:
        with pytest.raises(KitchenwareError, match="not class folders: bowl"):
            list_split(disc_prep, "train")
    finally:
        stray.rmdir()


# --- training -----------------------------------------------------------------------


@pytest.mark.slow
def test_learning_happens_on_synthetic_data(disc_run):
    summary = json.loads((disc_run / "history.json").read_text())
    # chance is 1/6; the clean validation set is scored by the checkpointed model too
    assert summary["best_val_accuracy"] >= 0.5, summary


@pytest.mark.slow
def test_run_folder_has_every_artifact(disc_run):
    config = json.loads((disc_run / "config.json").read_text())
    assert config["size"] == SIZE and config["classes"] == list(CLASSES)
    assert config["weights"] == "none" and config["augment"] is False and config["epochs"] == 5
    for key in (
        "lr",
        "inner",
        "dropout",
        "batch_size",
        "seed",
        "fine_tune_layers",
        "mixed_precision",
    ):
        assert key in config
    history = json.loads((disc_run / "history.json").read_text())
    assert history["epochs_run"] == 5 and history["history"]["epoch"] == [1, 2, 3, 4, 5]
    assert len(history["history"]["val_accuracy"]) == 5
    with (disc_run / "log.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 5
    assert (disc_run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = disc_run.parent / "latest"
    assert (
        latest.is_symlink()
        and (latest / "best.keras").resolve() == (disc_run / "best.keras").resolve()
    )


@pytest.mark.slow
def test_best_checkpoint_is_the_best_epoch(disc_run, disc_prep):

    history = json.loads((disc_run / "history.json").read_text())
    model = load_keras_model(disc_run / "best.keras")
    val = list_split(disc_prep, "val")
    predicted = np.asarray(model(load_pixels(val, SIZE), training=False)).argmax(axis=1)
    accuracy = float((predicted == np.asarray(val.labels)).mean())
    assert accuracy == pytest.approx(history["best_val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_validation_is_never_augmented(tiny_run, sample_prep):
    """fit's reported val loss equals the loss of the model WITHOUT its augmentation layers
    on pixels straight from load_image; the same model in training mode (augmenting) differs."""
    import keras

    from kitchenware.training.model import inference_model

    model = tiny_run.model
    assert "augmentation" in [layer.name for layer in model.layers]
    val = list_split(sample_prep, "val", require_all_classes=False)
    pixels, labels = load_pixels(val, SIZE), np.asarray(val.labels)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    clean_logits = inference_model(model)(pixels, training=False)
    assert float(loss(labels, clean_logits)) == pytest.approx(
        tiny_run.history["val_loss"][-1], rel=1e-3
    )
    augmented = np.asarray(model.get_layer("augmentation")(pixels.astype("float32"), training=True))
    assert np.abs(augmented - pixels).mean() > 1.0  # augmentation is real when training


@pytest.mark.slow
def test_fine_tune_unfreezes_only_the_top_layers(sample_prep, tmp_path):
    """Stage 1 keeps a local weights file's backbone frozen; stage 2 trains only its top layers."""
    import keras

    from kitchenware.training.model import build_backbone
    from kitchenware.training.train import preset_config, train

    weights = tmp_path / "mobilenet_v2_notop.weights.h5"
    build_backbone("mobilenet_v2", SIZE, "none").save_weights(weights)
    reference = build_backbone("mobilenet_v2", SIZE, str(weights))
    config = preset_config(
        "tiny", data=str(sample_prep), out=str(tmp_path / "ft"), weights=str(weights), inner=0,
        epochs=1, fine_tune_layers=6, fine_tune_lr=1e-2, fine_tune_epochs=1, verbose=0,
    )  # fmt: skip
    result = train(config)
    assert result.history["stage"] == [1, 2] and result.history["epoch"] == [1, 2]
    base = result.model.get_layer(reference.name)
    top = base.layers[-6:]
    changed = {
        layer.name
        for layer, ref in zip(base.layers, reference.layers, strict=True)
        if any(
            not np.array_equal(w, r)
            for w, r in zip(layer.get_weights(), ref.get_weights(), strict=True)
        )
    }
    trainable_top = {
        layer.name
        for layer in top
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    }
    assert trainable_top and changed == trainable_top
    assert all(
        not layer.trainable
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


# --- bad input, before any heavy work -------------------------------------------------


def _train_cli(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), "--preset", "tiny", *extra])


def test_train_refuses_missing_and_empty_prep(tmp_path, capsys):
    assert _train_cli(tmp_path / "missing", tmp_path / "run") == 2
    assert "prep folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _train_cli(tmp_path / "empty", tmp_path / "run") == 2
    assert "train is missing" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_class_without_images(tmp_path, capsys):
    prep = draw_disc_prep(tmp_path / "prep", 1, 1)
    for image in (prep / "train" / "glass").iterdir():
        image.unlink()
    assert _train_cli(prep, tmp_path / "run") == 2
    assert "no images for class(es) glass" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_refuses_size_below_backbone_minimum(disc_prep, tmp_path, capsys):
    assert (
        main(["train", "--data", str(disc_prep), "--out", str(tmp_path / "r"), "--size", "70"]) == 2
    )
    assert "below xception's minimum input size of 71" in capsys.readouterr().err


def test_train_refuses_missing_weights_file(disc_prep, tmp_path, capsys):
    assert _train_cli(disc_prep, tmp_path / "r", "--weights", str(tmp_path / "nope.h5")) == 2
    assert "expected 'imagenet', 'none' or an existing weights file" in capsys.readouterr().err


# Keras warns once per nested container while it tries the mismatched file.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_train_refuses_weights_of_another_backbone(disc_prep, tmp_path, capsys):
    from kitchenware.training.model import build_backbone

    weights = tmp_path / "mobilenet.weights.h5"
    build_backbone("mobilenet_v2", 32, "none").save_weights(weights)
    args = ["--backbone", "xception", "--weights", str(weights)]
    assert _train_cli(disc_prep, tmp_path / "r", *args) == 2
    err = capsys.readouterr().err
    assert "does not fit the xception backbone" in err
    assert not (tmp_path / "r" / "best.keras").exists()


def test_mixed_precision_needs_a_gpu(disc_prep, tmp_path, capsys):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    assert _train_cli(disc_prep, tmp_path / "r", "--mixed-precision") == 2
    assert "--mixed-precision needs a GPU" in capsys.readouterr().err


# --- tuning ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tune_grid_writes_results_and_resumes(sample_prep, tmp_path, capsys):
    out = tmp_path / "tune"
    args = [
        "tune", "--data", str(sample_prep), "--out", str(out), "--preset", "tiny", "--lr",
        "0.001,0.01", "--inner", "0,8", "--dropout", "0", "--augment", "off", "--epochs", "1",
        "--batch-size", "32", "--verbose", "0",
    ]  # fmt: skip
    # a trial interrupted earlier (folder without history.json) is trained again from scratch
    interrupted = out / "trials" / "lr0.01_inner8_dropout0_augoff"
    interrupted.mkdir(parents=True)
    (interrupted / "partial.tmp").write_text("left by a killed run")
    assert main(args) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(float(r["lr"]), int(r["inner"])) for r in rows} == {
        (0.001, 0),
        (0.001, 8),
        (0.01, 0),
        (0.01, 8),
    }
    accuracies = [float(r["best_val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    table = (out / "results.md").read_text().splitlines()
    assert sum(line.startswith("| ") and line[2].isdigit() for line in table) == 4
    best = json.loads((out / "best.json").read_text())
    assert best["result"]["trial"] == rows[0]["trial"] and best["config"]["lr"] == float(
        rows[0]["lr"]
    )
    capsys.readouterr()

    assert not (interrupted / "partial.tmp").exists() and (interrupted / "history.json").is_file()
    for trial in out.glob("trials/*"):
        assert json.loads((trial / "history.json").read_text())["epochs_run"] == 1  # on sample-data

    # rerun: every finished trial is skipped, nothing is retrained
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/best.keras")}
    assert len(stamps) == 4
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/best.keras")} == stamps
    with (out / "results.csv").open() as f:
        assert list(csv.DictReader(f)) == rows

    # rerun with other settings: refused, the old results are not mixed into new ones
    epochs = args.index("--epochs") + 1
    assert main([*args[:epochs], "2", *args[epochs + 1 :]]) == 2
    err = capsys.readouterr().err
    assert "trained with other settings" in err and "epochs 1 -> 2" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/best.keras")} == stamps


def test_tune_checks_every_grid_value_before_training(disc_prep, tmp_path, capsys):
    out = tmp_path / "tune"
    args = [
        "tune", "--data", str(disc_prep), "--out", str(out), "--lr", "0.001", "--inner", "0",
        "--dropout", "0,1.5", "--augment", "off", "--preset", "tiny",
    ]  # fmt: skip
    assert main(args) == 2
    assert "--dropout must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not out.exists()  # the valid first trial did not train either


# --- evaluation -----------------------------------------------------------------------


def test_per_class_metrics_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    matrix = confusion_matrix(y_true, y_pred)
    assert matrix[0].tolist()[:3] == [2, 1, 0] and matrix.sum() == 6
    metrics = per_class_metrics(matrix)
    assert metrics["cup"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert metrics["fork"]["precision"] == 0.5 and metrics["fork"]["recall"] == 0.5
    assert metrics["glass"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }
    assert metrics["spoon"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.slow
def test_evaluate_writes_report_and_figures(disc_run, disc_prep, tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(disc_run / "best.keras"),
                "--data",
                str(disc_prep),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    matrix = np.asarray(report["confusion_matrix"])
    assert matrix.shape == (6, 6) and matrix.sum() == report["images"] == 48
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    history = json.loads((disc_run / "history.json").read_text())
    assert report["accuracy"] == pytest.approx(history["best_val_accuracy"], abs=1e-6)
    assert len(report["misclassified"]) == matrix.sum() - np.trace(matrix)
    assert [m["support"] for m in report["per_class"].values()] == [8] * 6
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_refuses_the_unlabelled_test_split(tmp_path, capsys):
    args = ["evaluate", "--model", str(tmp_path / "m.keras"), "--data", str(tmp_path)]
    assert main([*args, "--split", "test"]) == 2
    assert "the test split has no labels" in capsys.readouterr().err


def _labelled_test_prep(root: Path, ids=("0007", "0560")) -> Path:
    (root / "test").mkdir(parents=True)
    for image_id in ids:
        Image.new("RGB", (8, 8), "red").save(root / "test" / f"{image_id}.jpg")
    return root


def test_labelled_test_split_reads_answers_with_string_ids(tmp_path):
    from kitchenware.training.evaluate import labelled_test_split

    prep = _labelled_test_prep(tmp_path / "prep")
    answers = tmp_path / "answers.csv"
    answers.write_text("Id,label\n0560,plate\n0007,glass\n")
    split = labelled_test_split(prep, answers)
    assert [Path(p).name for p in split.paths] == ["0007.jpg", "0560.jpg"]
    assert [CLASSES[i] for i in split.labels] == ["glass", "plate"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Id,label\n0007,glass\n", "1 test images have no label \\(e.g. 0560\\)"),
        ("Id,label\n0007,glass\n0560,cup\n0999,cup\n", "1 labelled Ids have no image"),
        ("Id,label\n0007,bowl\n0560,cup\n", "line 2: unknown label 'bowl'"),
        ("Id,label\n0007,cup\n0007,fork\n0560,cup\n", "line 3: Id 0007 has two labels"),
        ("Id,class\n0007,cup\n", "lacks column\\(s\\) label"),
        ("Id,label\n,cup\n", "line 2: empty Id"),
    ],
)
def test_labelled_test_split_refuses_answers_that_do_not_match(tmp_path, text, message):
    from kitchenware.training.evaluate import labelled_test_split

    prep = _labelled_test_prep(tmp_path / "prep")
    answers = tmp_path / "answers.csv"
    answers.write_text(text)
    with pytest.raises(KitchenwareError, match=message):
        labelled_test_split(prep, answers)


def test_evaluate_labels_only_for_the_test_split(tmp_path, capsys):
    args = ["evaluate", "--model", str(tmp_path / "m.keras"), "--data", str(tmp_path)]
    assert main([*args, "--split", "val", "--labels", str(tmp_path / "a.csv")]) == 2
    assert "--labels is for --split test" in capsys.readouterr().err


# --- submission -----------------------------------------------------------------------


def _read_csv(path):
    with Path(path).open(newline="") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_submit_follows_sample_submission(disc_run, sample_kaggle, tmp_path):
    out = tmp_path / "submission.csv"
    assert (
        main(
            [
                "submit",
                "--model",
                str(disc_run / "best.keras"),
                "--data",
                str(sample_kaggle),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows, sample = _read_csv(out), _read_csv(sample_kaggle / "sample_submission.csv")
    assert rows[0] == sample[0]
    assert [r[0] for r in rows[1:]] == [r[0] for r in sample[1:]]
    assert all(r[1] in CLASSES for r in rows[1:])


@pytest.mark.slow
def test_submit_on_real_photos_keeps_leading_zeros(tiny_run, mini_data, tmp_path):
    out = tmp_path / "submission.csv"
    assert (
        main(
            [
                "submit",
                "--model",
                str(tiny_run.best_model),
                "--data",
                str(mini_data),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = _read_csv(out)
    test_ids = [r[0] for r in _read_csv(mini_data / "test.csv")[1:]]
    assert rows[0] == ["Id", "label"] and [r[0] for r in rows[1:]] == test_ids
    assert any(i.startswith("0") for i in test_ids) and all(
        len(i) == len(test_ids[0]) for i in test_ids
    )
    assert all(r[1] in CLASSES for r in rows[1:])


@pytest.mark.slow
def test_submit_fails_loudly_on_missing_or_unreadable_images(
    disc_run, sample_kaggle, tmp_path, capsys
):
    kaggle = tmp_path / "kaggle"
    (kaggle / "images").mkdir(parents=True)
    ids = [r[0] for r in _read_csv(sample_kaggle / "test.csv")[1:]]
    for i in ids:
        os.symlink(sample_kaggle / "images" / f"{i}.jpg", kaggle / "images" / f"{i}.jpg")
    (kaggle / "test.csv").write_text("Id\n" + "\n".join(ids) + "\n")
    out = tmp_path / "submission.csv"
    args = [
        "submit",
        "--model",
        str(disc_run / "best.keras"),
        "--data",
        str(kaggle),
        "--out",
        str(out),
    ]

    (kaggle / "images" / f"{ids[1]}.jpg").unlink()
    assert main(args) == 2
    assert f"{ids[1]}: " in capsys.readouterr().err and not out.exists()

    (kaggle / "images" / f"{ids[1]}.jpg").write_bytes(b"not a jpeg")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and ids[1] in err and not out.exists()
