"""Tests of the local contrastive losses against independent references.

The references (:mod:`tfsemiseg.testing`) are dense TensorFlow
implementations written straight from the definitions (full masks, autodiff),
run in float64 for values and gradients. Nothing of the library's loss code is
used by them.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg.losses import (
    local_contrastive_points,
    pooled_weighted_lse_sum,
    self_supervised_local_contrastive_loss,
    supervised_local_contrastive_loss,
    supervised_local_contrastive_loss_with_count,
)
from tfsemiseg.testing import dense_nt_xent, dense_supervised_local_contrastive_loss

T = 0.1


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------


def reference(features, labels, mode, stride=4, block=16, t=T) -> tuple[float, int]:
    """(loss, number of anchors) of the dense float64 reference."""
    loss, count = dense_supervised_local_contrastive_loss(
        np.asarray(features, np.float64), labels, t, mode, stride, block
    )
    return float(loss), int(count)


def reference_gradient(features, labels, mode, stride=4, block=16, t=T) -> np.ndarray:
    """d loss / d features of the dense float64 reference."""
    f64 = tf.constant(np.asarray(features, np.float64))
    with tf.GradientTape() as tape:
        tape.watch(f64)
        loss, _ = dense_supervised_local_contrastive_loss(f64, labels, t, mode, stride, block)
    return tape.gradient(loss, f64).numpy()


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def make_inputs(seed=0, b=4, h=12, w=12, c=8, fg=0.3, classes=3):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(b, h, w, c)).astype(np.float32)
    labels = rng.integers(1, classes, size=(b, h, w)) * (rng.random((b, h, w)) < fg)
    return features, labels.astype(np.int32)


def lib_loss_and_grad(features, labels, **kw):
    f = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(f)
        loss, count = supervised_local_contrastive_loss_with_count(f, tf.constant(labels), **kw)
    return loss, count, tape.gradient(loss, f)


MODES = [
    dict(mode="stride", stride=1),
    dict(mode="stride", stride=2),
    dict(mode="stride", stride=4),
    dict(mode="block", block_size=8),
    dict(mode="block", block_size=16),
    dict(mode="full"),
    dict(mode="full", chunk_size=200),
]


def _ref_kw(kw):
    return dict(mode=kw["mode"], stride=kw.get("stride", 4), block=kw.get("block_size", 16))


# --------------------------------------------------------------------------
# Supervised local loss
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kw", MODES, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_supervised_matches_dense_reference(kw):
    features, labels = make_inputs(seed=1, h=16, w=16, fg=0.25)
    loss, count, grad = lib_loss_and_grad(features, labels, **kw)
    ref, ref_count = reference(features, labels, **_ref_kw(kw))
    assert loss.dtype == tf.float32 and count.dtype == tf.int32
    assert ref_count > 0
    assert int(count) == ref_count
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)
    plain = supervised_local_contrastive_loss(features, labels, **kw)
    assert float(plain) == float(loss)
    ref_grad = reference_gradient(features, labels, **_ref_kw(kw))
    assert np.abs(ref_grad).max() > 1e-4  # the check is not vacuous
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-4, atol=1e-5)


def test_reference_anchor_rows_equal_full_matrix():
    # The benchmark's "dense_fg" (anchor rows only) and "dense" (N x N) references agree.
    features, labels = make_inputs(seed=2, h=16, w=16, fg=0.25)
    f64 = features.astype(np.float64)
    full = dense_supervised_local_contrastive_loss(f64, labels, T, "full")
    rows = dense_supervised_local_contrastive_loss(f64, labels, T, "full", anchor_rows_only=True)
    assert int(full[1]) == int(rows[1]) > 0
    np.testing.assert_allclose(float(full[0]), float(rows[0]), rtol=1e-12)


@pytest.mark.parametrize("mode", ["full", "block"])
def test_chunkings_agree_several_classes(mode):
    # Automatic blocks vs many small blocks per pool (ragged last block).
    features, labels = make_inputs(seed=3, b=2, h=20, w=20, c=16, fg=0.5, classes=5)
    kw = dict(mode=mode, block_size=8)
    auto, n_auto, g_auto = lib_loss_and_grad(features, labels, **kw)
    small, n_small, g_small = lib_loss_and_grad(features, labels, chunk_size=60, **kw)
    assert int(n_auto) == int(n_small) > 0
    np.testing.assert_allclose(float(auto), float(small), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(g_auto.numpy(), g_small.numpy(), rtol=1e-4, atol=1e-6)
    ref, _ = reference(features, labels, mode, block=8)
    np.testing.assert_allclose(float(small), ref, rtol=1e-5, atol=1e-5)


def test_full_in_tf_function_multiple_ragged_chunks():
    features, labels = make_inputs(seed=4, h=10, w=10, fg=0.45)
    chunk = 40  # anchors and keys per block: several full blocks + a ragged last one

    @tf.function
    def step(f, y):
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss, count = supervised_local_contrastive_loss_with_count(f, y, mode="full", chunk_size=chunk)
        return loss, count, tape.gradient(loss, f)

    f = tf.constant(features)
    loss, count, grad = step(f, tf.constant(labels))
    n = int(count)
    assert n > 3 * chunk and n % chunk != 0, n
    ref, ref_count = reference(features, labels, "full")
    assert n == ref_count
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad.numpy(), reference_gradient(features, labels, "full"), rtol=1e-4, atol=1e-5)
    # Same traced function, different number of anchors (dynamic), incl. zero.
    labels2 = labels.copy()
    labels2[:2] = 0
    loss2, count2, _ = step(f, tf.constant(labels2))
    ref2, ref_count2 = reference(features, labels2, "full")
    assert int(count2) == ref_count2 < n
    np.testing.assert_allclose(float(loss2), ref2, rtol=1e-5, atol=1e-5)
    loss0, count0, grad0 = step(f, tf.zeros_like(labels))
    assert int(count0) == 0 and float(loss0) == 0.0
    assert np.all(grad0.numpy() == 0.0)
    assert step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("temperature", [0.02, 0.5])
def test_full_other_temperatures(temperature):
    # t = 0.02 takes the row-maximum path (1/t > 40), t = 0.5 the unshifted one.
    features, labels = make_inputs(seed=14, b=2, h=10, w=10, fg=0.4)
    loss, _, grad = lib_loss_and_grad(features, labels, mode="full", temperature=temperature, chunk_size=30)
    ref, _ = reference(features, labels, "full", t=temperature)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)
    ref_grad = reference_gradient(features, labels, "full", t=temperature)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("logit_bound", [None, 2.0])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_pooled_weighted_lse_sum_against_dense(logit_bound, chunk_size):
    # Three pools (keys 0..9, none, 10..26), queries = rows of the keys (not
    # all of them, unsorted inside a pool), arbitrary weights and upstream.
    rng = np.random.default_rng(15)
    x = tf.constant(rng.normal(size=(27, 3)) / 2, tf.float32)
    query_index = tf.constant([4, 1, 7, 20, 12, 15, 11], tf.int32)
    q_off, k_off = tf.constant([0, 3, 3, 7]), tf.constant([0, 10, 10, 27])
    w = tf.constant(rng.uniform(0.1, 1.0, size=7), tf.float32)
    dy = 1.7
    pool_of_key = np.repeat([0, 1, 2], [10, 0, 17])
    pool_of_q = np.repeat([0, 1, 2], [3, 0, 4])
    mask = (pool_of_q[:, None] == pool_of_key[None, :]) & (np.arange(27)[None, :] != query_index.numpy()[:, None])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = dy * pooled_weighted_lse_sum(
            x, query_index, w, q_off, k_off, 0.5, chunk_size=chunk_size, logit_bound=logit_bound
        )
        logits = tf.matmul(tf.gather(x, query_index), x, transpose_b=True) / 0.5
        ref = dy * tf.reduce_sum(w * tf.reduce_logsumexp(tf.where(mask, logits, -np.inf), axis=1))
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(out, x).numpy(), tape.gradient(ref, x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", MODES, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_no_foreground_is_zero_with_zero_gradient(kw):
    features, _ = make_inputs(seed=5)
    labels = np.zeros(features.shape[:3], np.int32)
    loss, count, grad = lib_loss_and_grad(features, labels, **kw)
    assert float(loss) == 0.0 and int(count) == 0
    assert grad is not None and np.all(grad.numpy() == 0.0)


@pytest.mark.parametrize("kw", MODES, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_singleton_classes_have_no_anchor(kw):
    # Each foreground class has at most one point per pool: no positives.
    features, _ = make_inputs(seed=6, b=1, h=4, w=4)
    labels = np.arange(1, 17, dtype=np.int32).reshape(1, 4, 4)
    loss, count, grad = lib_loss_and_grad(features, labels, **kw)
    assert int(count) == 0 and float(loss) == 0.0
    assert np.all(np.isfinite(grad.numpy())) and np.all(grad.numpy() == 0.0)


@pytest.mark.parametrize("kw", MODES, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_one_class_only(kw):
    features, _ = make_inputs(seed=7, h=16, w=16)
    labels = np.ones(features.shape[:3], np.int32)  # every point foreground, one class
    loss, count, grad = lib_loss_and_grad(features, labels, **kw)
    ref, ref_count = reference(features, labels, **_ref_kw(kw))
    assert int(count) == ref_count > 0
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(grad.numpy()))


def test_block_remainder_forms_edge_tiles():
    # 20x20 with block 8: tiles of 8, 8 and 4 rows/cols (9 pools).
    features, labels = make_inputs(seed=8, b=3, h=20, w=20, fg=0.3)
    loss, count = supervised_local_contrastive_loss_with_count(features, labels, mode="block", block_size=8)
    ref, ref_count = reference(features, labels, "block", block=8)
    assert int(count) == ref_count
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)

    # Foreground only in the bottom-right 4x4 corner: that edge tile is its own pool.
    corner = np.zeros_like(labels)
    corner[:, 16:, 16:] = labels[:, 16:, 16:]
    corner[0, 16, 16] = corner[1, 16, 16] = 2
    loss_c, count_c = supervised_local_contrastive_loss_with_count(
        features, corner, mode="block", block_size=8
    )
    ref_c, n = reference(features[:, 16:, 16:], corner[:, 16:, 16:], "full")  # the corner tile alone
    assert n > 0 and int(count_c) == n
    np.testing.assert_allclose(float(loss_c), ref_c, rtol=1e-5, atol=1e-5)


def test_odd_sizes_block_and_stride():
    features, labels = make_inputs(seed=9, b=2, h=13, w=17, fg=0.4)
    for kw in (dict(mode="block", block_size=8), dict(mode="block", block_size=5), dict(mode="stride", stride=4)):
        loss, count = supervised_local_contrastive_loss_with_count(features, labels, **kw)
        ref, ref_count = reference(features, labels, **_ref_kw(kw))
        assert int(count) == ref_count > 0, kw
        np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5, err_msg=str(kw))


def test_block_dynamic_shapes_in_tf_function():
    features, labels = make_inputs(seed=10, b=2, h=13, w=17, fg=0.4)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 8]), tf.TensorSpec([None, None, None], tf.int32)])
    def fn(f, y):
        return supervised_local_contrastive_loss(f, y, mode="block", block_size=8)

    ref, _ = reference(features, labels, "block", block=8)
    np.testing.assert_allclose(float(fn(features, labels)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("mode", ["stride", "block", "full"])
def test_low_precision_input_is_computed_in_float32(dtype, mode):
    features, labels = make_inputs(seed=11, h=16, w=16, fg=0.3)
    low = tf.cast(features, dtype)
    kw = dict(mode=mode, stride=2, block_size=8)
    loss = supervised_local_contrastive_loss(low, labels, **kw)
    assert loss.dtype == tf.float32
    rounded = tf.cast(low, tf.float64).numpy()
    ref, _ = reference(rounded, labels, mode, stride=2, block=8)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)


def test_bad_mode_raises():
    features, labels = make_inputs()
    with pytest.raises(ValueError):
        supervised_local_contrastive_loss(features, labels, mode="dense")


# --------------------------------------------------------------------------
# Self-supervised local loss
# --------------------------------------------------------------------------


def reference_nt_xent(za: np.ndarray, zb: np.ndarray, t: float) -> float:
    return float(dense_nt_xent(np.asarray(za, np.float64), np.asarray(zb, np.float64), t))


def test_points_documented_coordinates():
    # 16 x 24 map, margins 2 and 3: rows 2, 7, 13; cols 3, 11, 20; quarters 4, 10 / 7, 15.
    grid = [(r, c) for r in (2, 7, 13) for c in (3, 11, 20)]
    quarters = [(4, 7), (4, 15), (10, 7), (10, 15)]
    assert local_contrastive_points(16, 24, 9) == grid
    assert local_contrastive_points(16, 24, 13) == grid + quarters
    assert local_contrastive_points(16, 24, 9, margin=0)[0] == (0, 0)
    assert local_contrastive_points(16, 24, 9, margin=0)[-1] == (15, 23)
    for bad in (7, 12):
        with pytest.raises(ValueError):
            local_contrastive_points(16, 24, bad)
    with pytest.raises(ValueError):
        local_contrastive_points(3, 3, 13)


@pytest.mark.parametrize("positions", [9, 13])
def test_self_supervised_matches_the_dense_reference(positions):
    rng = np.random.default_rng(12)
    f_a = rng.normal(size=(3, 16, 24, 6)).astype(np.float32)
    f_b = (f_a + 0.5 * rng.normal(size=f_a.shape)).astype(np.float32)
    points = [(2, 3), (2, 11), (2, 20), (7, 3), (7, 11), (7, 20), (13, 3), (13, 11), (13, 20)]
    if positions == 13:
        points += [(4, 7), (4, 15), (10, 7), (10, 15)]
    rows, cols = np.array(points).T
    za = f_a[:, rows, cols].reshape(-1, 6)  # [B*P, C], same order for both views
    zb = f_b[:, rows, cols].reshape(-1, 6)
    ref = reference_nt_xent(za, zb, 0.1)
    loss = self_supervised_local_contrastive_loss(f_a, f_b, temperature=0.1, positions=positions)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)
    # float16 input is computed in float32.
    loss16 = self_supervised_local_contrastive_loss(tf.cast(f_a, tf.float16), tf.cast(f_b, tf.float16), positions=positions)
    za16 = f_a.astype(np.float16)[:, rows, cols].reshape(-1, 6)
    zb16 = f_b.astype(np.float16)[:, rows, cols].reshape(-1, 6)
    np.testing.assert_allclose(float(loss16), reference_nt_xent(za16, zb16, 0.1), rtol=1e-5, atol=1e-5)


def test_self_supervised_gradient_and_bad_positions():
    rng = np.random.default_rng(13)
    f_a = tf.constant(rng.normal(size=(2, 16, 16, 4)), tf.float32)
    f_b = tf.constant(rng.normal(size=(2, 16, 16, 4)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([f_a, f_b])
        loss = self_supervised_local_contrastive_loss(f_a, f_b)
    g_a, g_b = tape.gradient(loss, [f_a, f_b])
    nonzero = np.argwhere(np.abs(g_a.numpy()).sum(-1) > 0)
    assert len({(int(r), int(c)) for _, r, c in nonzero}) == 13  # only the 13 points
    assert np.all(np.isfinite(g_b.numpy()))
    with pytest.raises(ValueError):
        self_supervised_local_contrastive_loss(f_a, f_b, positions=5)
