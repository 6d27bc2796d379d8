"""The one training loop every stage and baseline uses.

A stage is a `Task`: it builds its model(s), computes its loss on one per-replica batch,
and makes its dataset. The `Trainer` owns everything else: strategy, optimizer and
learning-rate schedule, the tf.function step through `strategy.run`, checkpoints
(resume by re-running the same command), TensorBoard summaries, progress and logs,
validation with best-checkpoint selection, and the non-finite-loss guard.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg.config import OptimConfig
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.io_utils import atomic_write_json, ensure_writable_dir
from tfsemiseg.layout import stage_files
from tfsemiseg.training.strategy import worker_role

class TrainingError(TfSemisegError):
    """Training cannot go on (non-finite loss, ...)."""


class Task:
    """What a stage supplies to the Trainer. Subclasses override the marked methods.

    `build` runs inside `strategy.scope()`; `loss` runs per replica inside `strategy.run`
    and returns (loss, count): the scalar float32 loss of the replica's batch (a mean
    over its samples, or a loss of the gathered global batch that every replica
    computes alike) and the number of terms that contributed (0 means "nothing to learn
    from": the step is skipped when the sum over replicas is 0).

    `loss` gets the step's random seed, int64 [2], the same on every replica and every
    worker: a task draws its randomness with stateless ops for the global batch and
    takes its replica's part (`replica_slice`), so any number of replicas draws what one
    device draws.
    """

    name: str = "task"

    def build(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def output_model(self) -> keras.Model:  # pragma: no cover - interface
        """The model whose weights the stage writes (and fine-tuning validates)."""
        raise NotImplementedError

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return self.output_model.trainable_variables

    @property
    def state_variables(self) -> list[tf.Variable]:
        """Non-trainable state the training forward pass updates (BatchNorm statistics)."""
        return self.output_model.non_trainable_variables

    def checkpoint_items(self) -> dict[str, Any]:
        """Objects saved in checkpoints besides the optimizer and counters."""
        return {"model": self.output_model}

    def loss(self, batch: Any, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def after_update(self) -> None:
        """In-graph hook after each applied update (e.g. an EMA teacher), in cross-replica context."""
        return None

    def dataset(self, seed: int) -> tf.data.Dataset:  # pragma: no cover - interface
        """Infinite dataset of global batches."""
        raise NotImplementedError

    steps_per_epoch: int = 1
    images_per_step: int = 1

    def validate(self) -> Optional[dict[str, float]]:
        """Validation metrics, or None. With the stage's `select_best`, the best checkpoint is the
        one of the highest 'dice' or, for a task that reports no 'dice', of the lowest 'loss'."""
        return None

    def summary_images(self) -> dict[str, np.ndarray]:
        """Images [n, H, W, 3] in [0, 1] for TensorBoard, by tag."""
        return {}


@dataclass
class FitResult:
    stage: str
    steps: int
    epochs: int
    seconds: float
    last_loss: float
    best_dice: Optional[float] = None
    best_loss: Optional[float] = None
    validation_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def learning_rate_schedule(cfg: OptimConfig, total_steps: int, steps_per_epoch: int):
    """Constant or cosine decay to 0, with optional linear warm-up (in epochs)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "constant" and warmup == 0:
        return cfg.learning_rate
    decay_steps = max(1, total_steps - warmup)
    alpha = 0.0 if cfg.schedule == "cosine" else 1.0
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else cfg.learning_rate,
        decay_steps=decay_steps,
        alpha=alpha,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(cfg: OptimConfig, lr: Any, precision: str) -> keras.Optimizer:
    """Adam (the paper's optimizer), AdamW when weight decay is set; loss scaling for float16."""
    kwargs = {"learning_rate": lr, "global_clipnorm": cfg.clip_norm}
    if cfg.weight_decay > 0:
        opt: keras.Optimizer = keras.optimizers.AdamW(weight_decay=cfg.weight_decay, **kwargs)
    else:
        opt = keras.optimizers.Adam(**kwargs)
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def stage_finished(stage_dir: Path) -> bool:
    return stage_files(stage_dir).done.is_file()


def _logger(stage_dir: Path, name: str, to_file: bool = True) -> logging.Logger:
    log = logging.getLogger(f"tfsemiseg.{stage_dir}.{to_file}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        if to_file:
            fh = logging.FileHandler(stage_files(stage_dir).log)
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(fh)
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
        log.addHandler(sh)
    return log


class Trainer:
    """Runs one stage to completion in `stage_dir`, resuming from its checkpoints."""

    def __init__(
        self,
        task: Task,
        optim: OptimConfig,
        stage_dir: Path,
        strategy: tf.distribute.Strategy,
        precision: str = "float32",
        seed: int = 0,
        progress: Optional[bool] = None,
    ):
        self.task, self.optim, self.strategy = task, optim, strategy
        self.stage_dir = ensure_writable_dir(Path(stage_dir))
        # Multi-worker: every worker restores from the chief's checkpoints and takes part
        # in saving (it may involve collectives), but only the chief writes into the stage
        # folder; the others save into a scratch folder removed after the stage.
        self.chief, worker = worker_role(strategy)
        self.scratch = None if self.chief else self.stage_dir / f".worker{worker}"
        write_dir = self.stage_dir if self.chief else ensure_writable_dir(self.scratch)
        self.precision, self.seed = precision, seed
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.chief
        self.log = _logger(self.stage_dir, task.name if self.chief else f"{task.name} worker {worker}", self.chief)
        self.total_steps = optim.epochs * task.steps_per_epoch
        with strategy.scope():
            keras.utils.set_random_seed(seed)  # the initial weights follow train.seed too
            task.build()
            self._schedule = learning_rate_schedule(optim, self.total_steps, task.steps_per_epoch)
            # With several replicas the Keras optimizer would clip each replica's partial
            # gradient before summing them; the step clips the summed gradient instead.
            opt_cfg = replace(optim, clip_norm=None) if strategy.num_replicas_in_sync > 1 else optim
            self.optimizer = make_optimizer(opt_cfg, self._schedule, precision)
            # Keras 3: build before the first step, a lazily built optimizer fails in strategy.run
            self.optimizer.build(task.trainable_variables)
        # Outside the scope: one generator, not one per replica. Each step draws its seed in
        # cross-replica context and hands it to every replica (every worker draws alike).
        self.rng = tf.random.Generator.from_seed(seed)
        # Host-side counters, read with int()/float() in the loop: created outside the
        # strategy scope (a MirroredVariable has no __int__/__float__).
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_dice = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_dice")
        # a checkpoint written before `best_loss` existed restores without it (it stays +inf)
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_loss")
        items = dict(task.checkpoint_items())
        self.ckpt = tf.train.Checkpoint(
            optimizer=self.optimizer, step=self.step, epoch=self.epoch, best_dice=self.best_dice,
            best_loss=self.best_loss, rng=self.rng, **items
        )
        self.manager = tf.train.CheckpointManager(self.ckpt, str(stage_files(write_dir).checkpoints), max_to_keep=2)
        self.best_ckpt = tf.train.Checkpoint(**items)
        self.best_manager = tf.train.CheckpointManager(self.best_ckpt, str(stage_files(write_dir).best), max_to_keep=1)
        self.writer = (tf.summary.create_file_writer(str(stage_files(self.stage_dir).tensorboard)) if self.chief
                       else tf.summary.create_noop_writer())
        self._train_step = self._make_train_step()
        self.validation_seconds = 0.0  # this process's (a resumed stage counts from its restart)

    # ------------------------------------------------------------------ step
    def _make_train_step(self) -> Callable:
        strategy, task, opt = self.strategy, self.task, self.optimizer
        num_replicas = strategy.num_replicas_in_sync
        scaled = isinstance(opt, keras.optimizers.LossScaleOptimizer)
        clip_norm = self.optim.clip_norm if num_replicas > 1 else None  # else the optimizer clips
        # State the forward pass changes (BatchNorm moving statistics): put back when the
        # step is skipped (nothing to learn from) or rejected (non-finite loss).
        state = list(task.state_variables)

        def forward_backward(batch, seed):
            with tf.GradientTape() as tape:
                loss, count = task.loss(batch, seed)
                loss = tf.cast(loss, tf.float32)
                per_replica = loss / num_replicas
                if scaled:
                    per_replica = opt.scale_loss(per_replica)
            grads = tape.gradient(per_replica, task.trainable_variables)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, task.trainable_variables)]
            if clip_norm is not None:
                # the optimizer sums the replicas' gradients: clip by the norm of that sum
                total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
                norm = tf.linalg.global_norm(total)
                if scaled:
                    norm = norm / tf.cast(opt.scale_loss(tf.constant(1.0)), norm.dtype)
                grads = [g * (clip_norm / tf.maximum(norm, clip_norm)) for g in grads]
            return loss, tf.cast(count, tf.float32), grads

        def apply(grads):
            opt.apply(grads, task.trainable_variables)

        @tf.function
        def train_step(iterator):
            batch = next(iterator)
            saved = [tf.identity(v) for v in state]
            seed = self.rng.make_seeds(1)[:, 0]
            loss, count, grads = strategy.run(forward_backward, args=(batch, seed))
            mean_loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
            total = strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None)
            finite = tf.math.is_finite(mean_loss)
            if total > 0 and finite:
                strategy.run(apply, args=(grads,))
                task.after_update()  # cross-replica context: mirrored variables updated alike
            else:
                for v, value in zip(state, saved):
                    v.assign(value)
            return mean_loss, total

        return train_step

    # ------------------------------------------------------------------ loop
    def fit(self) -> FitResult:
        optim, task = self.optim, self.task
        latest = self._chief_checkpoint()
        if latest:
            self.ckpt.restore(latest)
            self.log.info(f"resumed from {latest} at step {int(self.step)}, epoch {int(self.epoch)}")
        start_time = time.perf_counter()
        history: list[dict[str, float]] = []
        last_loss = float("nan")
        while int(self.epoch) < optim.epochs:
            epoch = int(self.epoch)
            done_in_epoch = int(self.step) - epoch * task.steps_per_epoch
            ds = task.dataset(self.seed + epoch).skip(done_in_epoch)
            iterator = iter(self.strategy.experimental_distribute_dataset(ds))
            bar = keras.utils.Progbar(task.steps_per_epoch, stateful_metrics=["loss", "img/s"]) if self.progress else None
            if bar and done_in_epoch:
                bar.update(done_in_epoch)
            t0, losses, skipped = time.perf_counter(), [], 0
            for i in range(done_in_epoch, task.steps_per_epoch):
                loss, count = self._train_step(iterator)
                loss_v = float(loss)
                step = int(self.step) + 1
                if not math.isfinite(loss_v):
                    good = self._chief_checkpoint() or "none"
                    raise TrainingError(
                        f"stage {task.name}: non-finite loss ({loss_v}) at step {step}; "
                        f"the last good checkpoint is kept: {good}"
                    )
                self.step.assign(step)
                if float(count) == 0:
                    skipped += 1
                else:
                    losses.append(loss_v)
                    last_loss = loss_v
                elapsed = time.perf_counter() - t0
                ips = (i + 1 - done_in_epoch) * task.images_per_step / max(elapsed, 1e-9)
                if step % 10 == 0 or i == task.steps_per_epoch - 1:
                    with self.writer.as_default(step=step):
                        tf.summary.scalar(f"{task.name}/loss", loss_v)
                        tf.summary.scalar(f"{task.name}/learning_rate", self._current_lr())
                        tf.summary.scalar(f"{task.name}/images_per_second", ips)
                if bar:
                    bar.update(i + 1, [("loss", loss_v), ("img/s", ips)])
                if optim.checkpoint_every_steps and step % optim.checkpoint_every_steps == 0:
                    self.manager.save(checkpoint_number=step)
            self.epoch.assign(epoch + 1)
            row = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "skipped_steps": skipped, "seconds": time.perf_counter() - t0}
            row.update(self._validate(epoch + 1))
            history.append(row)
            self.log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            self.manager.save(checkpoint_number=int(self.step))
        self.writer.flush()
        # own best first (a non-chief's copy equals the chief's, which may still be written)
        best = self.best_manager.latest_checkpoint or self._chief_checkpoint(best=True)
        # a best recorded before a resume with select_best off is not used
        best_dice = float(self.best_dice) if optim.select_best and float(self.best_dice) >= 0 else None
        best_loss = float(self.best_loss) if optim.select_best and math.isfinite(float(self.best_loss)) else None
        if (best_dice is not None or best_loss is not None) and best:
            self.best_ckpt.restore(best).expect_partial()
            score = f"Dice {best_dice:.4f}" if best_dice is not None else f"loss {best_loss:.4f}"
            self.log.info(f"restored best checkpoint (validation {score})")
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return FitResult(
            stage=task.name,
            steps=int(self.step),
            epochs=int(self.epoch),
            seconds=time.perf_counter() - start_time,
            last_loss=last_loss,
            best_dice=best_dice,
            best_loss=best_loss,
            validation_seconds=self.validation_seconds,
            history=history,
        )

    def _chief_checkpoint(self, best: bool = False) -> Optional[str]:
        """The latest checkpoint of the stage folder (the chief's): its best one with `best`."""
        files = stage_files(self.stage_dir)
        return tf.train.latest_checkpoint(str(files.best if best else files.checkpoints))

    def _current_lr(self) -> float:
        """The learning rate of the last applied update (skipped steps do not advance the schedule)."""
        # convert_to_tensor: under a strategy these are MirroredVariables (no __int__/__float__)
        updates = max(int(tf.convert_to_tensor(self.optimizer.iterations)), 1)
        schedule = self.optimizer.learning_rate if not callable(self._schedule) else self._schedule(updates - 1)
        return float(tf.convert_to_tensor(schedule))

    def _validate(self, epoch: int) -> dict[str, float]:
        optim = self.optim
        if epoch != optim.epochs and (epoch % max(1, optim.validate_every_epochs) or epoch < optim.validate_from_epoch):
            return {}
        start = time.perf_counter()
        metrics = self.task.validate()
        if not metrics:
            return {}
        seconds = time.perf_counter() - start
        self.validation_seconds += seconds
        step = int(self.step)
        with self.writer.as_default(step=step):
            for key, value in metrics.items():
                tf.summary.scalar(f"{self.task.name}/val_{key}", value)
            for tag, images in self.task.summary_images().items():
                tf.summary.image(f"{self.task.name}/{tag}", images, step=step, max_outputs=len(images))
        # the best by Dice (higher), or by loss (lower) for a task that reports no Dice
        best, value, sign = ((self.best_dice, metrics.get("dice"), 1.0) if "dice" in metrics
                             else (self.best_loss, metrics.get("loss"), -1.0))
        if optim.select_best and value is not None and sign * value > sign * float(best):
            best.assign(value)
            self.best_manager.save(checkpoint_number=step)
        return {**{f"val_{k}": float(v) for k, v in metrics.items()}, "val_seconds": seconds}


def write_stage_done(stage_dir: Path, result: FitResult, extra: dict[str, Any]) -> None:
    """Mark a stage finished (its weights are written before this)."""
    data = {
        "stage": result.stage,
        "steps": result.steps,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 2),
        "last_loss": result.last_loss,
        "best_val_dice": result.best_dice,
        **({"best_val_loss": result.best_loss} if result.best_loss is not None else {}),
        "validation_seconds": round(result.validation_seconds, 2),
        "history": result.history,
        **extra,
    }
    atomic_write_json(stage_files(stage_dir).done, json.loads(json.dumps(data, default=float)))
