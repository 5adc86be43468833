"""Warm-up of a loaded version follows TF Serving's rules (kitchenware.model_server.warmup).

Each case loads a real exported SavedModel with its warm-up file replaced, in this
process (LoadedVersion), once per backend, and one case runs the model server to see a missing file
in its log and stats file.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from support.paths import TINY_SIZE

from devtools.stack import ModelServer
from kitchenware.core.contract import SIGNATURE, WARMUP_FILE
from kitchenware.model_server.servables import LoadedVersion, LoadError
from kitchenware.model_server.warmup import MAX_WARMUP_RECORDS

pytestmark = pytest.mark.slow


@pytest.fixture
def version_dir(exported_model, tmp_path):
    """A private copy of the exported version 1, whose warm-up file a test may replace."""
    target = tmp_path / "kitchenware" / "1"
    shutil.copytree(exported_model / "1", target)
    return target


def predict_log(signature: str = SIGNATURE, input_name: str = "image"):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.model_spec.name = "kitchenware"
    request.model_spec.signature_name = signature
    pixels = np.full((1, TINY_SIZE, TINY_SIZE, 3), 100, dtype=np.uint8)
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(pixels))
    return entry


def write_records(version_dir, entries) -> None:
    """Replace the warm-up file with `entries` (PredictionLog messages or raw bytes)."""
    import tensorflow as tf

    path = version_dir / WARMUP_FILE
    with tf.io.TFRecordWriter(str(path)) as writer:
        for entry in entries:
            writer.write(entry if isinstance(entry, bytes) else entry.SerializeToString())


def load(version_dir, backend: str, iterations: int = 1) -> LoadedVersion:
    model = LoadedVersion(version_dir, 1, warmup_iterations=iterations, backend=backend)
    model.close()
    return model


def test_the_exported_warmup_record_is_replayed_once_per_iteration(backend, version_dir):
    assert load(version_dir, backend).warmup.as_dict() == {
        "path": str(version_dir / WARMUP_FILE),
        "file_found": True,
        "records": 2,  # serving_default and explain
        "replays": 2,
    }
    assert load(version_dir, backend, iterations=3).warmup.replays == 6


def test_no_warmup_file_loads_runs_nothing_and_says_so(backend, version_dir, caplog):
    (version_dir / WARMUP_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="kitchenware.model_server"):
        report = load(version_dir, backend).warmup
    assert (report.file_found, report.records, report.replays) == (False, 0, 0)
    assert f"No warmup data file found at {version_dir / WARMUP_FILE}" in caplog.text


def test_at_most_1000_records(backend, version_dir):
    from tensorflow_serving.apis import prediction_log_pb2

    empty = prediction_log_pb2.PredictionLog()  # no log type: counted, not run
    write_records(version_dir, [empty] * (MAX_WARMUP_RECORDS - 1) + [predict_log()])
    assert load(version_dir, backend).warmup.records == MAX_WARMUP_RECORDS

    write_records(version_dir, [empty] * (MAX_WARMUP_RECORDS + 1))
    with pytest.raises(LoadError, match=r"Number of warmup records exceeds the maximum \(1000\)"):
        load(version_dir, backend)


def classify_log():
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    entry.classify_log.request.model_spec.name = "kitchenware"
    entry.classify_log.request.input.example_list.examples.add()
    return entry


def regress_log():
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    entry.regress_log.request.model_spec.name = "kitchenware"
    return entry


def multi_inference_log(method: str):
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    task = entry.multi_inference_log.request.tasks.add()
    task.model_spec.name = "kitchenware"
    task.method_name = method
    return entry


def session_run_log():
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    entry.session_run_log.request.feed.add()
    return entry


@pytest.mark.parametrize(
    "make, message",
    [
        # What TF Serving's Classify / Regress / MultiInference answer for our signature
        # (one "image" input, two outputs): the load fails.
        (classify_log, "No classification inputs found in SignatureDef"),
        (regress_log, "Expected one output Tensor."),
        (
            lambda: multi_inference_log("tensorflow/serving/classify"),
            "No classification inputs found",
        ),
        (
            lambda: multi_inference_log("tensorflow/serving/predict"),
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
        (session_run_log, "Unsupported log_type for warmup: 5"),
        (lambda: predict_log(signature="nope"), 'Serving signature key "nope" not found.'),
        (lambda: predict_log(input_name="pixels"), "warm-up failed"),
    ],
    ids=["classify", "regress", "multi-classify", "multi-predict", "session-run",
         "unknown-signature", "wrong-input"],
)  # fmt: skip
def test_records_the_signature_cannot_run_fail_the_load(backend, version_dir, make, message):
    write_records(version_dir, [predict_log(), make()])
    with pytest.raises(LoadError) as info:
        load(version_dir, backend)
    assert message in str(info.value)


def test_a_file_that_is_not_tfrecord_or_not_prediction_logs_fails(backend, version_dir):
    (version_dir / WARMUP_FILE).write_bytes(b"these bytes are not a TFRecord file at all")
    with pytest.raises(LoadError, match="Please verify your warmup data is in TFRecord format"):
        load(version_dir, backend)
    write_records(version_dir, [predict_log(), b"\xff\xff\xff\xff"])
    with pytest.raises(LoadError, match="Failed to parse warmup record 2"):
        load(version_dir, backend)


def test_the_server_reports_a_missing_warmup_file(backend, version_dir, tmp_path):
    (version_dir / WARMUP_FILE).unlink()
    with ModelServer(version_dir.parent, tmp_path, batching=False, backend=backend) as server:
        stats = server.wait_stats(lambda s: s.get("serving_versions") == [1])
        assert stats["warmup"]["1"]["file_found"] is False
        assert "No warmup data file found at" in server.log()
