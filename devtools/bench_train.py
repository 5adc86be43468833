"""Training benchmarks; each subcommand is one command to rerun.

  python -m devtools.bench_train pipeline [--data KAGGLE_DIR]   # tf.data vs ImageDataGenerator
  python -m devtools.bench_train step                           # train step + export time at 299
  python -m devtools.bench_train augment                        # fused warp vs Keras' 4 layers
  python -m devtools.bench_train frozen --prep PREP --weights W  # cached features vs not

`pipeline` preps the Kaggle-layout data (kitchenware-mini by default), then in
the same run feeds its train split at 299 px through (a) Keras'
ImageDataGenerator.flow_from_directory with the course solutions' kind of
augmentation (tf_keras package; Keras 3 dropped the class) and (b) our tf.data
pipeline plus the model's own augmentation layers applied to each batch, which
is where that work happens in our training. Both produce augmented float
batches in [-1, 1]. `step` times Xception at 299, weights none, batch 32: a few
train steps with the whole network trainable and with the backbone frozen (the
compute of training on ImageNet weights), then one SavedModel export.
`frozen` times stage 1 with a frozen backbone on a prep folder both ways, in
one process: on cached backbone features vs through the backbone every epoch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from devtools.benchlib import MINI_DATA, cpu_model
from kitchenware.core.contract import DEFAULT_IMAGE_SIZE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> str:
    import tensorflow as tf

    return (
        f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, {datetime.date.today()}"
    )


def bench_pipeline(data: Path, size: int, batch: int, epochs: int) -> None:
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        sys.exit("needs tf_keras for ImageDataGenerator: pip install --no-deps tf-keras==2.21.0")
    import tensorflow as tf

    from kitchenware.cli import main
    from kitchenware.training.data import list_split, make_dataset
    from kitchenware.training.model import augmentation

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    prep = work / "prep"
    if main(["prep", "--data", str(data), "--out", str(prep), "--no-progress"]) != 0:
        sys.exit("prep failed")
    split = list_split(prep, "train")
    n = len(split)
    print(f"\n{n} train images from {data}, {size} px, batch {batch}, {epochs} epochs each")

    # (a) the original approach: decode + augment in NumPy/SciPy on every epoch
    generator = ImageDataGenerator(
        rotation_range=36,  # = RandomRotation(0.1) of a full turn
        zoom_range=0.15,
        width_shift_range=0.1,
        height_shift_range=0.1,
        horizontal_flip=True,
        fill_mode="reflect",
        preprocessing_function=lambda x: x / 127.5 - 1.0,
    )
    flow = generator.flow_from_directory(
        prep / "train", target_size=(size, size), batch_size=batch, class_mode="sparse", seed=1
    )
    idg = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _ in range(len(flow)):
            next(flow)
        idg.append(n / (time.perf_counter() - start))

    # (b) ours: tf.data (load_image, parallel, cached) + in-model augmentation layers
    augment = augmentation(seed=1)

    @tf.function
    def augment_batch(images):
        return augment(tf.cast(images, tf.float32), training=True) / 127.5 - 1.0

    ds = make_dataset(split, size, batch, shuffle=True, seed=1)
    ours = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, _labels in ds:
            augment_batch(images).numpy()
        ours.append(n / (time.perf_counter() - start))

    plain = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, _labels in make_dataset(split, size, batch, shuffle=True, seed=1, cache=False):
            images.numpy()
        plain.append(n / (time.perf_counter() - start))
    cached = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, _labels in ds:
            images.numpy()
        cached.append(n / (time.perf_counter() - start))

    print(f"machine: {machine()}")
    print("| pipeline | epoch 1 images/s | later epochs images/s |")
    print("|---|---:|---:|")
    later = lambda xs: sum(xs[1:]) / len(xs[1:])  # noqa: E731
    print(f"| ImageDataGenerator.flow_from_directory | {idg[0]:.0f} | {later(idg):.0f} |")
    print(f"| tf.data + in-model augmentation | {ours[0]:.0f} | {later(ours):.0f} |")
    print(f"| tf.data without augmentation, no cache | {plain[0]:.0f} | {later(plain):.0f} |")
    print(
        f"| tf.data without augmentation, cache already filled | {cached[0]:.0f} | {later(cached):.0f} |"
    )
    print(
        f"| ratio (ours / ImageDataGenerator) | {ours[0] / idg[0]:.1f}x | {later(ours) / later(idg):.1f}x |"
    )


def bench_step(size: int, batch: int, steps: int) -> None:
    import numpy as np

    from kitchenware.export.savedmodel import export_saved_model
    from kitchenware.training.model import build_model
    from kitchenware.training.train import _compile

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 6, batch)
    print(f"machine: {machine()}")
    print(f"xception, {size} px, weights none, batch {batch}, {steps} timed steps after 1 warm-up")
    print("| what | seconds |")
    print("|---|---:|")
    model = None
    for frozen in (False, True):
        model = build_model("xception", size, "none", augment=True, seed=1)
        if frozen:
            model.get_layer("xception").trainable = False
        _compile(model, 1e-3)
        model.train_on_batch(images, labels)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        per_step = (time.perf_counter() - start) / steps
        what = "frozen backbone (as with ImageNet weights)" if frozen else "whole network trainable"
        print(f"| train step, {what} | {per_step:.2f} |")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export_saved_model(model, Path(tmp) / "models")
        print(f"| export SavedModel (+ warm-up record) | {time.perf_counter() - start:.1f} |")


def bench_augment(size: int, batch: int, rounds: int) -> None:
    """Our augmentation block vs Keras' separate flip/rotation/zoom/translation layers."""
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import layers

    from kitchenware.training.model import augmentation

    separate = keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=1),
            layers.RandomRotation(0.1, fill_mode="reflect", seed=1),
            layers.RandomZoom(0.15, fill_mode="reflect", seed=1),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=1),
            layers.RandomContrast(0.2, seed=1),
        ]
    )
    fused = augmentation(seed=1)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, size, size, 3)).astype("float32"))
    run_separate = tf.function(lambda x: separate(x, training=True))
    run_fused = tf.function(lambda x: fused(x, training=True))
    run_separate(images), run_fused(images)  # trace both first
    print(f"machine: {machine()}")
    print(f"batch of {batch} at {size} px, {rounds} rounds, alternating")
    print("| round | Keras layers s | fused s | ratio |")
    print("|---|---:|---:|---:|")
    for i in range(rounds):
        start = time.perf_counter()
        run_separate(images).numpy()
        a = time.perf_counter() - start
        start = time.perf_counter()
        run_fused(images).numpy()
        b = time.perf_counter() - start
        print(f"| {i + 1} | {a:.3f} | {b:.3f} | {a / b:.1f}x |")


