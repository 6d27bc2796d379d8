"""Self-training: a student learns from the labeled slices and from pseudo-labels.

The teachers are finished fine-tuned models of the same fold, split and labeled fraction
(`train.self_training.teachers`: methods of the student's run folder, or finished cell
folders of any run, such as a student of an earlier round), each loaded with the config it
was trained with, so the student may differ from them in width, seed or schedule. The
argmax of their mean softmax labels every slice of the split's unlabeled train volumes (and
of the extra unlabeled volumes when the config adds them); a teacher that slices along another
axis than the student predicts in 3D as a view of an exported model does. Validation and test volumes are
never pseudo-labeled. The student starts from random weights; each step it sees one
augmented batch of labeled slices and one of pseudo-labeled slices:

    loss = segmentation_loss(labeled) + pseudo_weight * segmentation_loss(pseudo-labeled)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg.config import Config
from tfsemiseg.data.pipelines import finetune_dataset
from tfsemiseg.data.prepared import PreparedData, TrainingArrays, volumes_along
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.inference import predict_probabilities, resize_probabilities, view_probabilities
from tfsemiseg.losses import segmentation_loss
from tfsemiseg.models.transfer import load_segmenter
from tfsemiseg.training.stages import FinetuneTask
from tfsemiseg.training.strategy import replica_gather


def pseudo_labels(teachers: Sequence[keras.Model], images: np.ndarray, mirror: bool = True) -> np.ndarray:
    """Slices images [N, H, W] -> uint8 labels [N, H, W]: argmax of the teachers' mean softmax
    (each with test-time mirroring when `mirror`)."""
    mean = sum(predict_probabilities(t, images, mirror=mirror) for t in teachers) / len(teachers)
    return np.argmax(mean, axis=-1).astype(np.uint8)


class Teacher(NamedTuple):
    """A finished fine-tuned model: its weights, their sha256 and the config it was trained with."""

    weights: Path
    sha256: str
    config: Config


def pseudo_labeled_arrays(cfg: Config, data: PreparedData, arrays: TrainingArrays,
                          teachers: Sequence[Teacher]) -> tuple[np.ndarray, np.ndarray]:
    """The unlabeled train slices float32 [N, H, W] and their pseudo-labels uint8 [N, H, W].

    A teacher trained on slices along another axis than the student's (`data.slice_axis`) is a
    view: it predicts each volume along its own axis, and its probabilities are resized to the
    native slices, transposed into the student's slicing order and resized to the model size
    (bilinear), then averaged with the other teachers' (as an exported model averages views)."""
    if not arrays.unlabeled_cases:
        raise TfSemisegError("self-training needs unlabeled train volumes; this labeled fraction has none")
    cases = arrays.unlabeled_cases
    images = np.concatenate([data.volumes[c].image for c in cases], 0).astype(np.float32)
    k, axis, mirror = len(data.class_names), cfg.data.slice_axis % 3, cfg.train.self_training.mirror
    same = [t for t in teachers if t.config.data.slice_axis % 3 == axis]
    if len(same) == len(teachers):
        return images, pseudo_labels([load_segmenter(t.config, t.weights, k).segmenter for t in teachers], images, mirror)
    total = np.zeros(images.shape + (k,), np.float32)
    for t in same:
        total += predict_probabilities(load_segmenter(t.config, t.weights, k).segmenter, images, mirror=mirror)
    along: dict[int, list] = {}  # each other axis's volumes, read once for all its teachers
    for t in (t for t in teachers if t.config.data.slice_axis % 3 != axis):
        model, own = load_segmenter(t.config, t.weights, k).segmenter, t.config.data.slice_axis % 3
        if own not in along:
            along[own] = volumes_along(data, cfg, cases, own)
        start = 0
        for case, vol in zip(cases, along[own]):
            native = view_probabilities(model, vol.image, vol.native_shape, own, axis, mirror)
            if len(native) != data.volumes[case].num_slices:
                raise TfSemisegError(f"{case}: re-sliced along axis {axis}, the view along axis {own} gives "
                                     f"{len(native)} slices, not the student's {data.volumes[case].num_slices}")
            total[start : start + len(native)] += resize_probabilities(native, images.shape[1:3]).numpy()
            start += len(native)
    return images, np.argmax(total, axis=-1).astype(np.uint8)


class SelfTrainingTask(FinetuneTask):
    """Fine-tuning from random weights on labeled + pseudo-labeled batches (see the module)."""

    def __init__(self, cfg: Config, arrays: TrainingArrays, num_classes: int, *,
                 pseudo: tuple[np.ndarray, np.ndarray], **kw: Any):
        super().__init__(cfg, arrays, num_classes, **kw)
        self.pseudo_images, self.pseudo_labels = pseudo
        self.settings = cfg.train.self_training
        self.images_per_step = self.optim.batch_size + self.settings.pseudo_batch_size

    def dataset(self, seed: int) -> tf.data.Dataset:
        det = self.cfg.train.deterministic
        labeled = finetune_dataset(self.images, self.labels, self.optim.batch_size, self.cfg.augment, seed, det)
        pseudo = finetune_dataset(self.pseudo_images, self.pseudo_labels, self.settings.pseudo_batch_size,
                                  self.cfg.augment, seed + 7, det)
        return tf.data.Dataset.zip((labeled, pseudo))

    def loss(self, batch, seed):
        (x_l, y_l), (x_p, y_p) = batch
        n_l = tf.shape(x_l)[0]
        logits = self.unet.segmenter(tf.concat([x_l, x_p], 0), training=True)
        sup = segmentation_loss(replica_gather(logits[:n_l]), replica_gather(y_l), self.num_classes)
        pseudo = segmentation_loss(replica_gather(logits[n_l:]), replica_gather(y_p), self.num_classes)
        return sup + self.settings.pseudo_weight * pseudo, n_l
