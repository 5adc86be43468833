"""Grad-CAM maps of a build_model classifier: which cells of the backbone's last feature grid
drove each class score.

The model is a chain image -> scaling -> backbone -> head (pool, dense layers,
logits). The backbone runs once and no gradient flows through it; the gradient
of the class logits with respect to the backbone's output is the head's, a few
small matrix products written out with forward ops (so the exported signature
holds no gradient ops and converts to OpenVINO too).
For class k the map is ReLU(sum_c w_kc * A_c), with A the backbone's output
[H, W, C] and w_kc the gradient of logit k with respect to A_c averaged over
the grid (Selvaraju et al., 2017), then divided by its maximum so it lies in
[0, 1] (an all-zero map stays zero: nothing spoke for that class).

The same function serves the exported `explain` signature and the tests, so
what is tested is what is served.
"""

from __future__ import annotations

from kitchenware.core.errors import KitchenwareError
from kitchenware.training.model import AUGMENTATION_LAYER, backbone_of
from kitchenware.training.predict import check_tta

MAP_MODES = ("all", "top")


def split_model(model) -> tuple[list, list]:
    """The model's layers as (up to and including the backbone, the head after it)."""
    chain = [layer for layer in model.layers[1:] if layer.name != AUGMENTATION_LAYER]
    backbone = backbone_of(model)
    cut = next(i for i, layer in enumerate(chain) if layer is backbone) + 1
    if cut == len(chain):
        raise KitchenwareError(f"model {model.name!r} has no head after its backbone")
    return chain[:cut], chain[cut:]


def _run(layers, x):
    for layer in layers:
        x = layer(x, training=False)
    return x


def dense_head(head) -> list | None:
    """The head's Dense layers when it is pooling, Dense (ReLU or linear) and Dropout only
    (what build_model makes), else None."""
    import keras

    if not head or not isinstance(head[0], keras.layers.GlobalAveragePooling2D):
        return None
    dense = []
    for layer in head[1:]:
        if isinstance(layer, keras.layers.Dropout):
            continue  # the identity at inference
        if not isinstance(layer, keras.layers.Dense):
            return None
        if layer.get_config()["activation"] not in ("relu", "linear"):
            return None
        dense.append(layer)
    return dense or None


def head_jacobian(dense: list, pooled):
    """(logits [B, K], d logits / d pooled [B, K, C]) of a pooling + Dense head.

    The backward pass is written out with forward ops (MatMul, a ReLU mask), so
    the exported graph holds no gradient ops: OpenVINO converts it, where the
    tape's ReluGrad and BroadcastGradientArgs have no conversion rule.
    """
    import numpy as np
    import tensorflow as tf

    x, masks = pooled, []
    for layer in dense:
        z = tf.matmul(x, tf.cast(layer.kernel, tf.float32)) + tf.cast(layer.bias, tf.float32)
        relu = layer.get_config()["activation"] == "relu"
        masks.append(tf.cast(z > 0, tf.float32) if relu else None)
        x = tf.nn.relu(z) if relu else z
    classes = int(dense[-1].units)
    jacobian = tf.constant(np.eye(classes, dtype=np.float32)[np.newaxis])  # [1, K, K]
    for layer, mask in zip(reversed(dense), reversed(masks), strict=True):
        if mask is not None:
            jacobian = jacobian * mask[:, tf.newaxis, :]
        jacobian = tf.matmul(jacobian, tf.cast(layer.kernel, tf.float32), transpose_b=True)
    shape = tf.concat([tf.shape(pooled)[:1], [classes], tf.shape(pooled)[1:]], axis=0)
    return x, tf.broadcast_to(jacobian, shape)


