"""Tests of the segmentation loss (CE + soft Dice) against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg.losses import cross_entropy, segmentation_loss, soft_dice_loss

EPS = 1e-5  # documented Dice smoothing


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    p = np_softmax(logits.astype(np.float64)).reshape(-1, logits.shape[-1])
    return float(-np.mean(np.log(p[np.arange(len(p)), labels.reshape(-1)])))


def np_dice_loss(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    p = np_softmax(logits.astype(np.float64)).reshape(-1, k)
    y = labels.reshape(-1)
    dices = []
    for c in range(1, k):
        g = (y == c).astype(np.float64)
        inter = (p[:, c] * g).sum()
        dices.append((2 * inter + EPS) / (p[:, c].sum() + g.sum() + EPS))
    return 1.0 - float(np.mean(dices)) if dices else 0.0


@pytest.mark.parametrize("k", [2, 3, 5])
def test_matches_numpy(k):
    rng = np.random.default_rng(k)
    logits = (2 * rng.normal(size=(3, 9, 7, k))).astype(np.float32)
    labels = rng.integers(0, k, size=(3, 9, 7)).astype(np.int32)
    ce, dice = np_ce(logits, labels), np_dice_loss(logits, labels, k)
    np.testing.assert_allclose(float(cross_entropy(logits, labels)), ce, rtol=1e-5)
    np.testing.assert_allclose(float(soft_dice_loss(logits, labels, k)), dice, rtol=1e-5, atol=1e-6)
    total = segmentation_loss(logits, labels, k)
    assert total.dtype == tf.float32 and total.shape == ()
    np.testing.assert_allclose(float(total), ce + dice, rtol=1e-5)


def test_dice_pooled_over_batch_not_per_image():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
    labels = np.zeros((2, 6, 6), np.int32)
    labels[0, :3] = 1  # class 1 only in the first image
    ref = np_dice_loss(logits, labels, 2)
    per_image = np.mean([np_dice_loss(logits[i : i + 1], labels[i : i + 1], 2) for i in range(2)])
    assert abs(ref - per_image) > 1e-3
    np.testing.assert_allclose(float(soft_dice_loss(logits, labels, 2)), ref, rtol=1e-5)


def test_absent_class_and_perfect_prediction():
    labels = np.zeros((2, 5, 5), np.int32)
    labels[:, 1:3, 1:3] = 1  # class 2 absent from the labels
    confident = 30.0 * tf.one_hot(labels, 3).numpy()
    # Perfect, confident prediction: absent class has P ~ 0 -> dice ~ 1; loss ~ 0.
    assert float(segmentation_loss(confident, labels, 3)) < 1e-4
    # Predicting the absent class everywhere is penalised.
    wrong = 30.0 * tf.one_hot(np.full_like(labels, 2), 3).numpy()
    np.testing.assert_allclose(float(soft_dice_loss(wrong, labels, 3)), np_dice_loss(wrong, labels, 3), rtol=1e-5)
    assert float(soft_dice_loss(wrong, labels, 3)) > 0.99


def test_single_class_has_no_dice_term():
    logits = np.random.default_rng(0).normal(size=(1, 4, 4, 1)).astype(np.float32)
    labels = np.zeros((1, 4, 4), np.int32)
    assert float(soft_dice_loss(logits, labels, 1)) == 0.0
    assert abs(float(segmentation_loss(logits, labels, 1))) < 1e-6


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_logits_computed_in_float32(dtype):
    rng = np.random.default_rng(3)
    logits = (3 * rng.normal(size=(2, 8, 8, 3))).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 8, 8)).astype(np.int32)
    low = tf.cast(logits, dtype)
    rounded = tf.cast(low, tf.float64).numpy()
    total = segmentation_loss(low, labels, 3)
    assert total.dtype == tf.float32
    np.testing.assert_allclose(
        float(total), np_ce(rounded, labels) + np_dice_loss(rounded, labels, 3), rtol=1e-5
    )


def test_gradient_finite_and_matches_numpy_fd():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(1, 3, 3, 3))
    labels = rng.integers(0, 3, size=(1, 3, 3)).astype(np.int32)
    x = tf.constant(logits, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = segmentation_loss(x, labels, 3)
    grad = tape.gradient(loss, x).numpy()

    def f(v):
        return np_ce(v, labels) + np_dice_loss(v, labels, 3)

    fd = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        hi, lo = logits.copy(), logits.copy()
        hi[idx] += 1e-6
        lo[idx] -= 1e-6
        fd[idx] = (f(hi) - f(lo)) / 2e-6
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-5)
