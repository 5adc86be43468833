"""Training benchmarks; each subcommand is one command to rerun.

  python -m kitchenware.tools.bench_train pipeline [--data KAGGLE_DIR]   # tf.data vs ImageDataGenerator
  python -m kitchenware.tools.bench_train step                           # train step + export time at 299
  python -m kitchenware.tools.bench_train augment                        # fused warp vs Keras' 4 layers

`pipeline` preps the Kaggle-layout data (kitchenware-mini by default), then in
the same run feeds its train split at 299 px through (a) Keras'
ImageDataGenerator.flow_from_directory with the course solutions' kind of
augmentation (tf_keras package; Keras 3 dropped the class) and (b) our tf.data
pipeline plus the model's own augmentation layers applied to each batch, which
is where that work happens in our training. Both produce augmented float
batches in [-1, 1]. `step` times Xception at 299, weights none, batch 32: a few
train steps with the whole network trainable and with the backbone frozen (the
compute of training on ImageNet weights), then one SavedModel export.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from kitchenware.core.contract import DEFAULT_IMAGE_SIZE
from kitchenware.tools.benchlib import MINI_DATA, cpu_model

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
    args = parser.parse_args()
    if args.what == "pipeline":
        bench_pipeline(args.data, args.size, args.batch_size, args.epochs)
    elif args.what == "augment":
        bench_augment(args.size, args.batch_size, args.rounds)
    else:
        bench_step(args.size, args.batch_size, args.steps)


if __name__ == "__main__":
    main()
