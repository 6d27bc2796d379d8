"""Mixup and TCSM: losses against hand-worked cases, the EMA teacher, and every method end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from tfsemiseg.losses import consistency_loss, flip_rotate, mixup_loss, segmentation_loss, sigmoid_rampup


def test_mixup_loss_hand_worked():
    # one image of 1 x 2 pixels, two classes; logits log(3) vs 0 -> p = (3/4, 1/4) for class 0
    logits = tf.constant([[[[math.log(3.0), 0.0], [0.0, math.log(3.0)]]]])  # pixel 0 -> class 0, pixel 1 -> class 1
    y = tf.constant([[[0, 1]]])
    y_perm = tf.constant([[[1, 1]]])
    lam = 0.25
    # CE(y): both pixels have p(true) = 3/4 -> -log(3/4)
    ce_y = -math.log(0.75)
    # Dice over class 1: p1 = (1/4, 3/4), g = (0, 1): I = 3/4, P + G = 1 + 1
    eps = 1e-5
    dice_y = 1 - (2 * 0.75 + eps) / (2.0 + eps)
    # CE(y_perm): pixel 0 true class 1 -> p = 1/4; pixel 1 -> 3/4
    ce_p = -(math.log(0.25) + math.log(0.75)) / 2
    dice_p = 1 - (2 * (0.25 + 0.75) + eps) / (1.0 + 2.0 + eps)
    expected = lam * (ce_y + dice_y) + (1 - lam) * (ce_p + dice_p)
    got = float(mixup_loss(logits, y, y_perm, lam, 2))
    assert got == pytest.approx(expected, rel=1e-5)
    # lam = 1 is plain supervised loss
    assert float(mixup_loss(logits, y, y_perm, 1.0, 2)) == pytest.approx(float(segmentation_loss(logits, y, 2)))


def test_consistency_is_mse_and_teacher_gets_no_gradient():
    s = tf.Variable([[[[0.2, 0.8]]]])
    t = tf.Variable([[[[0.6, 0.4]]]])
    with tf.GradientTape(persistent=True) as tape:
        loss = consistency_loss(s, t)
    assert float(loss) == pytest.approx(((0.4) ** 2 + (0.4) ** 2) / 2)
    assert tape.gradient(loss, t) is None
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), [[[[-0.4, 0.4]]]], rtol=1e-6)


def test_sigmoid_rampup_values():
    assert float(sigmoid_rampup(0.0, 10.0)) == pytest.approx(math.exp(-5))
    assert float(sigmoid_rampup(5.0, 10.0)) == pytest.approx(math.exp(-5 * 0.25))
    assert float(sigmoid_rampup(30.0, 10.0)) == 1.0
    assert float(sigmoid_rampup(0.0, 0.0)) == 1.0


@pytest.mark.parametrize("k,flip", [(0, False), (1, False), (2, True), (3, True)])
def test_flip_rotate_matches_numpy(k, flip):
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    expected = np.flip(x, axis=2) if flip else x
    expected = np.rot90(expected, k, axes=(1, 2))
    got = flip_rotate(tf.constant(x), tf.constant(k), tf.constant(flip)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_beta_sampling_is_uniform_for_alpha_one():
    from tfsemiseg.training.baselines import sample_beta

    draws = np.array([float(sample_beta(1.0, tf.constant([[i, 0], [i, 1]], tf.int64))) for i in range(400)])
    assert draws.min() >= 0 and draws.max() <= 1
    # Beta(1, 1) is uniform: deciles near 0.1 .. 0.9
    np.testing.assert_allclose(np.quantile(draws, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75], atol=0.08)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    from tfsemiseg.config import load_config
    from tfsemiseg.data.phantom import make_phantom
    from tfsemiseg.data.prepared import prepare_dataset

    tmp = tmp_path_factory.mktemp("methods")
    data_dir = make_phantom(tmp / "data", num_train=8, num_test=1, shape=(20, 24, 12), seed=1)
    cfg = load_config(REPO / "configs" / "tiny.yaml").replace(**{
        "data.cache_dir": str(tmp / "cache"),
        "data.image_size": 16,
        "model.depth": 2,
        "model.base_width": 4,
        "train.global_stage.epochs": 1, "train.global_stage.batch_size": 48,
        "train.local_stage.epochs": 1, "train.local_stage.batch_size": 6, "train.local_loss.block_size": 8,
        "train.finetune_stage.epochs": 1, "train.finetune_stage.batch_size": 6,
        "train.finetune_stage.validate_every_epochs": 1,
        "train.baselines.tcsm_unlabeled_batch_size": 4,
    })
    root = tmp / "run"
    return cfg, prepare_dataset(cfg, data_dir, root), root


def test_tcsm_teacher_is_an_ema_of_the_student(phantom_run):
    from tfsemiseg.data.prepared import training_arrays
    from tfsemiseg.training.baselines import TCSMTask

    cfg, data, _ = phantom_run
    task = TCSMTask(cfg, training_arrays(data, data.split(0), 0.5), 3)
    task.build()
    for t, s in zip(task.output_model.variables, task.student.variables):
        np.testing.assert_array_equal(t.numpy(), s.numpy())  # the teacher starts as the student
    rng = np.random.default_rng(0)
    d = cfg.train.baselines.tcsm_ema_decay

    def update_and_check(expected_decay):
        trainable_before = [v.numpy().copy() for v in task.output_model.trainable_variables]
        stats_before = [v.numpy().copy() for v in task.output_model.non_trainable_variables]
        for v in task.student.variables:
            v.assign(rng.normal(size=v.shape).astype(np.float32))
        task.after_update()
        for t, b, s in zip(task.output_model.trainable_variables, trainable_before, task.student.trainable_variables):
            np.testing.assert_allclose(t.numpy(), expected_decay * b + (1 - expected_decay) * s.numpy(),
                                       rtol=1e-5, atol=1e-6)
        for t, b in zip(task.output_model.non_trainable_variables, stats_before):  # the teacher keeps its own statistics
            np.testing.assert_array_equal(t.numpy(), b)

    update_and_check(1 - 1 / 2)  # the first update: the mean of the initial weights and the student's
    assert int(task.updates) == 1
    update_and_check(1 - 1 / 3)
    task.updates.assign(500)
    update_and_check(d)  # later: the configured decay
    assert int(task.updates) == 501


def test_tcsm_teacher_forward_uses_batch_statistics(phantom_run):
    from tfsemiseg.data.prepared import training_arrays
    from tfsemiseg.training.baselines import TCSMTask

    cfg, data, _ = phantom_run
    task = TCSMTask(cfg, training_arrays(data, data.split(0), 0.5), 3)
    task.build()
    batch = next(iter(task.dataset(seed=0)))
    teacher_stats = [v.numpy().copy() for v in task.output_model.non_trainable_variables]
    assert teacher_stats, "the U-Net has BatchNorm statistics"
    loss, count = task.loss(batch, tf.constant([1, 0], tf.int64))
    assert np.isfinite(float(loss)) and int(count) == cfg.train.finetune_stage.batch_size
    # training-mode forward passes: the teacher's moving statistics moved, as the student's did
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(task.output_model.non_trainable_variables, teacher_stats))
    assert {id(v) for v in task.output_model.non_trainable_variables} <= {id(v) for v in task.state_variables}


@pytest.mark.parametrize("rotate90", [True, False])
def test_tcsm_transforms_rotate_only_when_asked(phantom_run, rotate90):
    from tfsemiseg.data.prepared import training_arrays
    from tfsemiseg.training.baselines import TCSMTask

    cfg, data, _ = phantom_run
    cfg = cfg.replace(**{"train.baselines.tcsm_rotate90": rotate90})
    task = TCSMTask(cfg, training_arrays(data, data.split(0), 0.5), 3)
    draws = [task.sample_transform(tf.constant([3, i], tf.int64)) for i in range(200)]
    ks = {int(k) for k, _ in draws}
    assert ks == ({0, 1, 2, 3} if rotate90 else {0})
    assert 60 < sum(bool(f) for _, f in draws) < 140  # flips about half the time either way


def test_every_method_runs_and_writes_a_result(phantom_run):
    from tfsemiseg.layout import Cell, RunLayout
    from tfsemiseg.training.methods import run_method
    from tfsemiseg.training.plans import METHODS
    from tfsemiseg.training.strategy import make_strategy

    cfg, data, root = phantom_run
    strategy = make_strategy(0)
    run = RunLayout(root)
    for method in METHODS:
        cell = Cell(0, 0.5, method)
        run_method(cfg, data, run, cell, strategy, echo=lambda s: None)
        result = json.loads(run.result(cell).read_text())
        assert result["method"] == method and result["fraction"] == 0.5
        assert len(result["metrics"]["pooled_dice"]["per_class"]) == 2
        assert set(result["stages"]) == {p.name for p in METHODS[method]}
        assert result["split_digest"] == data.split(0).digest()
    # the label-free global stage ran once and was shared by every method that starts from it
    assert len(list(Path(root, "fold0").glob("**/global/stage.json"))) == 1
