"""Export a trained Keras model as a TF Serving SavedModel version.

The SavedModel carries its own contract (kitchenware.core.contract), so no
client hard-codes tensor names or class lists. It is written to
`BASE/<version>/` (TF Serving's layout) through a staging folder renamed into
place, with warm-up requests in TF Serving's format (one per signature).

Two signatures: `serving_default` (probabilities) and `explain` (the same plus
Grad-CAM maps, kitchenware.training.gradcam). Both take the same uint8 image.
"""

from __future__ import annotations

import os
from pathlib import Path

from kitchenware.core.contract import (
    EXPLAIN_SIGNATURE,
    INPUT,
    MODEL_NAME,
    OUTPUT_CLASSES,
    OUTPUT_HEATMAP,
    OUTPUT_HEATMAPS,
    OUTPUT_PROBABILITIES,
    SIGNATURE,
    WARMUP_FILE,
)
from kitchenware.core.labels import CLASSES
from kitchenware.export.layout import free_version_dir, next_version, staged_dir
from kitchenware.training.predict import probabilities


def serving_function(model, classes=CLASSES, tta: str = "none"):
    """The tf.function behind `serving_default` for a Keras model taking uint8 pixels.

    `tta="flip"` serves the average over the image and its mirror (same signature).
    """
    import tensorflow as tf

    size = int(model.input_shape[1])
    names = tf.constant(list(classes))

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT)])
    def serve(image):
        batch = tf.shape(image)[0]
        labels = tf.broadcast_to(names[tf.newaxis, :], [batch, len(classes)])
        return {OUTPUT_PROBABILITIES: probabilities(model, image, tta), OUTPUT_CLASSES: labels}

    return serve


def explain_function(model, classes=CLASSES, tta: str = "none"):
    """The tf.function behind `explain`: serving_default's outputs plus Grad-CAM maps.

    `heatmap` is the top class's map, `heatmaps` every class's in `classes` order.
    With `tta="flip"` the probabilities equal serving_default's and the maps are
    averaged over image and mirror (see kitchenware.training.gradcam.explain).
    """
    import tensorflow as tf

    from kitchenware.training.gradcam import explain

    size = int(model.input_shape[1])
    names = tf.constant(list(classes))

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT)])
    def explain_signature(image):
        batch = tf.shape(image)[0]
        labels = tf.broadcast_to(names[tf.newaxis, :], [batch, len(classes)])
        found = explain(model, image, tta)
        return {
            OUTPUT_PROBABILITIES: found["probabilities"],
            OUTPUT_CLASSES: labels,
            OUTPUT_HEATMAP: found["heatmap"],
            OUTPUT_HEATMAPS: found["heatmaps"],
        }

    return explain_signature


WARMUP_SIGNATURES = (SIGNATURE, EXPLAIN_SIGNATURE)


def write_warmup(
    saved_model_dir: Path,
    size: int,
    model_name: str = MODEL_NAME,
    signatures=WARMUP_SIGNATURES,
) -> Path:
    """One PredictionLog record (a grey image) per signature in assets.extra/, as TF Serving
    expects, so the first request to either signature finds it traced and warm."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = saved_model_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((1, size, size, 3), 128, dtype=np.uint8)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature in signatures:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            request.inputs[INPUT].CopyFrom(tf.make_tensor_proto(pixels))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def export_saved_model(
    model,
    base_dir: str | os.PathLike,
    version: int | None = None,
    model_name: str = MODEL_NAME,
    tta: str = "none",
    openvino: bool = True,
) -> Path:
    """Write `model` to BASE/<version>/ and return that folder (`tta`: see kitchenware.training.predict).

    `openvino`: add the OpenVINO IR of every signature (kitchenware.export.openvino_ir),
    which the model server's OpenVINO backend runs; skipped with a warning when the
    openvino package is missing."""
    import tensorflow as tf

    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    version = next_version(base) if version is None else int(version)
    target = free_version_dir(base, version)

    from kitchenware.training.model import inference_model

    model = inference_model(model)
    module = tf.Module()
    module.model = model
    module.serve = serving_function(model, tta=tta)
    module.explain = explain_function(model, tta=tta)
    signatures = {SIGNATURE: module.serve, EXPLAIN_SIGNATURE: module.explain}
    with staged_dir(target) as staging:
        tf.saved_model.save(module, str(staging), signatures=signatures)
        write_warmup(staging, int(model.input_shape[1]), model_name)
        if openvino:
            add_openvino_ir(staging)
    return target


def add_openvino_ir(version_dir: Path) -> None:
    """Convert the version's signatures to IR and say which ones have it."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        print("warning: openvino is not installed: this version has no OpenVINO IR")
        return
    from kitchenware.export.openvino_ir import write_ir

    manifest = write_ir(version_dir)
    for name, reason in manifest["not_converted"].items():
        print(f"warning: signature {name!r} has no OpenVINO IR ({reason})")
    if manifest["signatures"]:
        print(f"OpenVINO IR for signature(s): {', '.join(sorted(manifest['signatures']))}")
