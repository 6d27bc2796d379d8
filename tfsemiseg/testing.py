"""Reference implementations for tests and benchmarks: dense, slow, obviously correct.

Plain TensorFlow, written straight from the losses' definitions with full
similarity matrices and masks, differentiated by autodiff. Nothing of the
library's own loss code is used. Arithmetic is done in the inputs' float dtype
(pass float64 for a reference, float32 to time them); the block mode needs
static H and W.

* :func:`dense_supervised_local_contrastive_loss`: the supervised local loss
  (Hu et al. 2021), every mode of
  :func:`tfsemiseg.losses.supervised_local_contrastive_loss`.
* :func:`dense_nt_xent`: the NT-Xent loss of two views (SimCLR).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["dense_nt_xent", "dense_pool_loss", "dense_supervised_local_contrastive_loss", "local_pools"]

# A finite "minus infinity" for masked logits.
_NEG = -1.0e30


def _float(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return x if x.dtype.is_floating else tf.cast(x, tf.float32)


def local_pools(features, labels, mode: str = "stride", stride: int = 4, block_size: int = 16):
    """The pools of the supervised local loss, by plain slicing.

    Args:
      features: [B, H, W, C]. labels: [B, H, W].
      mode: ``"stride"`` (one pool of ``[:, ::stride, ::stride]``), ``"block"``
        (one pool per ``block_size`` tile position, over all maps; smaller tiles
        at the bottom/right remainder) or ``"full"`` (one pool of every pixel).

    Returns:
      A list of ``(x [n, C], y [n])`` pools.
    """
    f, y = tf.convert_to_tensor(features), tf.convert_to_tensor(labels)
    c = f.shape[-1]
    if mode == "full":
        tiles = [(f, y)]
    elif mode == "stride":
        tiles = [(f[:, ::stride, ::stride], y[:, ::stride, ::stride])]
    elif mode == "block":
        bs = block_size
        tiles = [
            (f[:, r : r + bs, q : q + bs], y[:, r : r + bs, q : q + bs])
            for r in range(0, f.shape[1], bs)
            for q in range(0, f.shape[2], bs)
        ]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return [(tf.reshape(x, [-1, c]), tf.reshape(t, [-1])) for x, t in tiles]


def dense_pool_loss(x, y, temperature: float, anchor_rows_only: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss of one pool: the mean of ``l_i`` over its anchors.

    ``l_i = log sum_{k != i} exp(s_ik / t) - (1/|P(i)|) sum_{p in P(i)} s_ip / t``
    with ``s`` the dot product, ``P(i)`` the other points with ``i``'s label;
    anchors are the foreground points (label != 0) with ``P(i)`` non-empty.

    Args:
      x: [n, C] unit vectors. y: [n] integer labels. temperature: ``t``.
      anchor_rows_only: compute only the anchors' rows ([anchors, n]) instead
        of the full [n, n] matrices.

    Returns:
      ``(loss, num_anchors)``: scalar (0 without anchors) and int32.
    """
    y = tf.cast(y, tf.int32)
    n = tf.shape(y)[0]
    if anchor_rows_only:
        _, idx, counts = tf.unique_with_counts(y)
        rows = tf.cast(tf.where(tf.logical_and(y != 0, tf.gather(counts, idx) >= 2))[:, 0], tf.int32)
    else:
        rows = tf.range(n)
    s = tf.matmul(tf.gather(x, rows), x, transpose_b=True) / temperature  # s_ik / t: [rows, n]
    is_self = tf.equal(rows[:, None], tf.range(n)[None, :])
    positive = tf.logical_and(tf.equal(tf.gather(y, rows)[:, None], y[None, :]), tf.logical_not(is_self))
    num_pos = tf.reduce_sum(tf.cast(positive, x.dtype), axis=1)
    is_anchor = tf.logical_and(tf.gather(y, rows) != 0, num_pos > 0)
    lse = tf.reduce_logsumexp(tf.where(is_self, tf.constant(_NEG, x.dtype), s), axis=1)
    mean_pos = tf.reduce_sum(tf.where(positive, s, 0.0), axis=1) / tf.maximum(num_pos, 1.0)
    l = tf.where(is_anchor, lse - mean_pos, 0.0)
    num_anchors = tf.reduce_sum(tf.cast(is_anchor, tf.int32))
    return tf.math.divide_no_nan(tf.reduce_sum(l), tf.cast(num_anchors, x.dtype)), num_anchors


def dense_supervised_local_contrastive_loss(
    features, labels, temperature: float = 0.1, mode: str = "stride", stride: int = 4, block_size: int = 16,
    anchor_rows_only: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Supervised local contrastive loss: mean over pools with anchors of :func:`dense_pool_loss`.

    Args:
      features: [B, H, W, C] (L2-normalised over C here). labels: [B, H, W].
      temperature, mode, stride, block_size: as in
        :func:`tfsemiseg.losses.supervised_local_contrastive_loss_with_count`.
      anchor_rows_only: see :func:`dense_pool_loss`.

    Returns:
      ``(loss, num_anchors)``: scalar in the features' dtype and int32 (all pools).
    """
    f = tf.math.l2_normalize(_float(features), axis=-1)
    losses, used, anchors = [], [], []
    for x, y in local_pools(f, labels, mode, stride, block_size):
        loss, count = dense_pool_loss(x, y, temperature, anchor_rows_only)
        losses.append(loss)
        used.append(tf.cast(count > 0, f.dtype))
        anchors.append(count)
    return tf.math.divide_no_nan(tf.add_n(losses), tf.add_n(used)), tf.add_n(anchors)


def dense_nt_xent(z_a, z_b, temperature: float) -> tf.Tensor:
    """NT-Xent of two views, the mean of ``l_i`` over the ``2B`` views.

    With ``z = normalise(concat([z_a, z_b]))``, ``s_ik = z_i . z_k`` and
    ``p(i) = i + B (mod 2B)`` the other view of item ``i``:
    ``l_i = log sum_{k != i} exp(s_ik / t) - s_ip(i) / t``.

    Args:
      z_a, z_b: [B, D] the two views (any scale).

    Returns:
      Scalar in the inputs' dtype.
    """
    z = tf.math.l2_normalize(tf.concat([_float(z_a), _float(z_b)], axis=0), axis=-1)  # [2B, D]
    n = tf.shape(z)[0]
    s = tf.matmul(z, z, transpose_b=True) / temperature
    is_self = tf.eye(n, dtype=z.dtype) > 0
    is_positive = tf.roll(is_self, shift=n // 2, axis=1)  # [i, i + B mod 2B]
    lse = tf.reduce_logsumexp(tf.where(is_self, tf.constant(_NEG, z.dtype), s), axis=1)
    return tf.reduce_mean(lse - tf.reduce_sum(tf.where(is_positive, s, 0.0), axis=1))
