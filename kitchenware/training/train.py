"""Train the classifier on `kitchenware prep` output.

Stage 1 trains the head on a frozen pretrained backbone (or the whole network
with --weights none). With --fine-tune-layers N, stage 2 unfreezes the top N
backbone layers (BatchNorm stays frozen, in inference mode) and continues with
--fine-tune-lr. The best epoch by validation accuracy is kept in RUN/best.keras;
RUN also gets config.json, history.json, history.png and log.csv, and the
parent folder gets a `latest` link to RUN (so runs/latest/best.keras works).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.contract import DEFAULT_IMAGE_SIZE
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES
from kitchenware.training.data import list_split, make_dataset
from kitchenware.training.model import (
    BACKBONES,
    backbone_of,
    check_size,
    check_weights,
    get_backbone,
)
from kitchenware.training.presets import PRESETS, add_preset_argument, preset_overrides

BEST_MODEL = "best.keras"
CLASS_WEIGHTINGS = ("none", "balanced")
LATEST_LINK = "latest"


@dataclass
class TrainConfig:
    """Every training option; saved verbatim as RUN/config.json. Its CLI is generated from it."""

    data: str = option(help="output folder of `kitchenware prep`")
    out: str = option(help="run folder (default: runs/<timestamp>)", cli_default=None)
    backbone: str = option("xception", help="pretrained architecture", choices=sorted(BACKBONES))
    size: int = option(DEFAULT_IMAGE_SIZE, help="square input size in pixels")
    weights: str = option(
        "imagenet",
        help="'imagenet' (downloaded by Keras on first use), 'none' (from scratch) "
        "or a local weights file of the headless backbone",
    )
    lr: float = option(1e-3, help="Adam learning rate")
    inner: int = option(100, help="inner dense size (0 = none)")
    dropout: float = option(0.2, help="dropout rate before the logits")
    augment: bool = option(True, help="random flip/rotate/zoom/shift/contrast", negatable=True)
    epochs: int = option(20, help="stage-1 epochs (upper bound)")
    batch_size: int = option(32, help="images per training step")
    seed: int = option(42, help="seed of weights, shuffling and augmentation")
    patience: int = option(5, help="early stopping on val accuracy")
    fine_tune_layers: int = option(0, help="stage 2: unfreeze the top N backbone layers")
    fine_tune_lr: float = option(1e-5, help="stage-2 learning rate")
    fine_tune_epochs: int = option(10, help="stage-2 epochs (upper bound)")
    mixed_precision: bool = option(False, help="float16 compute (needs a GPU)")
    cache: bool = option(True, help="do not keep decoded images in memory")
    class_weights: str = option(
        "none",
        help="'balanced' weighs each class's loss by N / (classes * count): rare classes "
        "(glass) count as much as common ones",
        choices=CLASS_WEIGHTINGS,
    )
    cached_features: bool = option(
        False,
        help="stage 1 trains the head on backbone features computed once (needs pretrained "
        "--weights and --no-augment)",
    )
    feature_cache: str | None = option(
        None, help="keep those features on disk in DIR and reuse them in later runs", metavar="DIR"
    )
    verbose: int = option(1, help="Keras verbosity", choices=(0, 1, 2))
    classes: list[str] = field(default_factory=lambda: list(CLASSES), metadata={"cli": False})


@dataclass
class TrainResult:
    run_dir: Path
    best_model: Path
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    history: dict
    model: object = None  # the in-memory model after the last epoch


def default_run_dir() -> str:
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


def add_arguments(parser) -> None:
    add_preset_argument(parser)
    add_fields(parser, TrainConfig)


def config_from_args(args) -> TrainConfig:
    """The config from the command line: typed flags, then --preset, then the defaults."""
    config = from_args(TrainConfig, args, base=preset_overrides(args))
    if config.out is None:
        config.out = default_run_dir()
    return config


def preset_config(name: str, **fields) -> TrainConfig:
    """TrainConfig of preset `name` (see kitchenware.training.presets) with `fields` changed."""
    return TrainConfig(**{**PRESETS[name], **fields})


def validate(config: TrainConfig):
    """Every check that needs no TensorFlow, so bad input fails in a second."""
    get_backbone(config.backbone)
    check_size(config.backbone, config.size)
    check_weights(config.weights)
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise KitchenwareError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= config.dropout < 1:
        raise KitchenwareError(f"--dropout must be in [0, 1), got {config.dropout}")
    if config.inner < 0 or config.fine_tune_layers < 0:
        raise KitchenwareError("--inner and --fine-tune-layers must not be negative")
    if config.lr <= 0 or config.fine_tune_lr <= 0:
        raise KitchenwareError("learning rates must be positive")
    if config.fine_tune_layers and config.weights == "none":
        raise KitchenwareError(
            "--fine-tune-layers needs pretrained --weights; with --weights none "
            "the whole backbone trains already"
        )
    if config.class_weights not in CLASS_WEIGHTINGS:
        raise KitchenwareError(
            f"--class-weights must be one of {', '.join(CLASS_WEIGHTINGS)}, "
            f"got {config.class_weights!r}"
        )
    if config.cached_features and (config.weights == "none" or config.augment):
        raise KitchenwareError(
            "--cached-features needs a frozen pretrained backbone and --no-augment "
            "(augmented or trainable backbones change the features every epoch)"
        )
    if config.feature_cache and not config.cached_features:
        raise KitchenwareError("--feature-cache is used only with --cached-features")
    train_split = list_split(config.data, "train")
    val_split = list_split(config.data, "val", require_all_classes=False)
    return train_split, val_split


def class_weight_map(split, weighting: str) -> dict[int, float] | None:
    """Keras `class_weight` for `weighting`: None, or N / (classes * count) per class."""
    if weighting == "none":
        return None
    counts = list(split.counts().values())
    total = sum(counts)
    return {i: total / (len(counts) * n) for i, n in enumerate(counts) if n}


def _strategy():
    """MirroredStrategy over all GPUs when there is more than one, else the default."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _set_mixed_precision(enabled: bool) -> None:
    import keras
    import tensorflow as tf

    if enabled and not tf.config.list_physical_devices("GPU"):
        raise KitchenwareError("--mixed-precision needs a GPU; none is visible to TensorFlow")
    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")


