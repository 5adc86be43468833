"""Warm-up of a loaded version, with TF Serving's rules for assets.extra/tf_serving_warmup_requests.

The rules, as tensorflow/serving implements them (servables/tensorflow/
saved_model_warmup_util.cc and saved_model_warmup.cc):
- no file: log "No warmup data file found at PATH" and load anyway (nothing runs);
- the file is TFRecord of PredictionLog; a record that does not parse, or a file
  that is not TFRecord, fails the load;
- each record runs `num_request_iterations` times (ModelWarmupOptions, default 1);
- more than kMaxNumRecords (1000) records fails the load (checked after a record ran);
- predict_log runs Predict; classify/regress/multi_inference logs run Classify /
  Regress / MultiInference against the signature, which fails on a predict-only
  signature; session_run_log is Unimplemented; a record with none of these is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kitchenware.core.contract import SIGNATURE, WARMUP_FILE
from kitchenware.model_server.tfrecord import CorruptRecord, read_records
from kitchenware.serving import proto

log = logging.getLogger("kitchenware.model_server")

MAX_WARMUP_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords
# The input key TF Serving's Classify and Regress look for (kClassifyInputs, kRegressInputs).
EXAMPLES_INPUT = "inputs"
METHODS = {
    "tensorflow/serving/classify": "classification",
    "tensorflow/serving/regress": "regression",
}


class WarmupError(Exception):
    """The warm-up file makes the load fail (the message is TF Serving's where it has one)."""


@dataclass(frozen=True)
class WarmupReport:
    """What the warm-up did, for the log and the stats file."""

    path: str
    file_found: bool
    records: int = 0
    replays: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


RunSignature = Callable[[str, dict[str, np.ndarray]], object]


def warm_up(
    version_dir: Path,
    signature_defs: Mapping,
    run: RunSignature,
    iterations: int = 1,
) -> WarmupReport:
    """Replay the version's warm-up records through `run(signature_name, inputs)`.

    `signature_defs` maps each signature name to anything with `inputs` and
    `outputs` mappings keyed by alias (a SignatureDef, or a loaded Signature).
    """
    if iterations < 1:
        raise WarmupError(f"warm-up iterations must be >= 1, got {iterations}")
    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        # TF Serving logs this at INFO; a warning here, so a missing file is seen in tests.
        log.warning("No warmup data file found at %s", path)
        return WarmupReport(str(path), file_found=False)
    records = replays = 0
    for record in _records(path):
        entry = _parse(record, records + 1, path)
        for _ in range(iterations):
            _replay(entry, signature_defs, run)
            replays += 1
        records += 1
        if records > MAX_WARMUP_RECORDS:
            raise WarmupError(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
            )
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d",
        path,
        records,
    )
    return WarmupReport(str(path), file_found=True, records=records, replays=replays)


def _records(path: Path):
    """The file's records, read without TensorFlow (the OpenVINO server has none)."""
    try:
        yield from read_records(path)
    except CorruptRecord as exc:
        raise WarmupError(f"{exc}. Please verify your warmup data is in TFRecord format.") from None


def _parse(record: bytes, number: int, path: Path):
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    try:
        return prediction_log_pb2.PredictionLog.FromString(record)
    except DecodeError:
        raise WarmupError(
            f"Failed to parse warmup record {number} ({len(record)} bytes) from {path}"
        ) from None


def _replay(entry, signature_defs: Mapping, run: RunSignature) -> None:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        name = request.model_spec.signature_name or SIGNATURE
        if name not in signature_defs:
            raise WarmupError(f'Serving signature key "{name}" not found.')
        run(name, {k: proto.to_numpy(v) for k, v in request.inputs.items()})
    elif kind in ("classify_log", "regress_log"):
        what = "classification" if kind == "classify_log" else "regression"
        spec = getattr(entry, kind).request.model_spec
        _check_examples_signature(spec.signature_name or SIGNATURE, what, signature_defs)
        raise _no_api(kind)
    elif kind == "multi_inference_log":
        for task in entry.multi_inference_log.request.tasks:
            name = task.model_spec.signature_name or SIGNATURE
            if name not in signature_defs:
                raise WarmupError(f"Requested signature not found in model graph: {name}")
            if task.method_name not in METHODS:
                raise WarmupError(f"Unsupported signature method_name: {task.method_name}")
            _check_examples_signature(name, METHODS[task.method_name], signature_defs)
        raise _no_api(kind)
    elif kind == "session_run_log":
        number = entry.DESCRIPTOR.fields_by_name[kind].number
        raise WarmupError(f"Unsupported log_type for warmup: {number}")
    # log_metadata only, or no log at all: TF Serving skips the record.


def _check_examples_signature(name: str, what: str, signature_defs: Mapping) -> None:
    """Where TF Serving's Classify/Regress refuse the signature, in their order and words
    (PreProcessClassification in classifier.cc, PreProcessRegression in regressor.cc,
    with --enable_signature_method_name_check off, its default)."""
    if name not in signature_defs:
        raise WarmupError(f"No signature was found with the name: {name}")
    signature = signature_defs[name]
    if len(signature.inputs) != 1:
        raise WarmupError("Expected one input Tensor.")
    outputs = len(signature.outputs)
    if what == "classification" and outputs not in (1, 2):
        raise WarmupError(f"Expected one or two output Tensors, found {outputs}")
    if what == "regression" and outputs != 1:
        raise WarmupError("Expected one output Tensor.")
    if EXAMPLES_INPUT not in signature.inputs:
        raise WarmupError(
            f"No {what} inputs found in SignatureDef {name!r} (inputs {sorted(signature.inputs)})"
        )
    wanted = {"classification": {"classes", "scores"}, "regression": {"outputs"}}[what]
    if not wanted & set(signature.outputs):
        raise WarmupError(f"No {what} outputs {sorted(wanted)} in SignatureDef {name!r}")


def _no_api(kind: str) -> WarmupError:
    """A record TF Serving could run on a tf.Example signature; this server serves Predict only."""
    return WarmupError(
        f"warm-up record type {kind} needs the Classify/Regress APIs, which this server lacks"
    )
