"""Several trained segmenters as one Keras model that averages their softmax.

The ensemble outputs log(mean_m softmax(logits_m)): its softmax is the members' mean
probability again (the mean sums to 1), so validation, evaluation, test-time mirroring
and the exported SavedModel treat it exactly like one segmenter.
"""

from __future__ import annotations

from typing import Sequence

import keras

_FLOOR = 1e-30  # log(0) guard: far below any probability that changes an argmax or a mean


class SoftmaxEnsemble(keras.Model):
    """images [B, S, S, 1] -> log of the mean of the members' softmax, float32 [B, S, S, K]."""

    def __init__(self, members: Sequence[keras.Model], name: str = "ensemble"):
        super().__init__(name=name)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)

    def call(self, x, training: bool = False):
        probs = [keras.ops.softmax(keras.ops.cast(m(x, training=training), "float32"), axis=-1) for m in self.members]
        mean = keras.ops.mean(keras.ops.stack(probs, axis=0), axis=0)
        return keras.ops.log(keras.ops.maximum(mean, _FLOOR))
