"""Write an OpenVINO IR of the signatures into a SavedModel version folder.

`openvino.convert_model(<version folder>)` cannot read our export (its native
frontend crashed without TensorFlow and refused the resource variables with it),
so each signature is loaded with TensorFlow, wrapped in a tf.function that
returns only its numeric outputs, and that concrete function is converted. The
string outputs (`classes`) cannot be converted; the export records the value
TensorFlow gives every row, and the OpenVINO model server fills them from it.

One IR can serve several signatures. Every IR's .bin holds its own copy of the
weights (the whole Xception backbone, ~84 MB), so the signatures are taken with
the most numeric outputs first, and each further one first tries to *share* an
IR already written: same input, its numeric outputs a subset of that IR's. The
runtime builds a model from the shared IR with only those outputs (OpenVINO then
drops what they do not need), and the export checks that model, in f32, against
the signature's own TensorFlow function on two images before it relies on it.
`explain` (probabilities and Grad-CAM maps) so carries the one IR and
`serving_default` uses its `probabilities`. A signature that cannot share (other
outputs, another function behind the same names, a check that fails) is
converted on its own, and the export logs why.

The IR lives in `<version>/openvino/` (TF Serving loads saved_model.pb,
variables/ and assets/ and ignores other folders). A signature that fails to
convert is reported and left out; the manifest says which (and why), so
`kitchenware inspect` and the server's `auto` backend know. A manifest entry
that shares names the host signature (`shares`), the host's xml and the host
IR's output indices it uses (`ir_outputs`); an entry without them has an IR of
its own (every manifest written before sharing existed).

OpenVINO's converter would start a usage-statistics sender: the export turns
that off for its process before importing the converter (see `telemetry_off`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kitchenware.core.contract import OPENVINO_DIR, OPENVINO_MANIFEST

log = logging.getLogger("kitchenware.export")

# The self-test image: the same grey picture as the warm-up record.
SELF_TEST_FILL = 128
# The second image every signature is run on: seeded noise.
NOISE_SEED = 0
INTERNAL_SIGNATURES = ("__saved_model_init_op",)
# A shared IR's outputs, run in f32, may differ from the signature's own TensorFlow
# answer by this much (absolute) on the grey and the noise image; anything more and
# the signature gets its own IR. f32 IR against TF was measured at ~3e-6.
SHARE_ATOL = 1e-4


def telemetry_off() -> None:
    """No usage statistics from OpenVINO's converter.

    openvino-telemetry declines to send in CI, which it detects by CI=true; that
    is the one switch it reads from the environment (its other opt-out writes a
    consent file into the user's home). Set for this process only.
    """
    os.environ["CI"] = "true"


class NotShared(Exception):
    """The signature cannot use that IR (the message says why)."""


@dataclass
class Signature:
    """One signature, checked and run once on the grey and the noise image."""

    name: str
    function: object
    input_name: str
    spec: object  # tf.TensorSpec of the one input
    numeric: list[str]  # sorted: IR output i is numeric[i]
    output_dtypes: dict[str, str]
    constant_rows: dict[str, list[str]]
    images: list[np.ndarray]  # grey, noise
    answers: list[dict[str, np.ndarray]] = field(default_factory=list)  # numeric, per image


def _signature_image(function) -> tuple[str, list]:
    specs = function.structured_input_signature[1]
    if len(specs) != 1:
        raise ValueError(f"expected one input, found {sorted(specs)}")
    ((name, spec),) = specs.items()
    return name, spec


def prepare_signature(function, name: str) -> Signature:
    """Check what the IR needs and run TensorFlow on both images (raises when unfit)."""
    import tensorflow as tf

    input_name, spec = _signature_image(function)
    if spec.dtype != tf.uint8 or spec.shape.rank != 4:
        raise ValueError(f"input {input_name!r} is {spec.dtype.name} {spec.shape}, not uint8 NHWC")
    outputs = function.structured_outputs
    numeric = sorted(k for k, v in outputs.items() if v.dtype != tf.string)
    strings = sorted(k for k, v in outputs.items() if v.dtype == tf.string)
    if not numeric:
        raise ValueError("no numeric output to convert")

    size = int(spec.shape[1])
    grey = np.full((1, size, size, 3), SELF_TEST_FILL, dtype=np.uint8)
    noise = np.random.default_rng(NOISE_SEED).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    results = [function(**{input_name: tf.constant(image)}) for image in (grey, noise)]
    # A string output can be filled by the server only if it is the same row for every
    # image (like `classes`): check on the second, different image.
    constant_rows = {}
    for key in strings:
        rows, other_rows = results[0][key].numpy(), results[1][key].numpy()
        if rows.ndim != 2 or rows.shape[0] != 1 or not np.array_equal(rows, other_rows):
            raise ValueError(f"string output {key!r} is not one fixed row per image")
        constant_rows[key] = [v.decode() for v in rows[0]]
    return Signature(
        name=name,
        function=function,
        input_name=input_name,
        spec=spec,
        numeric=numeric,
        output_dtypes={k: outputs[k].dtype.as_numpy_dtype().dtype.name for k in numeric},
        constant_rows=constant_rows,
        images=[grey, noise],
        answers=[{k: r[k].numpy() for k in numeric} for r in results],
    )


def _entry(sig: Signature, xml: str, **sharing) -> dict:
    return {
        "xml": xml,
        **sharing,
        "input": sig.input_name,
        "outputs": sig.numeric,
        "output_dtypes": sig.output_dtypes,
        "constant_rows": sig.constant_rows,
        "self_test": {
            "shape": list(sig.images[0].shape),
            "fill": SELF_TEST_FILL,
            "expected": {k: sig.answers[0][k].tolist() for k in sig.numeric},
        },
    }


def convert_signature(sig: Signature, folder: Path) -> dict:
    """Convert one signature to its own IR; returns its manifest entry (raises on failure)."""
    import openvino as ov
    import tensorflow as tf

    function, input_name, numeric = sig.function, sig.input_name, sig.numeric

    @tf.function(input_signature=[tf.TensorSpec(sig.spec.shape, tf.uint8, name=input_name)])
    def numeric_only(image):
        result = function(**{input_name: image})
        return [result[k] for k in numeric]

    model = ov.convert_model(numeric_only.get_concrete_function())
    xml = folder / f"{sig.name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return _entry(sig, xml.name)


def share_signature(sig: Signature, host: Signature, host_entry: dict, folder: Path) -> dict:
    """The manifest entry that runs `sig` on `host`'s IR, checked in f32 against TF.

    Raises NotShared when the outputs or the input differ, or the IR's answers do.
    """
    import openvino as ov

    if sig.input_name != host.input_name:
        raise NotShared(f"its input {sig.input_name!r} is not {host.input_name!r}")
    if sig.spec.dtype != host.spec.dtype or sig.spec.shape.as_list() != host.spec.shape.as_list():
        raise NotShared(f"its input is {sig.spec}, {host.name!r}'s is {host.spec}")
    missing = [k for k in sig.numeric if k not in host.numeric]
    if missing:
        raise NotShared(f"{host.name!r} has no output {', '.join(map(repr, missing))}")
    other = [k for k in sig.numeric if sig.output_dtypes[k] != host.output_dtypes[k]]
    if other:
        raise NotShared(f"output {', '.join(map(repr, other))} has another dtype")
    indices = [host.numeric.index(k) for k in sig.numeric]
    core = ov.Core()
    full = core.read_model(str(folder / host_entry["xml"]))
    # The runtime builds the same model (kitchenware.model_server.openvino_runtime).
    model = ov.Model([full.output(i) for i in indices], full.get_parameters(), sig.name)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for image, want in zip(sig.images, sig.answers, strict=True):
        result = compiled({0: image})
        for position, key in enumerate(sig.numeric):
            got = np.asarray(result[compiled.output(position)])
            if got.shape != want[key].shape:
                raise NotShared(f"{key} has shape {got.shape} from the IR, {want[key].shape} in TF")
            worst = float(np.max(np.abs(got.astype(np.float64) - want[key]))) if got.size else 0.0
            if not worst <= SHARE_ATOL:
                raise NotShared(
                    f"{key} from {host.name!r}'s IR differs from its own by {worst:.3g}"
                    f" (tolerance {SHARE_ATOL})"
                )
    return _entry(sig, host_entry["xml"], shares=host.name, ir_outputs=indices)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def write_ir(version_dir: Path) -> dict:
    """Convert the signatures of the SavedModel at `version_dir`; returns the manifest."""
    telemetry_off()
    import tensorflow as tf

    folder = Path(version_dir) / OPENVINO_DIR
    folder.mkdir(exist_ok=True)
    loaded = tf.saved_model.load(str(version_dir))
    signatures, not_converted = {}, {}
    prepared = []
    for name, function in sorted(loaded.signatures.items()):
        if name in INTERNAL_SIGNATURES:
            continue
        try:
            prepared.append(prepare_signature(function, name))
        except Exception as exc:  # TF raises many types; the export goes on
            not_converted[name] = _reason(exc)
            log.warning("signature %r has no OpenVINO IR: %s", name, not_converted[name])
    hosts: list[Signature] = []  # those with an IR of their own, most outputs first
    for sig in sorted(prepared, key=lambda s: (-len(s.numeric), s.name)):
        for host in hosts:
            try:
                signatures[sig.name] = share_signature(sig, host, signatures[host.name], folder)
                log.info("signature %r shares the OpenVINO IR of %r", sig.name, host.name)
                break
            except Exception as exc:  # NotShared, or OpenVINO's RuntimeError
                log.info("signature %r cannot share %r's IR: %s", sig.name, host.name, _reason(exc))
        else:
            try:
                signatures[sig.name] = convert_signature(sig, folder)
                hosts.append(sig)
            except Exception as exc:  # OpenVINO and TF raise many types; the export goes on
                not_converted[sig.name] = _reason(exc)
                log.warning(
                    "signature %r has no OpenVINO IR: %s", sig.name, not_converted[sig.name]
                )
    manifest = {
        "signatures": {k: signatures[k] for k in sorted(signatures)},
        "not_converted": {k: not_converted[k] for k in sorted(not_converted)},
    }
    (folder / OPENVINO_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
