"""The baselines of the paper's Table 1, as Tasks for the same Trainer.

mixup      fine-tuning on mixed labeled batches (Zhang et al. 2018)
tcsm       mean teacher with transformation consistency (Li et al., TNNLS 2020)
local-self the self-supervised local contrast of Chaitanya et al. 2020, on all train
           slices without labels (between the global stage and fine-tuning)
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfsemiseg.config import Config
from tfsemiseg.data.pipelines import finetune_dataset, unlabeled_dataset, views_dataset
from tfsemiseg.data.prepared import TrainingArrays
from tfsemiseg.losses import (
    consistency_loss,
    flip_rotate,
    mixup_loss,
    segmentation_loss,
    self_supervised_local_contrastive_loss,
    sigmoid_rampup,
)
from tfsemiseg.models.unet import build_unet
from tfsemiseg.training.stages import FinetuneTask, UNetTask
from tfsemiseg.training.strategy import num_replicas, replica_gather, replica_slice


def sample_beta(alpha: float, seed: tf.Tensor) -> tf.Tensor:
    """One draw of Beta(alpha, alpha) from two stateless Gamma draws; seed [2, 2]."""
    g1 = tf.random.stateless_gamma([], seed=seed[0], alpha=alpha)
    g2 = tf.random.stateless_gamma([], seed=seed[1], alpha=alpha)
    return g1 / (g1 + g2)


class MixupTask(FinetuneTask):
    """Fine-tuning where each batch is mixed with a permuted copy of itself."""

    def loss(self, batch, seed):
        """One lambda and one permutation of the global batch, shared by every replica: each
        replica mixes the gathered batch, forwards its own part, and the loss of the gathered
        logits uses the lambda every image was mixed with."""
        image, label = batch
        seeds = tf.random.experimental.stateless_split(seed, 3)  # [3, 2]
        lam = sample_beta(self.cfg.train.baselines.mixup_alpha, seeds[:2])
        images, labels = replica_gather(image), replica_gather(label)
        perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(images)[0]), seed=seeds[2])
        mixed = replica_slice(lam * images + (1.0 - lam) * tf.gather(images, perm), tf.shape(image)[0])
        logits = self.unet.segmenter(mixed, training=True)
        loss = mixup_loss(replica_gather(logits), labels, tf.gather(labels, perm), lam, self.num_classes)
        return loss, tf.shape(image)[0]


class TCSMTask(FinetuneTask):
    """Mean teacher with transformation consistency; the teacher is the stage's model.

    Per step: a random flip + 90-degree rotation T (the flip alone when
    `tcsm_rotate90` is false) and Gaussian input noise; the student
    sees T(x + n1) for labeled and unlabeled slices, the teacher sees x + n2 and its
    softmax is transformed by T afterwards. Loss = supervised loss of the student on the
    labeled part (labels transformed by T) + w(t) * MSE(student softmax, teacher softmax)
    on all slices, w ramping up with a sigmoid. As in the mean-teacher reference code that
    TCSM builds on: the teacher's forward pass runs in training mode (batch statistics,
    and its own BatchNorm moving statistics updated from them), and after the n-th update
    its trainable weights become an exponential moving average of the student's with decay
    min(1 - 1 / (n + 1), tcsm_ema_decay), a true average over the first updates, so the
    teacher does not lag behind its random initial weights. The teacher is evaluated and
    exported.
    """

    def __init__(self, cfg: Config, arrays: TrainingArrays, num_classes: int, **kw: Any):
        super().__init__(cfg, arrays, num_classes, **kw)
        self.unlabeled = arrays.unlabeled_images
        self.settings = cfg.train.baselines

    def build(self) -> None:
        super().build()  # self.unet: the student, with any initial weights
        self.teacher_unet = build_unet(self.cfg.model, self.cfg.data.image_size, self.num_classes)
        for t, s in zip(self.teacher_unet.segmenter.variables, self.unet.segmenter.variables):
            t.assign(s)
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="tcsm_updates")

    @property
    def student(self) -> keras.Model:
        return self.unet.segmenter

    @property
    def teacher(self) -> keras.Model:
        return self.teacher_unet.segmenter

    @property
    def init_target(self) -> keras.Model:
        return self.student  # the teacher starts as a copy of it

    @property
    def output_model(self) -> keras.Model:
        return self.teacher  # evaluated and exported

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return self.student.trainable_variables

    @property
    def state_variables(self) -> list[tf.Variable]:
        # both forward passes update their own BatchNorm statistics
        return self.student.non_trainable_variables + self.teacher.non_trainable_variables

    def checkpoint_items(self) -> dict[str, Any]:
        return {"model": self.teacher, "student": self.student, "tcsm_updates": self.updates}

    def dataset(self, seed: int) -> tf.data.Dataset:
        labeled = finetune_dataset(self.images, self.labels, self.optim.batch_size, self.cfg.augment, seed,
                                   self.cfg.train.deterministic)
        unlabeled = unlabeled_dataset(self.unlabeled, self.settings.tcsm_unlabeled_batch_size, seed + 7,
                                      self.cfg.train.deterministic)
        return tf.data.Dataset.zip((labeled, unlabeled))

    def consistency_weight(self) -> tf.Tensor:
        epochs = tf.cast(self.updates, tf.float32) / float(self.steps_per_epoch)
        return self.settings.tcsm_consistency_weight * sigmoid_rampup(epochs, self.settings.tcsm_rampup_epochs)

    def sample_transform(self, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """T for one step from a seed [2]: (k quarter turns in 0..3, or 0 without
        `tcsm_rotate90`; flip or not)."""
        s_k, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        k = tf.random.stateless_uniform([], s_k, 0, 4, dtype=tf.int32)
        if not self.settings.tcsm_rotate90:
            k = tf.zeros_like(k)
        return k, tf.random.stateless_uniform([], s_flip) < 0.5

    def _noise(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """This replica's part of Gaussian noise drawn for the global batch of x's kind."""
        n = tf.shape(x)[0]
        shape = tf.concat([[n * num_replicas()], tf.shape(x)[1:]], 0)
        return replica_slice(self.settings.tcsm_noise_std * tf.random.stateless_normal(shape, seed), n)

    def loss(self, batch, seed):
        (x_l, y_l), x_u = batch
        n_l = tf.shape(x_l)[0]
        x = tf.concat([x_l, x_u], 0)
        s_t, s_ls, s_us, s_lt, s_ut = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
        k, flip = self.sample_transform(s_t)
        noisy_s = x + tf.concat([self._noise(x_l, s_ls), self._noise(x_u, s_us)], 0)
        noisy_t = x + tf.concat([self._noise(x_l, s_lt), self._noise(x_u, s_ut)], 0)
        student_logits = self.student(flip_rotate(noisy_s, k, flip), training=True)
        teacher_probs = flip_rotate(tf.nn.softmax(tf.cast(self.teacher(noisy_t, training=True), tf.float32)), k, flip)
        y_t = flip_rotate(tf.cast(y_l, tf.int32)[..., None], k, flip)[..., 0]
        sup = segmentation_loss(replica_gather(student_logits[:n_l]), replica_gather(y_t), self.num_classes)
        student_probs = tf.nn.softmax(tf.cast(student_logits, tf.float32))
        cons = consistency_loss(replica_gather(student_probs), replica_gather(teacher_probs))
        return sup + self.consistency_weight() * cons, n_l

    def ema_decay(self) -> tf.Tensor:
        """The decay of the update just counted in `updates` (n): min(1 - 1/(n + 1), tcsm_ema_decay)."""
        n = tf.cast(self.updates, tf.float32)
        return tf.minimum(1.0 - 1.0 / (n + 1.0), self.settings.tcsm_ema_decay)

    def after_update(self) -> None:
        self.updates.assign_add(1)
        decay = self.ema_decay()
        for t, s in zip(self.teacher.trainable_variables, self.student.trainable_variables):
            t.assign(decay * t + (1.0 - decay) * s)


class LocalSelfTask(UNetTask):
    """Self-supervised local contrast (13 points per map) on every train slice, no labels."""

    name = "local"

    def __init__(self, cfg: Config, arrays: TrainingArrays, num_classes: int, **kw: Any):
        super().__init__(cfg, cfg.train.local_stage, num_classes, len(arrays.unlabeled_images), **kw)
        self.images = arrays.unlabeled_images
        self.images_per_step = 2 * self.optim.batch_size

    @property
    def output_model(self) -> keras.Model:
        return self.unet.local_model

    def loss(self, batch, seed):
        view_a, view_b = batch
        f = self.unet.local_model(tf.concat([view_a, view_b], 0), training=True)
        f_a, f_b = tf.split(f, 2, axis=0)
        loss = self_supervised_local_contrastive_loss(
            replica_gather(f_a), replica_gather(f_b), self.cfg.train.local_loss.temperature, self.cfg.train.baselines.self_positions
        )
        return loss, tf.shape(view_a)[0]

    def dataset(self, seed: int) -> tf.data.Dataset:
        return views_dataset(self.images, self.optim.batch_size, self.cfg.augment, seed, self.cfg.train.deterministic)
