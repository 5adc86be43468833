"""SavedModel export: the exact serving contract, parity with Keras, warm-up, versions, inspect."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kitchenware.cli import main
from kitchenware.core.contract import (
    EXPLAIN_SIGNATURE,
    OPENVINO_DIR,
    OPENVINO_MANIFEST,
    SIGNATURE,
    WARMUP_FILE,
    versions,
)
from kitchenware.core.labels import CLASSES
from kitchenware.export.layout import next_version
from kitchenware.export.savedmodel import export_saved_model
from kitchenware.training.model import load_keras_model
from kitchenware.training.presets import PRESETS

SIZE = PRESETS["tiny"]["size"]  # the tiny preset: what mini_run trains


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    """The tiny trained model, exported through the CLI to BASE/1."""
    base = tmp_path_factory.mktemp("export") / "kitchenware"
    assert main(["export", "--model", str(tiny_run.best_model), "--out", str(base)]) == 0
    return base


@pytest.fixture(scope="module")
def loaded(tiny_export):
    import tensorflow as tf

    return tf.saved_model.load(str(tiny_export / "1"))


@pytest.fixture(scope="module")
def real_photos(mini_data):
    from kitchenware.core.images import load_image

    ids = sorted(p.stem for p in (mini_data / "images").glob("*.jpg"))[:12]
    return np.stack([load_image(mini_data / "images" / f"{i}.jpg", size=SIZE) for i in ids])


@pytest.mark.slow
def test_signature_is_exactly_the_contract(loaded):
    import tensorflow as tf

    assert sorted(loaded.signatures) == [EXPLAIN_SIGNATURE, SIGNATURE]
    fn = loaded.signatures[SIGNATURE]
    args, kwargs = fn.structured_input_signature
    assert args == () and list(kwargs) == ["image"]
    assert kwargs["image"].dtype == tf.uint8 and kwargs["image"].shape.as_list() == [
        None,
        SIZE,
        SIZE,
        3,
    ]
    outputs = fn.structured_outputs
    assert sorted(outputs) == ["classes", "probabilities"]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, 6]
    assert outputs["classes"].dtype == tf.string and outputs["classes"].shape.as_list() == [None, 6]


@pytest.mark.slow
def test_savedmodel_probabilities_match_keras_logits_on_real_photos(tiny_run, loaded, real_photos):
    import tensorflow as tf

    keras_model = load_keras_model(tiny_run.best_model)
    logits = np.asarray(keras_model(real_photos, training=False), dtype=np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    served = loaded.signatures[SIGNATURE](image=tf.constant(real_photos))
    probabilities = served["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == logits.argmax(axis=1)).all()
    names = served["classes"].numpy().astype(str)
    assert names.shape == (len(real_photos), 6) and (names == np.asarray(CLASSES)).all()


def assert_warmup_matches_signature(version_dir):
    """The version's warm-up file holds one predict record per signature, each accepted by it."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(str(version_dir / WARMUP_FILE)))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log"]
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == [SIGNATURE, EXPLAIN_SIGNATURE]
    signatures = tf.saved_model.load(str(version_dir)).signatures
    for request in requests:
        function = signatures[request.model_spec.signature_name]
        specs = function.structured_input_signature[1]
        inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
        assert sorted(inputs) == sorted(specs)
        for name, value in inputs.items():
            assert value.dtype == specs[name].dtype.as_numpy_dtype
            assert specs[name].shape.is_compatible_with(value.shape) and value.shape[0] >= 1
        result = function(**{k: tf.constant(v) for k, v in inputs.items()})
        assert result["probabilities"].shape == (len(next(iter(inputs.values()))), len(CLASSES))


@pytest.mark.slow
def test_warmup_record_parses_and_runs(tiny_export):
    assert_warmup_matches_signature(tiny_export / "1")


@pytest.mark.slow
def test_every_export_writes_a_warmup_record_its_signature_accepts(tiny_run, tmp_path):
    """With test-time augmentation too: the served function changes, the record still fits."""
    model = load_keras_model(tiny_run.best_model)
    version = export_saved_model(model, tmp_path / "m", tta="flip")
    assert_warmup_matches_signature(version)
    # The IR is of the TTA function too: the OpenVINO backend answers like TensorFlow.
    import tensorflow as tf

    from kitchenware.model_server.openvino_runtime import SELF_TEST_ATOL
    from kitchenware.model_server.servables import LoadedVersion

    pixels = np.random.default_rng(3).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    expected = (
        tf.saved_model.load(str(version))
        .signatures["serving_default"](image=tf.constant(pixels))["probabilities"]
        .numpy()
    )
    served = LoadedVersion(version, 1, backend="openvino")
    try:
        got = served.signatures["serving_default"].run({"image": pixels})["probabilities"]
    finally:
        served.close()
    np.testing.assert_allclose(got, expected, atol=SELF_TEST_ATOL)
    # serving_default runs on explain's IR only where the export found explain's
    # probabilities equal to its own (TTA's mean over the mirror included); else it has
    # its own IR (the fallback with a real mismatch: test_openvino_backend.py).
    folder = version / OPENVINO_DIR
    entry = json.loads((folder / OPENVINO_MANIFEST).read_text())["signatures"]["serving_default"]
    own_ir = (folder / "serving_default.bin").is_file()
    assert own_ir == ("shares" not in entry), entry
    assert entry["xml"] == ("serving_default.xml" if own_ir else "explain.xml")


@pytest.mark.slow
def test_versions_increment_and_never_overwrite(tiny_run, tmp_path, capsys):

    base = tmp_path / "models"
    model = load_keras_model(tiny_run.best_model)
    assert next_version(base) == 1
    export_saved_model(model, base)
    export_saved_model(model, base)
    assert versions(base) == [1, 2] and next_version(base) == 3
    assert (
        main(["export", "--model", str(tiny_run.best_model), "--out", str(base), "--version", "2"])
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "nope.keras"), "--out", str(base)]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert versions(base) == [1, 2] and not [p for p in base.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_inspect_shows_versions_and_signature(tiny_export, capsys):
    assert main(["inspect", str(tiny_export)]) == 0
    text = capsys.readouterr().out
    assert "version 1:" in text and "signature_def['serving_default']" in text
    assert f"image: DT_UINT8 shape (-1, {SIZE}, {SIZE}, 3)" in text
    assert (
        "probabilities: DT_FLOAT shape (-1, 6)" in text
        and "classes: DT_STRING shape (-1, 6)" in text
    )
    assert "signature_def['explain']" in text
    assert "heatmap: DT_FLOAT shape (-1, 3, 3)" in text  # MobileNetV2's grid at 71 px
    assert "heatmaps: DT_FLOAT shape (-1, 6, 3, 3)" in text
    assert main(["inspect", str(tiny_export), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in found] == ["1"] and found[0]["warmup"] is True
    assert sorted(found[0]["signatures"]) == ["explain", "serving_default"]
    assert "OpenVINO IR: explain, serving_default" in text
    assert (
        "'serving_default' shares the IR of 'explain' (explain.xml, output probabilities)" in text
    )
    assert found[0]["openvino"] == {
        "signatures": ["explain", "serving_default"],
        "not_converted": {},
        "shares": {
            "serving_default": {
                "signature": "explain",
                "xml": "explain.xml",
                "outputs": ["probabilities"],
            }
        },
    }


def test_inspect_rejects_a_folder_without_models(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "holds no SavedModel versions" in capsys.readouterr().err
