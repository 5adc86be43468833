"""Test-time augmentation: the exported signature serves the mean over image and mirror."""

from __future__ import annotations

import numpy as np
import pytest
from support.paths import TINY_SIZE as SIZE

from kitchenware.core.errors import KitchenwareError


@pytest.fixture(scope="module")
def peaky_model():
    """A tiny real model whose logits are large, so an image and its mirror score differently."""
    from kitchenware.training.model import build_model

    model = build_model(size=SIZE, weights="none", inner=0, dropout=0.0, augment=False, seed=5)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    rng = np.random.default_rng(0)
    logits.set_weights([rng.normal(0, 50, kernel.shape).astype("float32"), bias])
    return model


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    images[:, :, : SIZE // 2] //= 3  # a dark left half: the mirror is a different picture
    return images


def _softmax(model, images):
    import tensorflow as tf

    return tf.nn.softmax(model(images, training=False)).numpy()


def test_flip_is_the_mean_over_image_and_mirror(peaky_model, photos):
    from kitchenware.training.predict import probabilities

    plain = _softmax(peaky_model, photos)
    mirrored = _softmax(peaky_model, photos[:, :, ::-1])
    # far above the tolerance below, so that check can tell a mean from either view
    assert np.abs(plain - mirrored).max() > 1e-3
    np.testing.assert_allclose(
        probabilities(peaky_model, photos, "flip").numpy(), (plain + mirrored) / 2, atol=1e-5
    )
    np.testing.assert_allclose(probabilities(peaky_model, photos).numpy(), plain, atol=1e-6)


def test_export_bakes_tta_into_the_same_signature(peaky_model, photos, tmp_path):
    import tensorflow as tf

    from kitchenware.core.contract import OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SIGNATURE
    from kitchenware.export.savedmodel import export_saved_model

    served = {}
    for tta in ("none", "flip"):
        target = export_saved_model(peaky_model, tmp_path / tta, 1, tta=tta)
        fn = tf.saved_model.load(str(target)).signatures[SIGNATURE]
        _, inputs = fn.structured_input_signature
        assert list(inputs) == ["image"] and inputs["image"].dtype == tf.uint8
        assert set(fn.structured_outputs) == {OUTPUT_PROBABILITIES, OUTPUT_CLASSES}
        served[tta] = fn(image=tf.constant(photos))[OUTPUT_PROBABILITIES].numpy()
    mirrored = _softmax(peaky_model, photos[:, :, ::-1])
    np.testing.assert_allclose(served["flip"], (served["none"] + mirrored) / 2, atol=1e-5)


def test_bad_tta_modes_are_refused(peaky_model, photos, tmp_path, capsys):
    from kitchenware.cli import main
    from kitchenware.training.predict import probabilities

    with pytest.raises(KitchenwareError, match="--tta must be one of none, flip"):
        probabilities(peaky_model, photos, "rotate")
    model = tmp_path / "m.keras"
    peaky_model.save(model)
    args = ["export", "--model", str(model), "--out", str(tmp_path / "o"), "--tta", "flip"]
    assert main(args + ["--format", "tflite"]) == 2
    assert "--tta is baked into the SavedModel only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
