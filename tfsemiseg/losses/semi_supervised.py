"""Losses of the non-contrastive semi-supervised baselines: Mixup and TCSM."""

from __future__ import annotations

import tensorflow as tf

from tfsemiseg.losses.segmentation import segmentation_loss


def mixup_loss(logits: tf.Tensor, labels: tf.Tensor, labels_perm: tf.Tensor, lam: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Mixup (Zhang et al. 2018) for segmentation: lam * L(y) + (1 - lam) * L(y_perm).

    logits: [B, H, W, K] of the mixed images lam * x + (1 - lam) * x[perm];
    labels, labels_perm: [B, H, W] integer labels of x and of x[perm]; lam: scalar in [0, 1].
    L is `segmentation_loss` (cross-entropy + soft Dice).
    """
    lam = tf.cast(lam, tf.float32)
    return lam * segmentation_loss(logits, labels, num_classes) + (1.0 - lam) * segmentation_loss(
        logits, labels_perm, num_classes
    )


def consistency_loss(student_probs: tf.Tensor, teacher_probs: tf.Tensor) -> tf.Tensor:
    """Mean squared error between softmax maps [B, H, W, K] (mean over every element).

    The teacher side is a target: no gradient flows into it.
    """
    s = tf.cast(student_probs, tf.float32)
    t = tf.stop_gradient(tf.cast(teacher_probs, tf.float32))
    return tf.reduce_mean(tf.square(s - t))


def sigmoid_rampup(progress: tf.Tensor, length: float) -> tf.Tensor:
    """exp(-5 (1 - min(progress / length, 1))^2), the mean-teacher ramp-up; 1 when length is 0."""
    if length <= 0:
        return tf.constant(1.0)
    t = tf.clip_by_value(tf.cast(progress, tf.float32) / float(length), 0.0, 1.0)
    return tf.exp(-5.0 * tf.square(1.0 - t))


def flip_rotate(x: tf.Tensor, k: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """The TCSM transform of [B, H, W, C] maps: optional left-right flip, then k x 90 degree rotation."""
    x = tf.cond(flip, lambda: tf.reverse(x, axis=[2]), lambda: x)
    return tf.image.rot90(x, k)