def _epoch_timer():
    """A Keras callback that records each epoch's wall time in `.seconds`."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._started)

    return EpochTimer()


def bench_frozen(
    prep: Path,
    weights: str,
    backbone: str = "xception",
    size: int = DEFAULT_IMAGE_SIZE,
    batch: int = 32,
    cached_epochs: int = 3,
    through_epochs: int = 2,
    planned_epochs: int = 10,
) -> dict:
    """Stage 1 with a frozen backbone, both ways in one process, no augmentation.

    (a) cached: pooled features of train + val computed once (the backbone's
    forward pass: images/s), then the head trains on them; (b) through the
    backbone: the full model fits on the (in-memory cached) decoded images, so
    every epoch runs the frozen backbone again. Epoch 1 of (b) also decodes
    and traces; its later epochs are the steady cost. `planned_epochs` scales
    both to a whole stage 1.
    """
    import numpy as np

    from kitchenware.training.data import list_split, make_dataset
    from kitchenware.training.features import head_model, split_features
    from kitchenware.training.model import backbone_of, build_model
    from kitchenware.training.train import _compile

    if cached_epochs < 1 or through_epochs < 2 or planned_epochs < 1:
        raise ValueError("needs cached_epochs >= 1, through_epochs >= 2, planned_epochs >= 1")
    train_split = list_split(prep, "train")
    val_split = list_split(prep, "val", require_all_classes=False)
    model = build_model(backbone, size, weights, augment=False, seed=1)
    backbone_of(model).trainable = False  # frozen, also with weights "none" (timing only)
    images = len(train_split) + len(val_split)

    started = time.perf_counter()
    x_train, x_val = (
        split_features(model, s, size, batch, backbone, weights) for s in (train_split, val_split)
    )
    feature_s = time.perf_counter() - started
    y_train = np.asarray(train_split.labels, dtype=np.int32)
    y_val = np.asarray(val_split.labels, dtype=np.int32)
    head = head_model(model)
    _compile(head, 1e-3)
    cached = _epoch_timer()
    head.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=cached_epochs,
             batch_size=batch, callbacks=[cached], verbose=0)  # fmt: skip

    _compile(model, 1e-3)
    through = _epoch_timer()
    model.fit(make_dataset(train_split, size, batch, shuffle=True, seed=1),
              validation_data=make_dataset(val_split, size, batch),
              epochs=through_epochs, callbacks=[through], verbose=0)  # fmt: skip

    cached_epoch = sum(cached.seconds) / len(cached.seconds)
    through_epoch = sum(through.seconds[1:]) / len(through.seconds[1:])
    whole_cached = feature_s + planned_epochs * cached_epoch
    whole_through = through.seconds[0] + (planned_epochs - 1) * through_epoch
    return {
        "backbone": backbone,
        "size": size,
        "batch_size": batch,
        "train_images": len(train_split),
        "val_images": len(val_split),
        "feature_s": round(feature_s, 3),
        "forward_images_per_s": round(images / feature_s, 2),
        "cached_epoch_s": round(cached_epoch, 3),
        "through_epoch1_s": round(through.seconds[0], 3),
        "through_epoch_s": round(through_epoch, 3),
        "epoch_ratio": round(through_epoch / cached_epoch, 2),
        "planned_epochs": planned_epochs,
        "stage1_cached_s": round(whole_cached, 2),
        "stage1_through_s": round(whole_through, 2),
        "stage1_ratio": round(whole_through / whole_cached, 2),
    }


def print_frozen(result: dict) -> None:
    r = result
    print(f"machine: {machine()}")
    print(f"{r['backbone']}, {r['size']} px, batch {r['batch_size']}, "
          f"{r['train_images']} train + {r['val_images']} val images, no augmentation")  # fmt: skip
    print("| what | seconds |")
    print("|---|---:|")
    print(f"| backbone features of train + val, once ({r['forward_images_per_s']} images/s) "
          f"| {r['feature_s']} |")  # fmt: skip
    print(f"| one epoch of the head on cached features | {r['cached_epoch_s']} |")
    print(f"| epoch 1 through the frozen backbone (decode + trace) | {r['through_epoch1_s']} |")
    print(f"| later epoch through the frozen backbone | {r['through_epoch_s']} |")
    print(f"| per epoch, through / cached | {r['epoch_ratio']}x |")
    print(f"| stage 1 of {r['planned_epochs']} epochs, cached (features + epochs) "
          f"| {r['stage1_cached_s']} |")  # fmt: skip
    print(f"| stage 1 of {r['planned_epochs']} epochs, through the backbone "
          f"| {r['stage1_through_s']} |")  # fmt: skip
    print(f"| whole stage 1, through / cached | {r['stage1_ratio']}x |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pipeline", help="tf.data vs ImageDataGenerator images/s")
    p.add_argument("--data", type=Path, default=MINI_DATA, help="Kaggle-layout folder")
    p.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    s = sub.add_parser("step", help="train step and export time")
    s.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--steps", type=int, default=3)
    a = sub.add_parser("augment", help="fused augmentation warp vs Keras' separate layers")
    a.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--rounds", type=int, default=5)
    f = sub.add_parser("frozen", help="stage 1 on cached features vs through the frozen backbone")
    f.add_argument("--prep", type=Path, required=True, help="output folder of `kitchenware prep`")
    f.add_argument("--weights", default="none", help="backbone weights file (none: random)")
    f.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--epochs", type=int, default=10, help="stage-1 epochs to scale to")
    f.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.what == "frozen":
        result = bench_frozen(args.prep, args.weights, size=args.size,
                              batch=args.batch_size, planned_epochs=args.epochs)  # fmt: skip
        print_frozen(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    elif args.what == "pipeline":
        bench_pipeline(args.data, args.size, args.batch_size, args.epochs)
    elif args.what == "augment":
        bench_augment(args.size, args.batch_size, args.rounds)
    else:
        bench_step(args.size, args.batch_size, args.steps)


if __name__ == "__main__":
    main()
