"""Class probabilities of a Keras model: the one softmax evaluate, export and TFLite share.

Test-time augmentation averages the class probabilities over simple views of an image.

The same function runs in `evaluate --tta` and inside the exported serving
signature (`export --tta`), so a served model and its evaluation agree and the
gateway needs no change: the signature is still uint8 image -> probabilities.
"""

from __future__ import annotations

from kitchenware.core.errors import KitchenwareError

TTA_MODES = ("none", "flip")


def check_tta(mode: str) -> str:
    if mode not in TTA_MODES:
        raise KitchenwareError(f"--tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def probabilities(model, images, mode: str = "none"):
    """Softmax of `model` on uint8 `images` [B, H, W, 3]; with 'flip', averaged with the mirror.

    The image and its mirror go through the model as one batch of 2B, which
    costs less than two calls on a CPU.
    """
    import tensorflow as tf

    check_tta(mode)
    if mode == "none":
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1)
    batch = tf.shape(images)[0]
    views = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)
    both = tf.nn.softmax(tf.cast(model(views, training=False), tf.float32), axis=-1)
    return (both[:batch] + both[batch:]) / 2.0
