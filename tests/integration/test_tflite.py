"""`export --format tflite`: where it goes, its sidecar, parity with the SavedModel, bad values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kitchenware.cli import main
from kitchenware.core.contract import SIGNATURE, versions
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES
from kitchenware.export.cli import parse_formats
from kitchenware.export.tflite import CLASSES_FILE, MODEL_FILE, predict, tflite_base
from kitchenware.training.presets import PRESETS

SIZE = PRESETS["tiny"]["size"]  # the tiny preset: what mini_run trains


@pytest.fixture(scope="module")
def tflite_export(tiny_run, tmp_path_factory):
    """The model trained on real photos, exported through the CLI with --format tflite."""
    base = tmp_path_factory.mktemp("export-tflite") / "kitchenware"
    command = ["export", "--model", str(tiny_run.best_model), "--out", str(base)]
    assert main([*command, "--format", "tflite"]) == 0
    return base


@pytest.fixture(scope="module")
def photos(mini_data):
    from kitchenware.core.images import load_image

    paths = sorted((mini_data / "images").glob("*.jpg"))[:12]
    return np.stack([load_image(p, size=SIZE) for p in paths])


def test_formats_repeat_or_comma_and_savedmodel_always():
    assert parse_formats([]) == {"savedmodel"}
    assert parse_formats(["tflite"]) == {"savedmodel", "tflite"}
    assert parse_formats(["savedmodel, TFLite", "tflite"]) == {"savedmodel", "tflite"}
    with pytest.raises(KitchenwareError, match="unknown --format 'onnx'"):
        parse_formats(["tflite,onnx"])


def test_bad_format_fails_before_anything_is_loaded_or_written(tmp_path, capsys):
    base = tmp_path / "kitchenware"
    assert main(["export", "--model", "no.keras", "--out", str(base), "--format", "tf-lite"]) == 2
    err = capsys.readouterr().err
    assert "unknown --format 'tf-lite'; choose from savedmodel, tflite" in err
    assert "model file not found" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_tflite_sits_beside_the_base_path_with_its_sidecar(tflite_export):
    tflite_dir = tflite_base(tflite_export)
    assert tflite_dir == tflite_export.parent.resolve() / "kitchenware-tflite"
    assert versions(tflite_export) == [1]  # what TF Serving / our model server see
    assert sorted(p.name for p in tflite_export.iterdir()) == ["1"]
    assert sorted(p.name for p in tflite_dir.iterdir()) == ["1"]
    assert sorted(p.name for p in (tflite_dir / "1").iterdir()) == [CLASSES_FILE, MODEL_FILE]
    meta = json.loads((tflite_dir / "1" / CLASSES_FILE).read_text())
    assert meta == {
        "signature": SIGNATURE,
        "input": {"name": "image", "dtype": "uint8", "shape": [-1, SIZE, SIZE, 3]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, 6]},
        "classes": list(CLASSES),
    }


@pytest.mark.slow
def test_tflite_probabilities_match_the_savedmodel_on_real_photos(tflite_export, photos):
    import tensorflow as tf

    served = tf.saved_model.load(str(tflite_export / "1")).signatures[SIGNATURE](
        image=tf.constant(photos)
    )
    expected = served["probabilities"].numpy()
    classes, probabilities = predict(tflite_base(tflite_export) / "1", photos)
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(photos), 6)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert classes == served["classes"].numpy()[0].astype(str).tolist()
    # One image at a time too (the interpreter resizes its input per call).
    _, single = predict(tflite_base(tflite_export) / "1", photos[:1])
    np.testing.assert_allclose(single, expected[:1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_taken_tflite_version_fails_before_any_write(tiny_run, tflite_export, capsys):
    (tflite_base(tflite_export) / "2").mkdir()
    try:
        command = ["export", "--model", str(tiny_run.best_model), "--out", str(tflite_export)]
        assert main([*command, "--version", "2", "--format", "tflite"]) == 2
        assert "kitchenware-tflite/2 already exists" in capsys.readouterr().err
        assert versions(tflite_export) == [1]
    finally:
        (tflite_base(tflite_export) / "2").rmdir()
