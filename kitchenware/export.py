"""Export a trained Keras model as a TF Serving SavedModel version.

The SavedModel carries its own contract, so no client hard-codes anything:

    signature `serving_default`
      input   image          uint8   [-1, S, S, 3]  pixels already resized to S
      output  probabilities  float32 [-1, 6]        softmax over the classes
      output  classes        string  [-1, 6]        class names, in output order

It is written to `BASE/<version>/` (TF Serving's layout) through a temporary
folder that is renamed into place, so a model server polling BASE never sees a
half-written version. A warm-up request in TF Serving's format is included.

`--format tflite` (repeatable, or comma-separated) also writes the same model
as TFLite to `BASE-tflite/<version>/model.tflite` plus `classes.json` (TFLite
has no string output), beside the base path so that neither TF Serving nor our
model server ever mistakes it for a version; see `kitchenware.tflite`. The
SavedModel is always written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kitchenware.errors import KitchenwareError
from kitchenware.labels import CLASSES
from kitchenware.tta import TTA_MODES

SIGNATURE = "serving_default"
INPUT = "image"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
DEFAULT_MODEL_NAME = "kitchenware"
FORMATS = ("savedmodel", "tflite")


def versions(base_dir: str | os.PathLike) -> list[int]:
    """Numeric version folders under `base_dir` that hold a saved_model.pb, ascending."""
    base = Path(base_dir)
    if not base.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in base.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )


def next_version(base_dir: str | os.PathLike) -> int:
    base = Path(base_dir)
    taken = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(taken, default=0) + 1


def free_version_dir(base_dir: str | os.PathLike, version: int) -> Path:
    """BASE/<version> if the number is valid and not taken, else a clear error."""
    if version < 1:
        raise KitchenwareError(f"--version must be a positive integer, got {version}")
    target = Path(base_dir) / str(version)
    if target.exists():
        raise KitchenwareError(f"{target} already exists; choose another --version")
    return target


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target`, renamed to it when the block succeeds.

    On any failure (or Ctrl-C) the staging folder is deleted, so a reader of
    the parent folder (a model server polling for versions) never sees a
    half-written `target`.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def serving_function(model, classes=CLASSES, tta: str = "none"):
    """The tf.function behind `serving_default` for a Keras model taking uint8 pixels.

    `tta="flip"` serves the average over the image and its mirror (same signature).
    """
    import tensorflow as tf

    from kitchenware.tta import probabilities as tta_probabilities

    size = int(model.input_shape[1])
    names = tf.constant(list(classes))

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT)])
    def serve(image):
        probabilities = tta_probabilities(model, image, tta)
        batch = tf.shape(image)[0]
        labels = tf.broadcast_to(names[tf.newaxis, :], [batch, len(classes)])
        return {OUTPUT_PROBABILITIES: probabilities, OUTPUT_CLASSES: labels}

    return serve


def write_warmup(saved_model_dir: Path, size: int, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    """One PredictionLog record (a grey image) in assets.extra/, as TF Serving expects."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    pixels = np.full((1, size, size, 3), 128, dtype=np.uint8)
    request.inputs[INPUT].CopyFrom(tf.make_tensor_proto(pixels))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    path = saved_model_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
    return path


def export_saved_model(
    model,
    base_dir: str | os.PathLike,
    version: int | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    tta: str = "none",
) -> Path:
    """Write `model` to BASE/<version>/ and return that folder (`tta`: see kitchenware.tta)."""
    import tensorflow as tf

    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    version = next_version(base) if version is None else int(version)
    target = free_version_dir(base, version)

    from kitchenware.model import inference_model

    model = inference_model(model)
    module = tf.Module()
    module.model = model
    module.serve = serving_function(model, tta=tta)
    with staged_dir(target) as staging:
        tf.saved_model.save(module, str(staging), signatures={SIGNATURE: module.serve})
        write_warmup(staging, int(model.input_shape[1]), model_name)
    return target


def load_keras_model(path: str | os.PathLike):
    """Load a trained .keras file (our custom augmentation layer registered first)."""
    import keras

    import kitchenware.augment  # noqa: F401  (registers RandomAffine for deserialisation)

    path = Path(path)
    if not path.is_file():
        raise KitchenwareError(f"model file not found: {path}")
    try:
        return keras.models.load_model(path)
    except Exception as exc:  # Keras raises many types for a bad file
        raise KitchenwareError(f"cannot load Keras model {path}: {exc}") from exc


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="runs/latest/best.keras", help="trained .keras file")
    parser.add_argument(
        "--out", default="models/kitchenware", help="model base path (TF Serving layout)"
    )
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: last + 1)"
    )
    parser.add_argument(
        "--model-name", default=DEFAULT_MODEL_NAME, help="name used in the warm-up request"
    )
    parser.add_argument(
        "--format",
        action="append",
        default=[],
        metavar="FORMAT",
        help="extra artifact next to the SavedModel (always written): tflite -> OUT-tflite/"
        "<version>/; repeatable or comma-separated",
    )
    parser.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation baked into the signature: flip = mean over image and mirror",
    )


def parse_formats(values) -> set[str]:
    """`--format` values (each maybe a comma list) as a set; always holds savedmodel."""
    chosen = {"savedmodel"}
    for value in values or []:
        for name in value.split(","):
            name = name.strip().lower()
            if name not in FORMATS:
                raise KitchenwareError(
                    f"unknown --format {name!r}; choose from {', '.join(FORMATS)}"
                )
            chosen.add(name)
    return chosen


def run(args) -> int:
    formats = parse_formats(args.format)
    model = load_keras_model(args.model)
    version = next_version(args.out) if args.version is None else args.version
    tflite = None
    if "tflite" in formats and args.tta != "none":
        raise KitchenwareError("--tta is baked into the SavedModel only; drop --format tflite")
    if "tflite" in formats:
        from kitchenware import tflite as tflite_export

        # Both folders checked before the (slow) conversion, so a clash writes nothing.
        free_version_dir(args.out, version)
        tflite_dir = tflite_export.tflite_base(args.out)
        free_version_dir(tflite_dir, version)
        tflite = tflite_export.convert(model)
    target = export_saved_model(model, args.out, version, args.model_name, tta=args.tta)
    print(
        f"exported {args.model} -> {target}" + (f" (tta {args.tta})" if args.tta != "none" else "")
    )
    if tflite is not None:
        size = int(model.input_shape[1])
        written = tflite_export.write_tflite(tflite, tflite_dir, version, size)
        model_file = written / tflite_export.MODEL_FILE
        print(f"exported {args.model} -> {model_file} ({len(tflite)} bytes)")
    return 0
