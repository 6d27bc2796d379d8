"""Supervised segmentation loss: pixel cross-entropy + soft Dice.

All arithmetic in float32 whatever the logits dtype.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["DICE_EPSILON", "cross_entropy", "soft_dice_loss", "segmentation_loss"]

# Smoothing added to the numerator and denominator of every class's Dice.
DICE_EPSILON = 1e-5


def _logits_labels(logits: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    logits = tf.convert_to_tensor(logits)
    if logits.dtype != tf.float32:
        logits = tf.cast(logits, tf.float32)
    return logits, tf.cast(labels, tf.int32)


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy averaged over all pixels of the batch.

    Args:
      logits: [B, H, W, K] unnormalised scores.
      labels: [B, H, W] integer classes in [0, K).

    Returns:
      Scalar float32.
    """
    logits, labels = _logits_labels(logits, labels)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(ce)


def soft_dice_loss(
    logits: tf.Tensor, labels: tf.Tensor, num_classes: int, epsilon: float = DICE_EPSILON
) -> tf.Tensor:
    """Soft Dice loss over the foreground classes, pooled over the batch.

    With ``p = softmax(logits)`` and ``g`` the one-hot labels, for every
    foreground class ``k`` in ``1..K-1`` the sums run over ALL pixels of the
    batch: ``I_k = sum p_k g_k``, ``P_k = sum p_k``, ``G_k = sum g_k`` and::

        dice_k = (2 I_k + eps) / (P_k + G_k + eps)
        loss   = 1 - mean_{k=1..K-1} dice_k

    A class absent from the labels (``G_k = 0``) has ``dice_k = eps / (P_k +
    eps)``: close to 1 only if the predicted mass ``P_k`` is much smaller than
    ``eps``, so predicting an absent class is penalised. With ``K == 1`` (no
    foreground class) the loss is 0.

    Args:
      logits: [B, H, W, K]. labels: [B, H, W] int in [0, K).
      num_classes: ``K`` (static int, must equal the logits' last dim).
      epsilon: smoothing ``eps``.

    Returns:
      Scalar float32 in [0, 1].
    """
    logits, labels = _logits_labels(logits, labels)
    if num_classes < 2:
        return tf.constant(0.0, tf.float32)
    probs = tf.reshape(tf.nn.softmax(logits, axis=-1), [-1, num_classes])[:, 1:]
    onehot = tf.reshape(tf.one_hot(labels, num_classes, dtype=tf.float32), [-1, num_classes])[:, 1:]
    intersection = tf.reduce_sum(probs * onehot, axis=0)  # [K-1]
    denominator = tf.reduce_sum(probs, axis=0) + tf.reduce_sum(onehot, axis=0)
    dice = (2.0 * intersection + epsilon) / (denominator + epsilon)
    return 1.0 - tf.reduce_mean(dice)


def segmentation_loss(logits: tf.Tensor, labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Cross-entropy (mean over pixels) + soft Dice over foreground classes.

    See :func:`cross_entropy` and :func:`soft_dice_loss` (``eps =
    DICE_EPSILON = 1e-5``).

    Args:
      logits: [B, H, W, K] (any float dtype; computed in float32).
      labels: [B, H, W] integer classes in [0, K).
      num_classes: ``K``.

    Returns:
      Scalar float32 ``CE + Dice``.
    """
    return cross_entropy(logits, labels) + soft_dice_loss(logits, labels, num_classes)
