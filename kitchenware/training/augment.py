"""Training-time augmentation as Keras layers (they live inside the model).

Flip, rotation, zoom and translation are folded into ONE affine warp per image.
Keras' separate RandomFlip/RandomRotation/RandomZoom/RandomTranslation layers
resample the whole batch once each; at 299 px on a CPU those three extra
bilinear passes cost more than decoding the JPEGs (docu/BENCHMARKS.md).
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kitchenware")
class RandomAffine(keras.layers.Layer):
    """Random horizontal flip, rotation, zoom and translation in a single warp.

    rotation: max angle as a fraction of a full turn (0.1 = +/-36 degrees);
    zoom: max relative scale change (0.15 = 85%..115%);
    translation: max shift as a fraction of the image side.
    Identity outside training.
    """

    def __init__(
        self,
        rotation=0.1,
        zoom=0.15,
        translation=0.1,
        flip=True,
        fill_mode="reflect",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rotation = float(rotation)
        self.zoom = float(zoom)
        self.translation = float(translation)
        self.flip = bool(flip)
        self.fill_mode = fill_mode
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, low, high):
        return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

    def call(self, images, training=None):
        if not training:
            return images
        images = ops.cast(images, self.compute_dtype)
        shape = ops.shape(images)
        batch = shape[0]
        height = ops.cast(shape[1], "float32")
        width = ops.cast(shape[2], "float32")

        angle = self._uniform(batch, -self.rotation, self.rotation) * (2 * math.pi)
        scale = self._uniform(batch, 1.0 - self.zoom, 1.0 + self.zoom)
        shift_x = self._uniform(batch, -self.translation, self.translation) * width
        shift_y = self._uniform(batch, -self.translation, self.translation) * height
        if self.flip:
            mirror = ops.where(self._uniform(batch, 0.0, 1.0) < 0.5, -1.0, 1.0)
        else:
            mirror = ops.ones((batch,))

        # Output pixel p maps to input pixel C + M (p - C) + t with
        # M = scale * R(angle) * diag(mirror, 1) and C the image centre.
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        a0, a1 = cos * mirror, -sin
        b0, b1 = sin * mirror, cos
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2 = cx - a0 * cx - a1 * cy + shift_x
        b2 = cy - b0 * cx - b1 * cy + shift_y
        zeros = ops.zeros((batch,))
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode=self.fill_mode
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            rotation=self.rotation,
            zoom=self.zoom,
            translation=self.translation,
            flip=self.flip,
            fill_mode=self.fill_mode,
            seed=self.seed,
        )
        return config
