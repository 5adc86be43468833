"""Write an OpenVINO IR of every signature into a SavedModel version folder.

`openvino.convert_model(<version folder>)` cannot read our export (its native
frontend crashed without TensorFlow and refused the resource variables with it),
so each signature is loaded with TensorFlow, wrapped in a tf.function that
returns only its numeric outputs, and that concrete function is converted. The
string outputs (`classes`) cannot be converted; the export records the value
TensorFlow gives every row, and the OpenVINO model server fills them from it.

The IR lives in `<version>/openvino/` (TF Serving loads saved_model.pb,
variables/ and assets/ and ignores other folders). A signature that fails to
convert is reported and left out; the manifest says which (and why), so
`kitchenware inspect` and the server's `auto` backend know.

OpenVINO's converter would start a usage-statistics sender: the export turns
that off for its process before importing the converter (see `telemetry_off`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from kitchenware.core.contract import OPENVINO_DIR, OPENVINO_MANIFEST

log = logging.getLogger("kitchenware.export")

# The self-test image: the same grey picture as the warm-up record.
SELF_TEST_FILL = 128
INTERNAL_SIGNATURES = ("__saved_model_init_op",)


def telemetry_off() -> None:
    """No usage statistics from OpenVINO's converter.

    openvino-telemetry declines to send in CI, which it detects by CI=true; that
    is the one switch it reads from the environment (its other opt-out writes a
    consent file into the user's home). Set for this process only.
    """
    os.environ["CI"] = "true"


def _signature_image(function) -> tuple[str, list]:
    specs = function.structured_input_signature[1]
    if len(specs) != 1:
        raise ValueError(f"expected one input, found {sorted(specs)}")
    ((name, spec),) = specs.items()
    return name, spec


def convert_signature(function, folder: Path, name: str) -> dict:
    """Convert one signature; returns its manifest entry (raises on failure)."""
    import openvino as ov
    import tensorflow as tf

    input_name, spec = _signature_image(function)
    if spec.dtype != tf.uint8 or spec.shape.rank != 4:
        raise ValueError(f"input {input_name!r} is {spec.dtype.name} {spec.shape}, not uint8 NHWC")
    outputs = function.structured_outputs
    numeric = sorted(k for k, v in outputs.items() if v.dtype != tf.string)
    strings = sorted(k for k, v in outputs.items() if v.dtype == tf.string)
    if not numeric:
        raise ValueError("no numeric output to convert")

    @tf.function(input_signature=[tf.TensorSpec(spec.shape, tf.uint8, name=input_name)])
    def numeric_only(image):
        result = function(**{input_name: image})
        return [result[k] for k in numeric]

    model = ov.convert_model(numeric_only.get_concrete_function())
    xml = folder / f"{name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)

    size = int(spec.shape[1])
    image = np.full((1, size, size, 3), SELF_TEST_FILL, dtype=np.uint8)
    expected = function(**{input_name: tf.constant(image)})
    # A string output can be filled by the server only if it is the same row for every
    # image (like `classes`): check on a second, different image.
    noise = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    other = function(**{input_name: tf.constant(noise)})
    constant_rows = {}
    for key in strings:
        rows, other_rows = expected[key].numpy(), other[key].numpy()
        if rows.ndim != 2 or rows.shape[0] != 1 or not np.array_equal(rows, other_rows):
            raise ValueError(f"string output {key!r} is not one fixed row per image")
        constant_rows[key] = [v.decode() for v in rows[0]]
    return {
        "xml": xml.name,
        "input": input_name,
        "outputs": numeric,
        "output_dtypes": {k: outputs[k].dtype.as_numpy_dtype().dtype.name for k in numeric},
        "constant_rows": constant_rows,
        "self_test": {
            "shape": list(image.shape),
            "fill": SELF_TEST_FILL,
            "expected": {k: expected[k].numpy().tolist() for k in numeric},
        },
    }


def write_ir(version_dir: Path) -> dict:
    """Convert every signature of the SavedModel at `version_dir`; returns the manifest."""
    telemetry_off()
    import tensorflow as tf

    folder = Path(version_dir) / OPENVINO_DIR
    folder.mkdir(exist_ok=True)
    loaded = tf.saved_model.load(str(version_dir))
    manifest = {"signatures": {}, "not_converted": {}}
    for name, function in sorted(loaded.signatures.items()):
        if name in INTERNAL_SIGNATURES:
            continue
        try:
            manifest["signatures"][name] = convert_signature(function, folder, name)
        except Exception as exc:  # OpenVINO and TF raise many types; the export goes on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            manifest["not_converted"][name] = reason
            log.warning("signature %r has no OpenVINO IR: %s", name, reason)
    (folder / OPENVINO_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
