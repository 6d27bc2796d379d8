"""The training engine in one process: learning, TensorBoard, non-finite loss, skipped steps,
the best checkpoint by validation loss.

Every model is a tiny U-Net (depth 2, width 4-8) on 16x16 or 32x32 slices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import cfg_with, no_aug
from tfsemiseg.data.prepared import TrainingArrays, prepare_dataset, training_arrays
from tfsemiseg.inference import predict_probabilities
from tfsemiseg.metrics import PooledDice
from tfsemiseg.data.pipelines import global_dataset
from tfsemiseg.testing import dense_nt_xent
from tfsemiseg.training.engine import Trainer, TrainingError, write_stage_done
from tfsemiseg.training.stages import FinetuneTask, GlobalTask, LocalTask

NUM_CLASSES = 3
EPOCHS = 50  # of 4 steps


def _tiny(cfg, size: int = 16, width: int = 4):
    return cfg.replace(**{
        "data.image_size": size, "model.depth": 2, "model.base_width": width,
        "model.global_head_dims": [16, 8], "model.local_head_dims": [8, 8],
    })


def _blobs(n: int, size: int, foreground: bool = True, seed: int = 0):
    """[n, size, size] images and labels with one square per class (or no foreground)."""
    rng = np.random.default_rng(seed)
    images = (0.3 + 0.1 * rng.standard_normal((n, size, size))).astype(np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    if foreground:
        for i in range(n):
            r, c = rng.integers(1, size // 2 - 3, 2)
            labels[i, r : r + 4, c : c + 4] = 1
            labels[i, r + size // 2 - 2 : r + size // 2 + 2, c : c + 4] = 2
        images[labels == 1] += 0.5
        images[labels == 2] -= 0.2
    return images, labels


def _weights(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.variables}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    changed = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not changed, f"variables changed: {changed}"


# --------------------------------------------------------------------------- fit on phantom slices


@pytest.fixture(scope="module")
def finetuned(phantom_dir, tmp_path_factory):
    """A tiny U-Net fine-tuned (no augmentation) for 200 steps on 16 phantom slices at
    32x32; the validation volumes of the split are evaluated after the last epoch."""
    tmp = tmp_path_factory.mktemp("finetuned")
    cfg = _tiny(no_aug(cfg_with(tmp)), size=32, width=8).replace(**{
        "train.finetune_stage": {"epochs": EPOCHS, "batch_size": 4, "learning_rate": 1e-2,
                                 "validate_every_epochs": EPOCHS, "checkpoint_every_steps": 0},
    })
    data = prepare_dataset(cfg, phantom_dir, tmp / "run")
    split = data.split(0)
    arrays = training_arrays(data, split, 1.0)
    has_fg = np.flatnonzero(arrays.labeled_labels.reshape(len(arrays.labeled_labels), -1).any(1))
    pick = has_fg[np.linspace(0, len(has_fg) - 1, 16).astype(int)]
    images, labels = arrays.labeled_images[pick], arrays.labeled_labels[pick]
    keras.utils.set_random_seed(0)  # the initial weights
    task = FinetuneTask(cfg, TrainingArrays(images, images, labels, [], []), NUM_CLASSES,
                        val_volumes=[data.volumes[c] for c in split.val])
    trainer = Trainer(task, task.optim, tmp / "finetune", tf.distribute.get_strategy(), progress=False)
    result = trainer.fit()
    return task, result, images, labels, tmp / "finetune"


def test_finetune_reaches_high_dice_on_its_training_slices(finetuned) -> None:
    task, result, images, labels, _ = finetuned
    assert result.steps == EPOCHS * 4 and result.epochs == EPOCHS
    assert math.isfinite(result.last_loss) and result.last_loss < result.history[0]["loss"]
    metric = PooledDice(NUM_CLASSES)
    metric.update(predict_probabilities(task.output_model, images).argmax(-1), labels)
    dice = metric.result()
    assert dice["mean"] > 0.9, dice


def _events(folder: Path) -> dict[str, list]:
    """tag -> [(step, summary value)] of every event file in `folder`."""
    out: dict[str, list] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for f in files:
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value))
    return out


def test_tensorboard_holds_training_and_validation_summaries(finetuned) -> None:
    _, result, _, _, stage_dir = finetuned
    events = _events(stage_dir / "tb")
    scalars = ["finetune/loss", "finetune/learning_rate", "finetune/images_per_second",
               "finetune/val_dice", "finetune/val_dice_class1", "finetune/val_dice_class2"]
    for tag in scalars + ["finetune/val_overlay"]:
        assert tag in events, f"{tag} missing; tags: {sorted(events)}"
    value = lambda v: float(tf.make_ndarray(v.tensor))  # noqa: E731
    # written every 10 steps and at the end of every epoch (4 steps)
    expected = sorted(set(range(10, 4 * EPOCHS + 1, 10)) | set(range(4, 4 * EPOCHS + 1, 4)))
    for tag in ("finetune/loss", "finetune/learning_rate", "finetune/images_per_second"):
        assert [step for step, _ in events[tag]] == expected, tag
    lr = [value(v) for _, v in events["finetune/learning_rate"]]
    assert np.allclose(lr, 1e-2)
    assert all(value(v) > 0 for _, v in events["finetune/images_per_second"])
    # validation after the last epoch, as in the history
    for key in ("dice", "dice_class1", "dice_class2"):
        (step, v), = events[f"finetune/val_{key}"]
        assert step == 4 * EPOCHS and value(v) == pytest.approx(result.history[-1][f"val_{key}"], abs=1e-6)
    assert result.best_dice == pytest.approx(result.history[-1]["val_dice"])
    # the image summary: input | label | prediction, 3 channels (PNG-encoded per image)
    steps, image = events["finetune/val_overlay"][-1]
    assert image.metadata.plugin_data.plugin_name == "images"
    blobs = tf.make_ndarray(image.tensor)  # [width, height, png...]
    assert int(blobs[0]) == 3 * 32 and int(blobs[1]) == 32 and len(blobs) >= 3
    decoded = tf.io.decode_png(blobs[2]).numpy()
    assert decoded.shape == (32, 96, 3)


# --------------------------------------------------------------------------- non-finite loss


class NanAtStep(FinetuneTask):
    """A fine-tune task whose loss becomes NaN from its `nan_from`-th call on."""

    nan_from = 3

    def build(self) -> None:
        super().build()
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def loss(self, batch, seed):
        loss, count = super().loss(batch, seed)
        n = self.calls.assign_add(1)
        return tf.where(n >= self.nan_from, tf.constant(float("nan")), loss), count


def test_non_finite_loss_stops_with_step_and_stage_and_keeps_last_good_checkpoint(make_cfg, tmp_path) -> None:
    cfg = _tiny(make_cfg()).replace(**{"train.finetune_stage": {
        "epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "checkpoint_every_steps": 1}})
    images, labels = _blobs(8, 16)
    arrays = TrainingArrays(images, images, labels, [], [])
    stage_dir = tmp_path / "nan"
    task = NanAtStep(cfg, arrays, NUM_CLASSES)
    trainer = Trainer(task, task.optim, stage_dir, tf.distribute.get_strategy(), progress=False)
    with pytest.raises(TrainingError) as info:
        trainer.fit()
    message = str(info.value)
    assert "stage finetune" in message and "at step 3" in message and "non-finite loss (nan)" in message
    assert message.endswith("ckpt-2"), message
    assert trainer.manager.latest_checkpoint.endswith("ckpt-2")
    assert int(trainer.step) == 2 and int(trainer.optimizer.iterations.numpy()) == 2
    # the NaN step changed nothing: the model is still the one of checkpoint 2
    after_nan = _weights(task.output_model)
    assert all(np.isfinite(w).all() for w in after_nan.values())
    # the same stage restarted resumes from that checkpoint, with those very weights
    again = FinetuneTask(cfg, arrays, NUM_CLASSES)
    resumed = Trainer(again, again.optim, stage_dir, tf.distribute.get_strategy(), progress=False)
    resumed.ckpt.restore(resumed.manager.latest_checkpoint).assert_existing_objects_matched()
    assert int(resumed.step) == 2
    _assert_same(_weights(again.output_model), after_nan)


# --------------------------------------------------------------------------- skipped steps


def test_local_batches_without_foreground_are_skipped_without_any_change(make_cfg, tmp_path) -> None:
    cfg = _tiny(make_cfg()).replace(**{"train.local_stage": {
        "epochs": 1, "batch_size": 2, "learning_rate": 1e-2, "checkpoint_every_steps": 0}, "train.local_loss.stride": 2})
    empty_images, empty_labels = _blobs(2, 16, foreground=False)
    images, labels = _blobs(2, 16, seed=1)
    task = LocalTask(cfg, TrainingArrays(images, images, labels, [], []), NUM_CLASSES, mode="stride")
    strategy = tf.distribute.get_strategy()
    trainer = Trainer(task, task.optim, tmp_path / "local", strategy, progress=False)

    def batches(x, y, n):
        views = (tf.constant(x[..., None]), tf.constant(x[..., None] * 0.9), tf.constant(y.astype(np.int32)))
        return tf.data.Dataset.from_tensors(views).repeat(n)

    # two batches without foreground, then one with: step by step
    ds = batches(empty_images, empty_labels, 2).concatenate(batches(images, labels, 1))
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    before = _weights(task.output_model)
    for _ in range(2):
        loss, count = trainer._train_step(iterator)
        assert float(count) == 0 and float(loss) == 0.0
        _assert_same(_weights(task.output_model), before)  # BatchNorm statistics included
        assert int(trainer.optimizer.iterations.numpy()) == 0
    loss, count = trainer._train_step(iterator)
    assert float(count) > 0 and float(loss) > 0
    assert int(trainer.optimizer.iterations.numpy()) == 1
    after = _weights(task.output_model)
    assert any(not np.array_equal(after[k], before[k]) for k in before if "kernel" in k)
    assert any(not np.array_equal(after[k], before[k]) for k in before if "moving_mean" in k)

    # through fit: an epoch of such batches is all skipped steps, and the history says so
    task.steps_per_epoch = 3
    task.dataset = lambda seed: batches(empty_images, empty_labels, -1)
    result = trainer.fit()
    assert result.steps == 3 and result.history[0]["skipped_steps"] == 3
    assert math.isnan(result.last_loss) and math.isnan(result.history[0]["loss"])
    assert int(trainer.optimizer.iterations.numpy()) == 1
    _assert_same(_weights(task.output_model), after)


# --------------------------------------------------------------------------- best checkpoint by validation loss


class ScriptedLoss(GlobalTask):
    """A global task whose validations report the losses of `script` in turn, recording the
    weights each one scored."""

    script = (3.0, 1.0, 2.0, 5.0)  # the lowest: epoch 2

    def validate(self):
        self.scored = getattr(self, "scored", []) + [_weights(self.output_model)]
        return {"loss": self.script[len(self.scored) - 1]}


class ScriptedDice(FinetuneTask):
    """The same for fine-tuning's validation Dice."""

    script = (0.2, 0.9, 0.5, 0.1)  # the highest: epoch 2

    def validate(self):
        self.scored = getattr(self, "scored", []) + [_weights(self.output_model)]
        return {"dice": self.script[len(self.scored) - 1]}


