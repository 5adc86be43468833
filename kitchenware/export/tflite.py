"""TFLite export: the SavedModel's contract in a file a phone or a small box can run.

    signature `serving_default`
      input   image          uint8   [-1, S, S, 3]  pixels already resized to S
      output  probabilities  float32 [-1, 6]        softmax over the classes

TFLite has no string tensors worth using, so the class names (in output order)
go into a sidecar `classes.json` next to `model.tflite`, with the size and the
tensor names.

Where: `kitchenware export --out models/kitchenware --format tflite` writes
`models/kitchenware-tflite/<version>/`, a sibling of the SavedModel base path,
never inside it. TF Serving and our model server treat every numeric folder of
the base path as a SavedModel version, and the model image bakes in
`models/kitchenware/<version>/` only; the version number pairs the two.

How: the model is traced through Keras' own `ExportArchive` into a temporary
SavedModel and converted from there. Converting a `tf.saved_model.save` export
or a `tf.function` over the model (`from_concrete_functions`) loses the Keras 3
weights: the result is a 0.2 MB file that answers NaN.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from kitchenware.core.contract import INPUT, OUTPUT_PROBABILITIES, SIGNATURE
from kitchenware.core.labels import CLASSES
from kitchenware.export.layout import free_version_dir, staged_dir

MODEL_FILE = "model.tflite"
CLASSES_FILE = "classes.json"
BASE_SUFFIX = "-tflite"


def tflite_base(saved_model_base: str | os.PathLike) -> Path:
    """`models/kitchenware` -> `models/kitchenware-tflite` (a sibling, not a child)."""
    base = Path(saved_model_base).resolve()
    return base.with_name(base.name + BASE_SUFFIX)


def convert(model, classes=CLASSES) -> bytes:
    """A Keras model (uint8 pixels -> logits) as TFLite bytes (uint8 pixels -> softmax)."""
    import keras
    import tensorflow as tf

    from kitchenware.training.model import inference_model
    from kitchenware.training.predict import probabilities

    model = inference_model(model)
    size = int(model.input_shape[1])

    def serve(image):
        return {OUTPUT_PROBABILITIES: probabilities(model, image)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT)],
    )
    with tempfile.TemporaryDirectory(prefix="kitchenware-tflite-") as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        return converter.convert()


def sidecar(size: int, classes=CLASSES) -> dict:
    """What `classes.json` holds: what a TFLite client needs besides the file."""
    return {
        "signature": SIGNATURE,
        "input": {"name": INPUT, "dtype": "uint8", "shape": [-1, size, size, 3]},
        "output": {"name": OUTPUT_PROBABILITIES, "dtype": "float32", "shape": [-1, len(classes)]},
        "classes": list(classes),
    }


def write_tflite(
    content: bytes, base: str | os.PathLike, version: int, size: int, classes=CLASSES
) -> Path:
    """Write BASE/<version>/{model.tflite,classes.json} through a renamed staging folder."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    target = free_version_dir(base, version)
    with staged_dir(target) as staging:
        (staging / MODEL_FILE).write_bytes(content)
        (staging / CLASSES_FILE).write_text(json.dumps(sidecar(size, classes), indent=2) + "\n")
    return target


def interpreter(model_path: str | os.PathLike):
    """A TFLite interpreter for the file, allocated.

    LiteRT (`ai-edge-litert`, TensorFlow-free) when installed; otherwise
    TensorFlow's own `tf.lite.Interpreter`, which TF 2.21 still ships but
    deprecates in favour of LiteRT.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    found = Interpreter(model_path=str(model_path))
    found.allocate_tensors()
    return found


def predict(model_dir: str | os.PathLike, images) -> tuple[list[str], object]:
    """Run `model_dir/model.tflite` on uint8 images [N, S, S, 3]: (classes, probabilities)."""
    import numpy as np

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / CLASSES_FILE).read_text())
    runner = interpreter(model_dir / MODEL_FILE).get_signature_runner(meta["signature"])
    pixels = np.asarray(images, dtype=np.uint8)
    result = runner(**{meta["input"]["name"]: pixels})
    return meta["classes"], result[meta["output"]["name"]]
