"""The stages: each is a model, a loss and a dataset handed to the one Trainer.

global   encoder + h1, `global_contrastive_loss` on two views of every train slice
local    encoder + decoder + h2, `supervised_local_contrastive_loss` on labeled slices
finetune U-Net + 1x1 head, `segmentation_loss` on labeled slices; validation Dice

One convention for every loss under a multi-replica strategy: the task gathers its
outputs from every replica (`replica_gather`, differentiable) and each replica computes
the loss of the whole global batch (NT-Xent over every view, the local loss pooling
pixels of all maps, the Dice term pooling the batch); the Trainer divides it by the
number of replicas and sums the gradients, so value and gradient equal the single-device
ones. The losses themselves know nothing of replicas.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg.config import Config, OptimConfig
from tfsemiseg.data.pipelines import finetune_dataset, global_dataset, local_dataset
from tfsemiseg.data.prepared import TrainingArrays
from tfsemiseg.data.preprocess import SliceVolume
from tfsemiseg.evaluation import PooledValidator, overlay_images
from tfsemiseg.losses import (
    global_contrastive_loss,
    segmentation_loss,
    supervised_local_contrastive_loss_with_count,
)
from tfsemiseg.models.transfer import TransferReport, load_weights_by_name
from tfsemiseg.models.unet import UNet, build_unet
from tfsemiseg.training.engine import Task
from tfsemiseg.training.strategy import replica_gather


class UNetTask(Task):
    """Common parts: one U-Net, optional initial weights, fixed-size batches."""

    def __init__(
        self,
        cfg: Config,
        optim: OptimConfig,
        num_classes: int,
        num_samples: int,
        init_from: Optional[tuple[Path, Sequence[str]]] = None,
        num_replicas: int = 1,
    ):
        self.cfg, self.optim, self.num_classes = cfg, optim, num_classes
        self.num_replicas = num_replicas
        self.init_from = init_from
        self.transfer: Optional[TransferReport] = None
        self.unet: Optional[UNet] = None
        self.steps_per_epoch = max(1, num_samples // optim.batch_size)
        self.images_per_step = optim.batch_size
        if optim.batch_size % num_replicas:
            raise ValueError(f"batch_size {optim.batch_size} must be divisible by the {num_replicas} replicas")

    def build(self) -> None:
        self.unet = build_unet(self.cfg.model, self.cfg.data.image_size, self.num_classes)
        if self.init_from is not None:
            path, require = self.init_from
            self.transfer = load_weights_by_name(self.init_target, path, require)

    @property
    def init_target(self) -> keras.Model:
        """The model that initial weights are loaded into."""
        return self.output_model


class GlobalTask(UNetTask):
    name = "global"
    VALIDATION_SEED = 1234  # the same two views of each validation slice at every validation

    def __init__(self, cfg: Config, arrays: TrainingArrays, num_classes: int,
                 val_images: Optional[np.ndarray] = None, **kw: Any):
        """`val_images` [N, H, W], N >= 2: the validation slices, scored by `validate` (NT-Xent
        on two fixed augmented views of each, in inference mode); None: no validation."""
        super().__init__(cfg, cfg.train.global_stage, num_classes, len(arrays.unlabeled_images), **kw)
        self.images = arrays.unlabeled_images
        if val_images is not None and len(val_images) < 2:
            raise ValueError(f"the global stage's validation needs at least 2 slices, got {len(val_images)}")
        self.val_images = val_images
        self._val_loss = None  # compiled at the first validation

    @property
    def output_model(self) -> keras.Model:
        return self.unet.global_model

    def loss(self, batch, seed):
        view_a, view_b = batch
        z = self.unet.global_model(tf.concat([view_a, view_b], 0), training=True)
        z_a, z_b = tf.split(z, 2, axis=0)
        temperature = self.cfg.train.global_loss.temperature
        loss = global_contrastive_loss(replica_gather(z_a), replica_gather(z_b), temperature)
        return loss, tf.shape(view_a)[0]

    def dataset(self, seed: int) -> tf.data.Dataset:
        return global_dataset(self.images, self.optim.batch_size, self.cfg.augment, seed, self.cfg.train.deterministic)

    def validate(self) -> Optional[dict[str, float]]:
        """{'loss': mean NT-Xent over the validation batches}: the training batch size (fewer
        when there are fewer slices), a remainder dropped as in training. On one device, in
        chunks of a replica's training forward pass (2 views x its share of the batch)."""
        if self.val_images is None:
            return None
        if self._val_loss is None:
            model, temperature = self.unet.global_model, self.cfg.train.global_loss.temperature
            chunk = 2 * max(1, self.optim.batch_size // self.num_replicas)

            @tf.function
            def val_loss(view_a, view_b):
                views = tf.concat([view_a, view_b], 0)
                n = views.shape[0]
                z = tf.concat([model(views[i : i + chunk], training=False) for i in range(0, n, chunk)], 0)
                z_a, z_b = tf.split(z, 2, axis=0)
                return global_contrastive_loss(z_a, z_b, temperature)

            self._val_loss = val_loss
        batch = min(self.optim.batch_size, len(self.val_images))
        views = global_dataset(self.val_images, batch, self.cfg.augment, self.VALIDATION_SEED, deterministic=True)
        losses = [float(self._val_loss(a, b)) for a, b in views.take(len(self.val_images) // batch)]
        return {"loss": float(np.mean(losses))}


class LocalTask(UNetTask):
    name = "local"

    def __init__(self, cfg: Config, arrays: TrainingArrays, num_classes: int, *, mode: str, **kw: Any):
        """`mode`: how the supervised local loss pools pixels, stride | block | full (the method's)."""
        super().__init__(cfg, cfg.train.local_stage, num_classes, len(arrays.labeled_images), **kw)
        self.images, self.labels = arrays.labeled_images, arrays.labeled_labels
        self.images_per_step = 2 * self.optim.batch_size  # two views per image
        self.mode = mode

    @property
    def output_model(self) -> keras.Model:
        return self.unet.local_model

    def loss(self, batch, seed):
        view_a, view_b, label = batch
        features = self.unet.local_model(tf.concat([view_a, view_b], 0), training=True)
        labels = tf.concat([label, label], 0)
        c = self.cfg.train.local_loss
        return supervised_local_contrastive_loss_with_count(
            replica_gather(features), replica_gather(labels), c.temperature, self.mode, c.stride, c.block_size
        )

    def dataset(self, seed: int) -> tf.data.Dataset:
        return local_dataset(
            self.images, self.labels, self.optim.batch_size, self.cfg.augment, seed, self.cfg.train.deterministic
        )


class FinetuneTask(UNetTask):
    name = "finetune"

    def __init__(
        self,
        cfg: Config,
        arrays: TrainingArrays,
        num_classes: int,
        val_volumes: Sequence[SliceVolume] = (),
        **kw: Any,
    ):
        super().__init__(cfg, cfg.train.finetune_stage, num_classes, len(arrays.labeled_images), **kw)
        self.images, self.labels = arrays.labeled_images, arrays.labeled_labels
        self.val_volumes = list(val_volumes)
        self._validator: Optional[PooledValidator] = None  # built at the first validation
        self._validated = False

    @property
    def output_model(self) -> keras.Model:
        return self.unet.segmenter

    def loss(self, batch, seed):
        image, label = batch
        logits = self.unet.segmenter(image, training=True)
        loss = segmentation_loss(replica_gather(logits), replica_gather(label), self.num_classes)
        return loss, tf.shape(image)[0]

    def dataset(self, seed: int) -> tf.data.Dataset:
        return finetune_dataset(
            self.images, self.labels, self.optim.batch_size, self.cfg.augment, seed, self.cfg.train.deterministic
        )

    def validate(self) -> Optional[dict[str, float]]:
        if not self.val_volumes:
            return None
        if self._validator is None:
            self._validator = PooledValidator(self.output_model, self.val_volumes, self.num_classes)
        result = self._validator()
        self._validated = True
        metrics = {"dice": result["mean"]}
        for c, value in enumerate(result["per_class"], start=1):
            metrics[f"dice_class{c}"] = value if math.isfinite(value) else 0.0
        return metrics

    def summary_images(self) -> dict[str, np.ndarray]:
        if not self._validated:
            return {}
        image, label, pred = self._validator.sample()
        return {"val_overlay": overlay_images(image, label, pred, self.num_classes)}
