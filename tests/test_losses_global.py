"""Tests of the global NT-Xent loss: dense reference and the 2-replica convention."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg.losses import global_contrastive_loss
from tfsemiseg.testing import dense_nt_xent

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_nt_xent(za: np.ndarray, zb: np.ndarray, t: float) -> float:
    """The dense reference in float64."""
    return float(dense_nt_xent(np.asarray(za, np.float64), np.asarray(zb, np.float64), t))


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("b,d", [(1, 3), (5, 7), (16, 32)])
def test_nt_xent_matches_the_dense_reference(b, d, t):
    rng = np.random.default_rng(b * 100 + d)
    za = rng.normal(size=(b, d)).astype(np.float32)
    zb = (za + rng.normal(size=(b, d))).astype(np.float32)
    loss = global_contrastive_loss(za, zb, temperature=t)
    assert loss.dtype == tf.float32 and loss.shape == ()
    np.testing.assert_allclose(float(loss), reference_nt_xent(za, zb, t), rtol=1e-5, atol=1e-5)


def test_nt_xent_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    za = rng.normal(size=(3, 4))
    zb = rng.normal(size=(3, 4))
    z = tf.constant(np.concatenate([za, zb]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = global_contrastive_loss(z[:3], z[3:], temperature=0.5)
    grad = tape.gradient(loss, z).numpy()
    eps = 1e-6
    zz = np.concatenate([za, zb])
    fd = np.zeros_like(zz)
    for idx in np.ndindex(*zz.shape):
        hi, lo = zz.copy(), zz.copy()
        hi[idx] += eps
        lo[idx] -= eps
        fd[idx] = (reference_nt_xent(hi[:3], hi[3:], 0.5) - reference_nt_xent(lo[:3], lo[3:], 0.5)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-5)


def test_nt_xent_low_precision_input_in_float32():
    rng = np.random.default_rng(1)
    za = rng.normal(size=(8, 16))
    zb = rng.normal(size=(8, 16))
    for dtype, np_dtype in ((tf.float16, np.float16), (tf.bfloat16, None)):
        a, b = tf.cast(za, dtype), tf.cast(zb, dtype)
        loss = global_contrastive_loss(a, b, temperature=0.1)
        assert loss.dtype == tf.float32
        ra = tf.cast(a, tf.float64).numpy()
        rb = tf.cast(b, tf.float64).numpy()
        np.testing.assert_allclose(float(loss), reference_nt_xent(ra, rb, 0.1), rtol=1e-5, atol=1e-5)


def test_nt_xent_in_tf_function_and_cross_replica_context():
    rng = np.random.default_rng(2)
    za = rng.normal(size=(6, 5)).astype(np.float32)
    zb = rng.normal(size=(6, 5)).astype(np.float32)
    ref = reference_nt_xent(za, zb, 0.5)
    np.testing.assert_allclose(float(tf.function(global_contrastive_loss)(za, zb)), ref, rtol=1e-5)
    # Inside a strategy scope but outside strategy.run: no replica context, same loss.
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        np.testing.assert_allclose(float(global_contrastive_loss(za, zb)), ref, rtol=1e-5)


# Runs in its own interpreter so that the 2 logical CPUs can be configured
# before TensorFlow initialises its devices, whatever the test order.
_DISTRIBUTED_CHECK = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    from tfsemiseg.training.strategy import configure_logical_cpus, replica_gather

    configure_logical_cpus(2)

    from tfsemiseg.losses import global_contrastive_loss
    from tfsemiseg.testing import dense_nt_xent

    rng = np.random.default_rng(0)
    G, DIN, D, T = 8, 6, 5, 0.2
    xa = rng.normal(size=(G, DIN)).astype(np.float32)
    xb = rng.normal(size=(G, DIN)).astype(np.float32)
    w0 = rng.normal(size=(DIN, D)).astype(np.float32)

    # Single device, global batch.
    w = tf.Variable(w0)
    za, zb = tf.constant(xa) @ w0, tf.constant(xb) @ w0
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([za, zb])
        z_loss = global_contrastive_loss(za, zb, T)
        w_loss = global_contrastive_loss(tf.constant(xa) @ w, tf.constant(xb) @ w, T)
    ref_gza, ref_gzb = [g.numpy() for g in tape.gradient(z_loss, [za, zb])]
    ref_gw = tape.gradient(w_loss, w).numpy()
    ref_loss = float(w_loss)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    R = strategy.num_replicas_in_sync
    assert R == 2, R
    with strategy.scope():
        wm = tf.Variable(w0)

    def check(split):
        bounds = np.cumsum([0] + list(split))
        def part(x):
            return strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(x[bounds[ctx.replica_id_in_sync_group]:bounds[ctx.replica_id_in_sync_group + 1]])
            )

        @tf.function
        def step(xa, xb):
            def replica_fn(xa, xb):
                with tf.GradientTape(persistent=True) as tape:
                    za, zb = xa @ wm, xb @ wm
                    tape.watch([za, zb])
                    # The convention: the task gathers, the loss sees the global batch,
                    # the engine divides by the number of replicas and sums gradients.
                    scaled = global_contrastive_loss(replica_gather(za), replica_gather(zb), T) / R
                    own = global_contrastive_loss(za, zb, T)  # no gather: this replica's batch alone
                gz = tape.gradient(scaled, [za, zb])
                return scaled, own, tape.gradient(scaled, wm), gz[0], gz[1]
            scaled, own, gw, gza, gzb = strategy.run(replica_fn, args=(xa, xb))
            return (
                strategy.reduce("SUM", scaled, axis=None),
                strategy.experimental_local_results(own),
                strategy.reduce("SUM", gw, axis=None),
                strategy.experimental_local_results(gza),
                strategy.experimental_local_results(gzb),
            )

        loss, own, gw, gza, gzb = step(part(xa), part(xb))
        np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gw.numpy(), ref_gw, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.concatenate([g.numpy() for g in gza]), ref_gza, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.concatenate([g.numpy() for g in gzb]), ref_gzb, rtol=1e-4, atol=1e-6)
        assert np.abs(ref_gw).max() > 1e-3
        # Inside a replica context the loss is still a pure function of its inputs.
        ya, yb = (xa @ w0).astype(np.float64), (xb @ w0).astype(np.float64)
        for r, value in enumerate(own):
            part_ref = dense_nt_xent(ya[bounds[r]:bounds[r + 1]], yb[bounds[r]:bounds[r + 1]], T)
            np.testing.assert_allclose(float(value), float(part_ref), rtol=1e-5, atol=1e-6)

    check([4, 4])
    check([3, 5])  # uneven split (e.g. last batch without drop_remainder)
    print("DISTRIBUTED_OK")
    """
)


def test_two_replicas_with_gathered_inputs_equal_single_device():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, "-c", _DISTRIBUTED_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "DISTRIBUTED_OK" in proc.stdout, proc.stdout + proc.stderr[-5000:]
