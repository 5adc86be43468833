"""Grad-CAM maps of a build_model classifier: which cells of the backbone's last feature grid
drove each class score.

The model is a chain image -> scaling -> backbone -> head (pool, dense layers,
logits). The backbone runs once, outside any gradient tape; only the head runs
under the tape, so the gradient of the class logits with respect to the
backbone's output costs a pass through a few small layers, not the backbone.
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


def class_maps(model, images, maps: str = "all"):
    """(logits [B, K], raw ReLU'd maps) of uint8 `images`.

    maps="all": one map per class, [B, K, H, W] in logit order; maps="top": the
    top-logit class only, [B, 1, H, W] (one gradient instead of K).
    """
    import tensorflow as tf

    if maps not in MAP_MODES:
        raise KitchenwareError(f"maps must be one of {', '.join(MAP_MODES)}, got {maps!r}")
    body, head = split_model(model)
    features = tf.cast(_run(body, images), tf.float32)  # no tape: no gradient through here
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
    weights = tf.reduce_mean(gradients, axis=[2, 3])  # [B, K, C]
    cams = tf.nn.relu(tf.einsum("bhwc,bkc->bkhw", features, weights))
    return logits, cams


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
