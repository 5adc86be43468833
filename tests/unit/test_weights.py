"""`kitchenware weights extract`: the backbone out of a saved model, checked; bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from kitchenware.cli import main
from kitchenware.core.errors import KitchenwareError
from kitchenware.training.weights import extract

SIZE = 71


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A real Xception-based classifier (random weights), saved as .keras."""
    from kitchenware.training.model import build_model

    model = build_model(size=SIZE, weights="none", inner=8, augment=True, seed=3)
    path = tmp_path_factory.mktemp("saved") / "colleague.keras"
    model.save(path)
    return path, model


def test_extract_gives_the_embedded_backbone_weights(saved_model, tmp_path, capsys):
    from kitchenware.training.model import build_backbone

    path, model = saved_model
    out = tmp_path / "x.weights.h5"
    assert main(["weights", "extract", str(path), "--backbone", "xception", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    embedded = model.get_layer("xception")
    # the file is what `train --weights FILE` loads, at any input size
    loaded = build_backbone("xception", 96, str(out))
    for a, b in zip(loaded.get_weights(), embedded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_extract_refuses_a_model_without_that_backbone(saved_model, tmp_path):
    path, _ = saved_model
    with pytest.raises(KitchenwareError, match="holds no mobilenet_v2 backbone.*xception"):
        extract(path, "mobilenet_v2", tmp_path / "m.weights.h5")
    assert not (tmp_path / "m.weights.h5").exists()


def test_extract_refuses_bad_paths(saved_model, tmp_path, capsys):
    path, _ = saved_model
    with pytest.raises(KitchenwareError, match=r"must end with \.weights\.h5"):
        extract(path, "xception", tmp_path / "x.h5")
    with pytest.raises(KitchenwareError, match="model file not found"):
        extract(tmp_path / "nope.keras", "xception", tmp_path / "x.weights.h5")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(KitchenwareError, match="cannot load Keras model"):
        extract(junk, "xception", tmp_path / "x.weights.h5")
    # through the CLI: a clear one-line error, exit 2
    args = ["weights", "extract", str(junk), "--out", str(tmp_path / "x.weights.h5")]
    assert main(args) == 2
    assert "kitchenware weights: error: cannot load Keras model" in capsys.readouterr().err


def test_extract_refuses_weights_that_do_not_fit(tmp_path):
    """Same layer names, other shapes (a half-width MobileNetV2): a clear error, no file."""
    import keras

    narrow = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(96, 96, 3), alpha=0.5
    )
    inputs = keras.Input((96, 96, 3))
    outputs = keras.layers.Dense(6)(keras.layers.GlobalAveragePooling2D()(narrow(inputs)))
    path = tmp_path / "narrow.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(KitchenwareError, match="does not fit a mobilenet_v2 backbone"):
        extract(path, "mobilenet_v2", tmp_path / "m.weights.h5")
    assert not (tmp_path / "m.weights.h5").exists()