def class_maps(model, images, maps: str = "all"):
    """(logits [B, K], raw ReLU'd maps) of uint8 `images`.

    maps="all": one map per class, [B, K, H, W] in logit order; maps="top": the
    top-logit class only, [B, 1, H, W].
    """
    import tensorflow as tf

    if maps not in MAP_MODES:
        raise KitchenwareError(f"maps must be one of {', '.join(MAP_MODES)}, got {maps!r}")
    body, head = split_model(model)
    features = tf.cast(_run(body, images), tf.float32)  # no gradient through the backbone
    dense = dense_head(head)
    if dense is not None:
        # Pooling averages the grid, so the gradient at every cell is the gradient
        # with respect to the pooled vector divided by H*W: the grid average Grad-CAM
        # takes is exactly that.
        logits, jacobian = head_jacobian(dense, tf.reduce_mean(features, axis=[1, 2]))
        cells = tf.cast(tf.shape(features)[1] * tf.shape(features)[2], tf.float32)
        weights = jacobian / cells  # [B, K, C]
        if maps == "top":
            weights = tf.gather(weights, tf.argmax(logits, axis=-1), batch_dims=1)[:, tf.newaxis]
    else:
        logits, weights = _tape_weights(model, head, features, maps)
    cams = tf.nn.relu(tf.einsum("bhwc,bkc->bkhw", features, weights))
    return logits, cams


def _tape_weights(model, head, features, maps: str):
    """Grad-CAM weights [B, K or 1, C] of any other head, with a gradient tape (heads
    built elsewhere; such a graph holds gradient ops OpenVINO may not convert)."""
    import tensorflow as tf

    if maps == "top":
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = tf.cast(_run(head, features), tf.float32)
            score = tf.gather(logits, tf.argmax(logits, axis=-1), batch_dims=1)
        gradients = tape.gradient(score, features)[:, tf.newaxis]  # [B, 1, H, W, C]
    else:
        # One backward pass for all K classes: the head runs on K copies of each
        # image's features, copy k scored by logit k (cheaper than a Jacobian).
        classes = int(model.output_shape[-1])
        copies = tf.repeat(features, classes, axis=0)  # [B*K, H, W, C]
        with tf.GradientTape() as tape:
            tape.watch(copies)
            rows = tf.cast(_run(head, copies), tf.float32)  # [B*K, K]
            picks = tf.tile(tf.eye(classes), [tf.shape(features)[0], 1])
            score = tf.reduce_sum(rows * picks)
        shape = tf.shape(features)
        gradients = tf.reshape(
            tape.gradient(score, copies), tf.concat([[shape[0], classes], shape[1:]], axis=0)
        )
        logits = rows[::classes]
    return logits, tf.reduce_mean(gradients, axis=[2, 3])


def normalise(cams):
    """Each map divided by its own maximum: [0, 1], zero where the map is all zero."""
    import tensorflow as tf

    peak = tf.reduce_max(cams, axis=[-2, -1], keepdims=True)
    return tf.math.divide_no_nan(cams, peak)


def explain(model, images, mode: str = "none", maps: str = "all") -> dict:
    """probabilities [B, K], heatmap [B, H, W] of the top class, and with maps="all"
    heatmaps [B, K, H, W] (class order = the probabilities' order).

    mode="flip" (export --tta flip): the probabilities are the mean over image and
    mirror, exactly as `serving_default` serves them, and each map is the mean of
    the image's map and the mirror's map flipped back, normalised after averaging.
    """
    import tensorflow as tf

    check_tta(mode)
    batch = tf.shape(images)[0]
    views = images if mode == "none" else tf.concat([images, tf.reverse(images, [2])], axis=0)
    logits, cams = class_maps(model, views, "all" if mode != "none" else maps)
    probs = tf.nn.softmax(logits, axis=-1)
    if mode != "none":
        probs = (probs[:batch] + probs[batch:]) / 2.0
        cams = (cams[:batch] + tf.reverse(cams[batch:], axis=[3])) / 2.0
    top = tf.argmax(probs, axis=-1)
    if cams.shape[1] == 1:
        heatmap = cams[:, 0]
    else:
        heatmap = tf.gather(cams, top, batch_dims=1)
    result = {"probabilities": probs, "heatmap": normalise(heatmap)}
    if maps == "all":
        result["heatmaps"] = normalise(cams)
    return result