def _compile(model, lr: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],  # by name: positionally Keras 3 binds it to loss_weights
    )


def _unfreeze_top(model, layers: int) -> int:
    """Make the top `layers` backbone layers trainable, BatchNorm excepted; returns the count."""
    import keras

    base = backbone_of(model)
    base.trainable = True
    chosen = base.layers[-layers:] if layers else []
    for layer in base.layers:
        layer.trainable = False
    unfrozen = 0
    for layer in chosen:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            unfrozen += 1
    return unfrozen


def _callbacks(config: TrainConfig, run_dir: Path, best_so_far: float | None, saved=None):
    """Checkpoint (of `saved`, default the model being fit), CSV log, early stopping."""
    import keras

    class Checkpoint(keras.callbacks.ModelCheckpoint):
        def set_model(self, model):
            super().set_model(saved if saved is not None else model)

    return [
        Checkpoint(
            run_dir / BEST_MODEL,
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.CSVLogger(run_dir / "log.csv", append=best_so_far is not None),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.patience, verbose=config.verbose
        ),
    ]


def _fit_head_on_features(model, config: TrainConfig, train_split, val_split, weights, run_dir):
    """Stage 1 on pooled features computed once; checkpoints the full model."""
    import numpy as np

    from kitchenware.training.features import head_model, split_features

    def features(split):
        return split_features(
            model,
            split,
            config.size,
            config.batch_size,
            config.backbone,
            config.weights,
            config.feature_cache,
        )

    x_train, x_val = features(train_split), features(val_split)
    head = head_model(model)
    _compile(head, config.lr)
    return head.fit(
        x_train,
        np.asarray(train_split.labels, dtype=np.int32),
        validation_data=(x_val, np.asarray(val_split.labels, dtype=np.int32)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        class_weight=weights,
        callbacks=_callbacks(config, run_dir, None, saved=model),
        verbose=config.verbose,
        shuffle=True,
    )


def plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history["epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"val {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_latest_link(run_dir: Path) -> Path | None:
    """Point PARENT/latest at run_dir (relative link); leaves a real folder named latest alone."""
    link = run_dir.parent / LATEST_LINK
    if link.exists() and not link.is_symlink():
        return None
    tmp = run_dir.parent / f".{LATEST_LINK}.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)
    return link


def train(config: TrainConfig, link_latest: bool = True) -> TrainResult:
    """Run both stages and write every artifact; raises KitchenwareError on bad input.

    `link_latest` points RUN/../latest at this run (off for tuning trials).
    """
    train_split, val_split = validate(config)
    run_dir = Path(config.out)
    if (run_dir / BEST_MODEL).exists():
        raise KitchenwareError(f"{run_dir} already holds a trained model; choose another --out")

    import keras

    from kitchenware.training.model import build_model

    _set_mixed_precision(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    strategy = _strategy()
    with strategy.scope():
        model = build_model(
            backbone=config.backbone,
            size=config.size,
            weights=config.weights,
            inner=config.inner,
            dropout=config.dropout,
            augment=config.augment,
            seed=config.seed,
        )
        _compile(model, config.lr)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    train_ds = make_dataset(
        train_split,
        config.size,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        cache=config.cache,
    )
    val_ds = make_dataset(val_split, config.size, config.batch_size, cache=config.cache)
    if config.verbose:
        print(f"train: {len(train_split)} images {train_split.counts()}")
        print(f"val:   {len(val_split)} images {val_split.counts()}")

    weights = class_weight_map(train_split, config.class_weights)
    if config.verbose and weights:
        print("class weights: " + ", ".join(f"{CLASSES[i]} {w:.2f}" for i, w in weights.items()))
    started = time.perf_counter()
    if config.cached_features:
        fit = _fit_head_on_features(model, config, train_split, val_split, weights, run_dir)
    else:
        fit = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            class_weight=weights,
            callbacks=_callbacks(config, run_dir, None),
            verbose=config.verbose,
            shuffle=False,  # the dataset shuffles itself (seeded)
        )
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    history["epoch"] = [i + 1 for i in range(len(history["loss"]))]
    history["stage"] = [1] * len(history["loss"])

    if config.fine_tune_layers:
        with strategy.scope():
            unfrozen = _unfreeze_top(model, config.fine_tune_layers)
            _compile(model, config.fine_tune_lr)
        if config.verbose:
            print(f"fine-tuning: {unfrozen} backbone layers unfrozen (BatchNorm stays frozen)")
        first = len(history["loss"])
        fit2 = model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=first,
            epochs=first + config.fine_tune_epochs,
            class_weight=weights,
            callbacks=_callbacks(config, run_dir, max(history["val_accuracy"])),
            verbose=config.verbose,
            shuffle=False,  # the dataset shuffles itself (seeded)
        )
        for key, values in fit2.history.items():
            history[key] += [float(v) for v in values]
        added = len(fit2.history["loss"])
        history["epoch"] += [first + i + 1 for i in range(added)]
        history["stage"] += [2] * added

    best_index = max(range(len(history["val_accuracy"])), key=history["val_accuracy"].__getitem__)
    summary = {
        "best_val_accuracy": history["val_accuracy"][best_index],
        "best_epoch": history["epoch"][best_index],
        "epochs_run": len(history["epoch"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / "history.json").write_text(
        json.dumps({**summary, "history": history}, indent=2) + "\n"
    )
    plot_history(history, run_dir / "history.png")
    if link_latest:
        update_latest_link(run_dir)
    if config.verbose:
        print(
            f"best val accuracy {summary['best_val_accuracy']:.4f} at epoch "
            f"{summary['best_epoch']} -> {run_dir / BEST_MODEL}"
        )
    return TrainResult(
        run_dir=run_dir,
        best_model=run_dir / BEST_MODEL,
        best_val_accuracy=summary["best_val_accuracy"],
        best_epoch=summary["best_epoch"],
        epochs_run=summary["epochs_run"],
        history=history,
        model=model,
    )


def run(args) -> int:
    train(config_from_args(args))
    return 0
