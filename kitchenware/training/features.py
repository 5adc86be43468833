"""Stage 1 on cached backbone features: the frozen backbone runs once per image, not per epoch.

With a frozen backbone and no augmentation, every epoch would push the same
pixels through the same frozen network. Pooled features are computed once
(optionally kept on disk for the next run, e.g. the next tuning trial) and
only the head trains on them. The head's layers are the full model's own
layer objects, so training them trains the full model, which is what gets
checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from kitchenware.training.model import POOL_LAYER


def feature_extractor(model):
    """uint8 image -> pooled backbone features, sharing `model`'s layers (inference mode)."""
    import keras

    return keras.Model(model.inputs, model.get_layer(POOL_LAYER).output, name="features")


def head_model(model):
    """pooled features -> logits: the layers of `model` after the pooling layer."""
    import keras

    pool = model.get_layer(POOL_LAYER)
    after = model.layers[model.layers.index(pool) + 1 :]
    inputs = keras.Input(shape=pool.output.shape[1:], name="features")
    x = inputs
    for layer in after:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def cache_key(split, size: int, backbone: str, weights: str) -> str:
    """Changes whenever the images, the size, the backbone or the weights file change."""
    parts = {"size": size, "backbone": backbone, "weights": weights, "files": []}
    if Path(weights).is_file():
        stat = Path(weights).stat()
        parts["weights_file"] = [str(Path(weights).resolve()), stat.st_size, stat.st_mtime_ns]
    for path in split.paths:
        stat = os.stat(path)
        parts["files"].append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def split_features(
    model, split, size: int, batch_size: int, backbone: str, weights: str, cache_dir=None
) -> np.ndarray:
    """Pooled features of every image of `split` in order; read from / written to cache_dir."""
    from kitchenware.training.data import make_dataset

    target = None
    if cache_dir:
        key = cache_key(split, size, backbone, weights)
        target = Path(cache_dir) / f"{split.name}-{size}-{key}.npy"
        if target.is_file():
            return np.load(target)
    extractor = feature_extractor(model)
    ds = make_dataset(split, size, batch_size, shuffle=False, cache=False)
    features = np.concatenate([extractor(images, training=False).numpy() for images, _ in ds])
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(staged, features)
        os.replace(staged, target)
    return features
