"""Layers the U-Net needs beyond Keras' own.

`BatchNorm`: batch normalisation with the same weights as `keras.layers.BatchNormalization`
(`gamma`, `beta`, `moving_mean`, `moving_variance`), computed with TensorFlow's fused
kernel (`FusedBatchNormV3` and its fused gradient) on one replica. Keras 3 computes
batch norm as separate moments and element-wise ops, which costs about a third of a
U-Net training step on CPU. Under a distribution strategy with several replicas the
batch statistics are summed over the replicas (synchronised batch norm), so every
replica normalises with the statistics of the global batch.

Moving statistics: ``m <- momentum m + (1 - momentum) batch``, with the unbiased batch
variance (as PyTorch and the fused kernel do).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfsemiseg")
class BatchNorm(keras.layers.Layer):
    """Batch norm over the last axis of [B, H, W, C] inputs (see the module docstring)."""

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs):
        kwargs.setdefault("autocast", False)  # float32 parameters under mixed_float16
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape) -> None:
        c = int(input_shape[-1])
        self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=(c,), initializer="zeros", name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(
            shape=(c,), initializer="ones", name="moving_variance", trainable=False
        )

    def call(self, x, training=None):
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        if not training:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, is_training=False,
            )
            return y
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            y, mean, var = self._synchronized(x, gamma, beta, ctx)
        else:
            # training mode returns the batch mean and the unbiased batch variance
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon, is_training=True)
        self.moving_mean.assign(self.momentum * self.moving_mean + (1.0 - self.momentum) * mean)
        self.moving_variance.assign(self.momentum * self.moving_variance + (1.0 - self.momentum) * var)
        return y

    def _synchronized(self, x, gamma, beta, ctx):
        """Normalise with the statistics of the batch summed over all replicas."""
        xf = tf.cast(x, tf.float32)
        count = tf.cast(tf.reduce_prod(tf.shape(xf)[:-1]), tf.float32)
        sums = tf.concat([tf.reduce_sum(xf, [0, 1, 2]), tf.reduce_sum(tf.square(xf), [0, 1, 2]), count[None]], 0)
        sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
        c = xf.shape[-1]
        n = sums[-1]
        mean = sums[:c] / n
        var = tf.maximum(sums[c : 2 * c] / n - tf.square(mean), 0.0)
        y = tf.nn.batch_normalization(xf, mean, var, beta, gamma, self.epsilon)
        return tf.cast(y, x.dtype), mean, var * n / tf.maximum(n - 1.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
