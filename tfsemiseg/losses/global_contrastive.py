"""Global (image-level) contrastive loss: SimCLR NT-Xent, replica aware.

Follows the structure of ``google-research/simclr`` ``objective.py``: small
pure functions, all arithmetic in float32.

Distributed convention
----------------------
Inside a replica context with ``R > 1`` replicas (``strategy.run`` under e.g.
``tf.distribute.MirroredStrategy``) the projections of every replica are
all-gathered (differentiably: the gradient of ``ReplicaContext.all_gather`` is
an all-reduce SUM followed by taking the local slice). Each replica computes the
loss terms of its OWN anchors (its ``2 * b_local`` views) against ALL
``2 * B_global`` gathered keys and returns::

    value_r = R * sum_{i in local anchors} l_i / (2 * B_global)

so the per-replica value is a partial sum, *not* the global loss. The engine
must do the standard thing:

* differentiate ``value_r / R`` on every replica and SUM the gradients across
  replicas (what ``optimizer.apply_gradients`` does with mirrored variables, or
  ``strategy.reduce(SUM, grads)``);
* report ``strategy.reduce(SUM, value_r / R)`` (= the MEAN of ``value_r`` over
  replicas).

Then the reported value equals the single-device loss on the global batch and
the summed gradient equals its gradient. With one replica (or no strategy)
``value`` is exactly the single-device loss.
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


def nt_xent_from_pairs(
    anchors_a: tf.Tensor,
    anchors_b: tf.Tensor,
    keys_a: tf.Tensor,
    keys_b: tf.Tensor,
    offset: tf.Tensor | int,
    temperature: float,
) -> tf.Tensor:
    """Sum of NT-Xent terms of the local anchors against all keys.

    The views are laid out as ``keys = concat([keys_a, keys_b])`` ([2G, D]);
    key ``j`` and key ``j + G`` are the two views of the same item. The local
    anchors are ``keys_a[offset:offset+b]`` and ``keys_b[offset:offset+b]``
    (passed separately so that the gradient can flow to them directly).

    Args:
      anchors_a: [b, D] L2-normalised float32 anchors, first view.
      anchors_b: [b, D] L2-normalised float32 anchors, second view.
      keys_a: [G, D] all first-view keys (``anchors_a`` is the slice at
        ``offset``).
      keys_b: [G, D] all second-view keys.
      offset: scalar int, position of the local anchors inside the keys.
      temperature: softmax temperature ``t``.

    Returns:
      Scalar float32: ``sum_i -log(exp(s_ip/t) / sum_{k != i} exp(s_ik/t))``
      over the ``2b`` local anchors (2G - 1 denominator terms each).
    """
    g = tf.shape(keys_a)[0]
    b = tf.shape(anchors_a)[0]
    keys = tf.concat([keys_a, keys_b], axis=0)  # [2G, D]
    anchors = tf.concat([anchors_a, anchors_b], axis=0)  # [2b, D]
    logits = tf.matmul(anchors * (1.0 / temperature), keys, transpose_b=True)  # [2b, 2G]
    idx = tf.range(b) + tf.cast(offset, tf.int32)
    self_idx = tf.concat([idx, idx + g], axis=0)  # [2b]
    pos_idx = tf.concat([idx + g, idx], axis=0)  # [2b]
    self_mask = tf.one_hot(self_idx, 2 * g, on_value=True, off_value=False, dtype=tf.bool)
    logits = tf.where(self_mask, tf.constant(_NEG, tf.float32), logits)
    lse = tf.reduce_logsumexp(logits, axis=1)  # [2b]
    pos = tf.gather(logits, pos_idx[:, None], batch_dims=1)[:, 0]  # [2b]
    return tf.reduce_sum(lse - pos)


def global_contrastive_loss(
    z_a: tf.Tensor, z_b: tf.Tensor, temperature: float = 0.5
) -> tf.Tensor:
    """SimCLR NT-Xent loss between two views, gathered across replicas.

    Over the ``2B`` views, anchor ``i`` has one positive ``p`` (the other view
    of the same image) and its denominator runs over the ``2B - 1`` other
    views; with ``s`` the cosine similarity::

        loss = mean_i -log( exp(s_ip / t) / sum_{k != i} exp(s_ik / t) )

    Args:
      z_a: [B, D] projections of the first view (any float dtype; cast to
        float32 and L2-normalised here).
      z_b: [B, D] projections of the second view of the same ``B`` images.
      temperature: softmax temperature ``t``.

    Returns:
      Scalar float32. Without a strategy (or with one replica): the loss
      above. In a replica context with ``R > 1`` replicas the projections are
      all-gathered and the value returned is ``R * (sum of the local anchors'
      terms) / (2 * B_global)``: divide it by ``R`` before differentiating and
      sum the gradients and values across replicas (see the module docstring);
      this reproduces the single-device loss on the global batch and its
      gradient exactly.
    """
    z_a = tf.math.l2_normalize(_to_float32(z_a), axis=-1)
    z_b = tf.math.l2_normalize(_to_float32(z_b), axis=-1)
    ctx = tf.distribute.get_replica_context()
    num_replicas = 1 if ctx is None else ctx.num_replicas_in_sync
    if num_replicas > 1:
        keys_a, keys_b = ctx.all_gather([z_a, z_b], axis=0)
        sizes = ctx.all_gather(tf.shape(z_a)[:1], axis=0)  # [R] local batch sizes
        offset = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    else:
        keys_a, keys_b, offset = z_a, z_b, 0
    total = nt_xent_from_pairs(z_a, z_b, keys_a, keys_b, offset, temperature)
    num_anchors = tf.cast(2 * tf.shape(keys_a)[0], tf.float32)
    return tf.math.divide_no_nan(total * float(num_replicas), num_anchors)
