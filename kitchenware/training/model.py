"""The classifier: raw uint8 pixels in, six logits out.

Everything that depends on the backbone (scaling to its input range) and the
augmentation live inside the model as Keras layers, so no caller ever needs to
know how pixels are scaled, and augmentation runs only while training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kitchenware.core.contract import DEFAULT_IMAGE_SIZE
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import NUM_CLASSES


@dataclass(frozen=True)
class Backbone:
    name: str
    app: str  # keras.applications constructor name
    min_size: int
    # Rescaling(scale, offset) from 0..255 into the range the backbone was trained on.
    scale: float
    offset: float


BACKBONES: dict[str, Backbone] = {
    "xception": Backbone("xception", "Xception", 71, 1 / 127.5, -1.0),
    "mobilenet_v2": Backbone("mobilenet_v2", "MobileNetV2", 32, 1 / 127.5, -1.0),
    # EfficientNet rescales internally and expects 0..255.
    "efficientnet_b0": Backbone("efficientnet_b0", "EfficientNetB0", 32, 1.0, 0.0),
}

# BatchNormalization momentum used when a backbone is trained from scratch
# (--weights none): with Keras' default 0.99 the moving statistics lag so far
# behind on small data that inference-mode accuracy stays at chance.
SCRATCH_BN_MOMENTUM = 0.9


# Layer names of the chain build_model makes: image -> [augmentation] -> scaling
# -> backbone -> pool -> [inner, dropout] -> logits.
AUGMENTATION_LAYER = "augmentation"
SCALING_LAYER = "backbone_scaling"
POOL_LAYER = "pool"


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise KitchenwareError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}"
        ) from None


def check_size(backbone: str, size: int) -> None:
    spec = get_backbone(backbone)
    if size < spec.min_size:
        raise KitchenwareError(
            f"--size {size} is below {spec.name}'s minimum input size of {spec.min_size} px"
        )


def check_weights(weights: str) -> None:
    if weights in ("imagenet", "none"):
        return
    path = Path(weights)
    if not path.is_file():
        raise KitchenwareError(
            f"--weights {weights!r}: expected 'imagenet', 'none' or an existing weights file"
        )


def augmentation(seed: int | None = None):
    """Random flip, rotation, zoom, translation (one fused warp) and contrast.

    Active only in training; `inference_model` drops the whole block.
    """
    import keras
    from keras import layers

    from kitchenware.training.augment import RandomAffine

    return keras.Sequential(
        [
            RandomAffine(rotation=0.1, zoom=0.15, translation=0.1, seed=seed, name="affine"),
            layers.RandomContrast(0.2, seed=seed),
        ],
        name=AUGMENTATION_LAYER,
    )


def build_backbone(backbone: str, size: int, weights: str):
    """The headless backbone; raises KitchenwareError if a weights file does not fit."""
    import keras

    spec = get_backbone(backbone)
    check_size(backbone, size)
    check_weights(weights)
    constructor = getattr(keras.applications, spec.app)
    try:
        base = constructor(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_shape=(size, size, 3),
        )
    except (ValueError, OSError) as exc:
        raise KitchenwareError(
            f"--weights {weights!r} does not fit the {spec.name} backbone at {size} px: {exc}"
        ) from exc
    if weights == "none":
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    return base


def build_model(
    backbone: str = "xception",
    size: int = DEFAULT_IMAGE_SIZE,
    weights: str = "imagenet",
    inner: int = 100,
    dropout: float = 0.2,
    augment: bool = True,
    seed: int | None = None,
):
    """uint8 image [-1, size, size, 3] -> logits [-1, NUM_CLASSES].

    With pretrained weights the backbone is frozen and always runs in inference
    mode (`training=False`), so its BatchNorm statistics stay as learned. With
    `weights="none"` there is nothing worth freezing: the whole network trains.
    """
    import keras
    from keras import layers

    spec = get_backbone(backbone)
    base = build_backbone(backbone, size, weights)
    pretrained = weights != "none"
    base.trainable = not pretrained

    inputs = keras.Input(shape=(size, size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    if augment:
        x = augmentation(seed)(x)
    x = layers.Rescaling(spec.scale, offset=spec.offset, name=SCALING_LAYER)(x)
    x = base(x, training=False) if pretrained else base(x)
    x = layers.GlobalAveragePooling2D(name=POOL_LAYER)(x)
    if inner > 0:
        x = layers.Dense(inner, activation="relu", name="inner")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
    elif dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"kitchenware_{spec.name}")


def backbone_of(model):
    """The nested backbone of a model from build_model: the layer right after the scaling."""
    names = [layer.name for layer in model.layers]
    if SCALING_LAYER not in names:
        raise KitchenwareError(f"model {model.name!r} has no {SCALING_LAYER!r} layer")
    return model.layers[names.index(SCALING_LAYER) + 1]


def image_size_of(model) -> int:
    """The square input size a built or loaded model expects."""
    return int(model.input_shape[1])


def inference_model(model):
    """The same layers and weights without the augmentation block or optimizer.

    Augmentation is a no-op at inference anyway, but its random-seed state is
    not exportable to a SavedModel; our models are a simple chain of layers,
    so rebuilding the chain without that block is exact. The rebuilt model
    carries no optimizer, so an export does not store Adam's slot variables
    (which would triple its size).
    """
    import keras

    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.input.dtype, name="image")
    x = inputs
    for layer in model.layers[1:]:
        if layer.name != AUGMENTATION_LAYER:
            x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def load_keras_model(path: str | os.PathLike):
    """Load a trained .keras file (our custom augmentation layer registered first)."""
    import keras

    import kitchenware.training.augment  # noqa: F401  (registers RandomAffine for deserialisation)

    path = Path(path)
    if not path.is_file():
        raise KitchenwareError(f"model file not found: {path}")
    try:
        return keras.models.load_model(path)
    except Exception as exc:  # Keras raises many types for a bad file
        raise KitchenwareError(f"cannot load Keras model {path}: {exc}") from exc
