"""Global (image-level) contrastive loss: SimCLR NT-Xent.

Follows the structure of ``google-research/simclr`` ``objective.py``: small
pure functions, all arithmetic in float32.

Distributed convention
----------------------
The loss is a pure function of the batch it is given: nothing is gathered
across replicas here. Under a distribution strategy, as for every loss of
:mod:`tfsemiseg.losses`, the task gathers the projections of every replica
first (:func:`tfsemiseg.training.strategy.replica_gather`, differentiable) and
each replica computes the same loss of the global batch::

    loss = global_contrastive_loss(replica_gather(z_a), replica_gather(z_b), t)

The engine differentiates ``loss / R`` on each of the ``R`` replicas and sums
the gradients (the gradient of the gather sums the replicas' upstream
gradients), and reports the mean of the replicas' values: both are the
single-device value and gradient on the global batch.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["global_contrastive_loss", "nt_xent_from_pairs"]

# Finite "minus infinity" used to mask logits: exp(NEG - max) == 0 in float32
# while keeping every value and gradient finite.
_NEG = -1.0e9


def _to_float32(x: tf.Tensor) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def nt_xent_from_pairs(z_a: tf.Tensor, z_b: tf.Tensor, temperature: float) -> tf.Tensor:
    """NT-Xent of two views: ``mean_i l_i`` over the ``2B`` views.

    With ``z = concat([z_a, z_b])`` (view ``i`` and view ``i + B`` are the
    two views of item ``i``), ``s_ik = z_i . z_k`` and ``p(i)`` the other
    view of ``i``::

        l_i = -log( exp(s_ip(i) / t) / sum_{k != i} exp(s_ik / t) )
            = LSE_{k != i}(s_ik / t) - s_ip(i) / t

    Args:
      z_a: [B, D] L2-normalised float32 first views.
      z_b: [B, D] L2-normalised float32 second views of the same items.
      temperature: softmax temperature ``t``.

    Returns:
      Scalar float32 (0 when ``B == 0``).
    """
    b = tf.shape(z_a)[0]
    z = tf.concat([z_a, z_b], axis=0)  # [2B, D]
    n = tf.shape(z)[0]
    logits = tf.matmul(z * (1.0 / temperature), z, transpose_b=True)  # s_ik / t: [2B, 2B]
    is_self = tf.one_hot(tf.range(n), n, on_value=True, off_value=False, dtype=tf.bool)
    logits = tf.where(is_self, tf.constant(_NEG, tf.float32), logits)  # k != i
    positive = tf.concat([tf.range(b) + b, tf.range(b)], axis=0)  # p(i): [2B]
    lse = tf.reduce_logsumexp(logits, axis=1)  # [2B]
    pos = tf.gather(logits, positive[:, None], batch_dims=1)[:, 0]  # s_ip(i) / t: [2B]
    return tf.math.divide_no_nan(tf.reduce_sum(lse - pos), tf.cast(n, tf.float32))


def global_contrastive_loss(z_a: tf.Tensor, z_b: tf.Tensor, temperature: float = 0.5) -> tf.Tensor:
    """SimCLR NT-Xent loss between two views of a batch.

    Over the ``2B`` views, anchor ``i`` has one positive ``p`` (the other view
    of the same image) and its denominator runs over the ``2B - 1`` other
    views; with ``s`` the cosine similarity::

        loss = mean_i -log( exp(s_ip / t) / sum_{k != i} exp(s_ik / t) )

    A pure function of its inputs (see the module docstring for the
    distributed convention).

    Args:
      z_a: [B, D] projections of the first view (any float dtype; cast to
        float32 and L2-normalised here).
      z_b: [B, D] projections of the second view of the same ``B`` images.
      temperature: softmax temperature ``t``.

    Returns:
      Scalar float32.
    """
    z_a = tf.math.l2_normalize(_to_float32(z_a), axis=-1)
    z_b = tf.math.l2_normalize(_to_float32(z_b), axis=-1)
    return nt_xent_from_pairs(z_a, z_b, temperature)