@pytest.mark.parametrize("select_best", [True, False])
@pytest.mark.parametrize("task_class", [ScriptedLoss, ScriptedDice])
def test_the_best_validated_checkpoint_is_kept_only_with_select_best(make_cfg, tmp_path, task_class,
                                                                       select_best) -> None:
    stage, key = ("global", "loss") if task_class is ScriptedLoss else ("finetune", "dice")
    cfg = _tiny(make_cfg()).replace(**{f"train.{stage}_stage": {
        "epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "checkpoint_every_steps": 0, "select_best": select_best}})
    images, labels = _blobs(8, 16)
    task = task_class(cfg, TrainingArrays(images, images, labels, [], []), NUM_CLASSES)
    trainer = Trainer(task, task.optim, tmp_path / stage, tf.distribute.get_strategy(), progress=False)
    result = trainer.fit()
    assert [row[f"val_{key}"] for row in result.history] == list(task_class.script)  # validated either way
    kept = _weights(task.output_model)
    write_stage_done(tmp_path / stage, result, {})
    info = json.loads((tmp_path / stage / "stage.json").read_text())
    best, other = (result.best_loss, result.best_dice) if key == "loss" else (result.best_dice, result.best_loss)
    assert other is None and info["best_val_dice"] == result.best_dice
    if select_best:  # epoch 2's weights, restored after the last epoch
        assert best == task_class.script[1] and info[f"best_val_{key}"] == best
        _assert_same(kept, task.scored[1])
        assert any(not np.array_equal(kept[k], task.scored[3][k]) for k in kept if "kernel" in k)
    else:  # the last epoch's, and no best recorded
        assert best is None and info.get(f"best_val_{key}") is None
        _assert_same(kept, task.scored[3])


def test_global_validation_loss_is_nt_xent_of_fixed_views_in_inference_mode(make_cfg) -> None:
    cfg = _tiny(make_cfg()).replace(**{"train.global_stage.batch_size": 4})
    images, labels = _blobs(10, 16)
    arrays = TrainingArrays(images, images, labels, [], [])
    keras.utils.set_random_seed(0)
    task = GlobalTask(cfg, arrays, NUM_CLASSES, val_images=images[:10])
    task.build()
    model, t = task.output_model, cfg.train.global_loss.temperature

    def expected(val: np.ndarray, batch: int) -> float:  # 10 slices in batches of 4: two, 2 slices dropped
        views = global_dataset(val, batch, cfg.augment, GlobalTask.VALIDATION_SEED, deterministic=True)
        losses = []
        for a, b in views.take(len(val) // batch):
            assert not np.allclose(a.numpy(), b.numpy())  # two augmented views
            z = model(tf.concat([a, b], 0), training=False).numpy().astype(np.float64)
            losses.append(float(dense_nt_xent(z[:batch], z[batch:], t)))
        return float(np.mean(losses))

    first = task.validate()["loss"]
    assert first == pytest.approx(expected(images, 4), rel=1e-5)
    assert task.validate()["loss"] == first  # the same views at every validation
    # as two replicas would train: the forward pass in chunks of 2 views x 2 slices, the same loss
    halves = GlobalTask(cfg, arrays, NUM_CLASSES, val_images=images, num_replicas=2)
    halves.unet = task.unet
    assert halves.validate()["loss"] == pytest.approx(first, rel=1e-5)
    few = GlobalTask(cfg, arrays, NUM_CLASSES, val_images=images[:3])  # fewer slices than a batch: one batch of 3
    few.unet = task.unet
    assert few.validate()["loss"] == pytest.approx(expected(images[:3], 3), rel=1e-5)
    assert GlobalTask(cfg, arrays, NUM_CLASSES).validate() is None
    with pytest.raises(ValueError, match="at least 2 slices, got 1"):
        GlobalTask(cfg, arrays, NUM_CLASSES, val_images=images[:1])
