"""Evaluation of a segmenter on whole volumes.

Optional test-time mirroring (`evaluation.mirror`): the softmax averaged over each slice
and its flips along H, W and both, every flipped prediction flipped back.

Three views of the same predictions:
- paper-compatible Dice: intersections and sums pooled over all slices of all volumes
  at model resolution, per foreground class, then averaged over classes (Table 1);
- per-volume 3D Dice per class at native resolution: softmax probabilities are resized
  back to each volume's slice size (bilinear) before the argmax;
- HD95 per class per volume in mm from the voxel spacing.
Models slicing the same volumes along different axes (`evaluate_views`) are averaged at
native resolution, as the exported model serves them.
Empty-mask rules: a class absent from both prediction and label is excluded; absent
from one of them gives Dice 0 and an undefined HD95, counted separately (never 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg.data.preprocess import SliceVolume
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.inference import native_labels, predict_probabilities, resize_probabilities, view_probabilities
from tfsemiseg.metrics.dice import PooledDice, dice_per_class, summarise_per_volume
from tfsemiseg.metrics.surface import hd95_per_class, summarise_hd95

_PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]],
    np.float32,
) / 255.0


class PooledValidator:
    """Paper-compatible pooled Dice of one model on fixed volumes, cheap to repeat.

    Built once per training stage: the volumes' slices are concatenated once (images
    [S, H, W, 1] float32, labels [S, H, W] int32) and predicted in large batches by one
    compiled function that returns the per-class counts, so a validation costs one
    forward pass per slice and no per-volume Python work. The result equals
    `PooledDice` over `predict_probabilities(...).argmax(-1)` of every volume.
    """

    def __init__(self, model: keras.Model, volumes: Sequence[SliceVolume], num_classes: int,
                 batch_size: int = 64, sample_slices: int = 4):
        if not volumes:
            raise ValueError("PooledValidator needs at least one volume")
        self.model, self.num_classes = model, int(num_classes)
        images = np.concatenate([v.image for v in volumes], 0)[..., None].astype(np.float32)
        labels = np.concatenate([v.label for v in volumes], 0).astype(np.int32)
        self._batches = [(tf.constant(images[i : i + batch_size]), tf.constant(labels[i : i + batch_size]))
                         for i in range(0, len(images), batch_size)]
        first = volumes[0]
        fg = np.flatnonzero(first.label.reshape(len(first.label), -1).any(1))
        idx = fg[np.linspace(0, len(fg) - 1, min(sample_slices, len(fg))).astype(int)] if len(fg) else np.arange(1)
        self._sample = (first.image[idx], first.label[idx])
        h, w = images.shape[1:3]
        k = self.num_classes

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 1], tf.float32),
                                      tf.TensorSpec([None, h, w], tf.int32)])
        def counts(x, y):
            # the argmax of the logits: the softmax's (also an ensemble's, whose output is log-probability)
            pred = tf.argmax(tf.cast(model(x, training=False), tf.float32), axis=-1, output_type=tf.int32)
            p, g = tf.one_hot(pred, k), tf.one_hot(y, k)
            return tf.cast(tf.stack([tf.reduce_sum(p * g, [0, 1, 2]), tf.reduce_sum(p, [0, 1, 2]),
                                     tf.reduce_sum(g, [0, 1, 2])]), tf.int64)  # [3, K], exact below 2^24 per batch

        self._counts = counts

    def __call__(self) -> dict[str, Any]:
        """`PooledDice.result()` of the model's current weights on every slice."""
        total = sum(self._counts(x, y).numpy() for x, y in self._batches)
        return PooledDice.from_counts(total[0], total[1], total[2], len(self._batches)).result()

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A few labeled slices of the first volume with the current predictions (image summaries)."""
        image, label = self._sample
        pred = predict_probabilities(self.model, image).argmax(-1)
        return image, label, pred


@dataclass
class View:
    """A model and the evaluation volumes sliced along its axis (`data.slice_axis`), in case
    order; `weight`: how many members it stands for (a `SoftmaxEnsemble` of n runs weighs n)."""

    model: keras.Model
    volumes: Sequence[SliceVolume]
    axis: int
    weight: float = 1.0


def evaluate_volumes(
    model: keras.Model, volumes: Sequence[SliceVolume], class_names: Sequence[str], mirror: bool = False
) -> dict[str, Any]:
    """Every metric of the module docstring, as a JSON-ready dict."""
    return evaluate_views([View(model, volumes, axis=0)], class_names, mirror)


def evaluate_views(views: Sequence[View], class_names: Sequence[str], mirror: bool = False) -> dict[str, Any]:
    """`evaluate_volumes` of models that slice the same volumes along different axes, averaged.

    Each view's probabilities are resized to its native slice size and transposed into the
    first view's slicing order; the weighted mean is the prediction at native resolution. The
    pooled Dice is at the first view's model resolution: its own probabilities averaged with
    the others' native ones resized to that resolution (bilinear), so it depends on which view
    comes first (per-volume Dice and HD95 do not). One view is `evaluate_volumes`.
    """
    k = len(class_names)
    first, others = views[0], views[1:]
    for view in others:
        if [v.case_id for v in view.volumes] != [v.case_id for v in first.volumes]:
            raise TfSemisegError(f"the view along axis {view.axis} lists other cases than the first view's")
    total = float(sum(view.weight for view in views))
    pooled = PooledDice(k)
    per_volume, hd95, cases = [], [], []
    for i, vol in enumerate(first.volumes):
        probs = predict_probabilities(first.model, vol.image, mirror=mirror)
        if others:
            rest = np.zeros(tuple(vol.native_shape) + (k,), np.float32)  # the other views' weighted sum
            for view in others:
                other = view.volumes[i]
                moved = view_probabilities(view.model, other.image, other.native_shape, view.axis, first.axis, mirror)
                if moved.shape != rest.shape:
                    raise TfSemisegError(f"{vol.case_id}: the view along axis {view.axis} has native shape "
                                     f"{moved.shape[:3]} in the first view's order, not {tuple(vol.native_shape)}")
                rest += view.weight * moved
            native = (first.weight * resize_probabilities(probs, vol.native_shape[1:]).numpy() + rest) / total
            probs = (first.weight * probs + resize_probabilities(rest, probs.shape[1:3]).numpy()) / total
            native_pred = native.argmax(-1).astype(np.uint8)
        else:
            native_pred = native_labels(probs, vol.native_shape)
        pooled.update(probs.argmax(-1), vol.label)
        dice = dice_per_class(native_pred, vol.native_label, k)
        hd = hd95_per_class(native_pred, vol.native_label, vol.spacing, k)
        per_volume.append(dice)
        hd95.append(hd)
        cases.append({"case": vol.case_id, "dice": _clean(dice), "hd95": _clean(hd.values), "hd95_status": hd.status,
                      "diagonal_mm": round(hd.diagonal, 3)})
    pooled_result = pooled.result()
    report = {
        "classes": list(class_names[1:]),
        "mirror": bool(mirror),
        "num_volumes": len(first.volumes),
        "pooled_dice": {"per_class": _clean(pooled_result["per_class"]), "mean": _clean1(pooled_result["mean"])},
        "volume_dice": _clean_tree(summarise_per_volume(per_volume)),
        "hd95_mm": _clean_tree(summarise_hd95(hd95)),
        "cases": cases,
    }
    if others:
        report["view_axes"] = [int(view.axis) for view in views]
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of an evaluation report."""
    names = report["classes"]
    rows = [f"{'metric':<28}" + "".join(f"{n[:12]:>13}" for n in names) + f"{'mean':>13}"]

    def row(label: str, values: Sequence[Any], mean: Any, fmt: str = "{:.4f}") -> str:
        cells = "".join(f"{_fmt(v, fmt):>13}" for v in values)
        return f"{label:<28}{cells}{_fmt(mean, fmt):>13}"

    pd, vd, hd = report["pooled_dice"], report["volume_dice"], report["hd95_mm"]
    rows.append(row("Dice, pooled (paper)", pd["per_class"], pd["mean"]))
    rows.append(row("Dice, per volume: mean", vd["mean"], vd["mean_over_classes"]))
    rows.append(row("Dice, per volume: std", vd["std"], ""))
    rows.append(row("HD95 mm, per volume: mean", hd["mean"], hd["mean_over_classes"], "{:.2f}"))
    rows.append(row("HD95 mm, per volume: std", hd["std"], "", "{:.2f}"))
    missed = [s.get("missing_prediction", 0) for s in hd["status_counts"]]
    rows.append(row("volumes with class missed", missed, "", "{}"))
    notes = f"({report['num_volumes']} volumes" + (", test-time mirroring" if report.get("mirror") else "") + ")"
    if "mean_all" in hd:
        rows.append(row("HD95 mm, all volumes (*)", hd["mean_all"], hd["mean_all_over_classes"], "{:.2f}"))
        notes += f"\n(*) {hd['miss_convention']}"
    return "\n".join(rows) + "\n" + notes


def colour_overlay(image: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """[..., H, W, 3] RGB in [0, 1]: the grey image with classes 1..K-1 tinted by colour."""
    gray = np.repeat(np.clip(image, 0, 1)[..., None], 3, -1)
    palette = _PALETTE[np.arange(num_classes) % len(_PALETTE)]
    alpha = 0.5 * (label > 0)[..., None]
    return (gray * (1 - alpha) + palette[label] * alpha).astype(np.float32)


def overlay_images(image: np.ndarray, label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[n, H, 3W, 3] RGB in [0, 1]: input | ground truth overlay | prediction overlay."""
    gray = np.repeat(np.clip(image, 0, 1)[..., None], 3, -1).astype(np.float32)
    return np.concatenate([gray, colour_overlay(image, label, num_classes), colour_overlay(image, pred, num_classes)], 2)


def _fmt(v: Any, fmt: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v)


def _clean1(v: Any) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _clean(values: Any) -> list[Optional[float]]:
    return [_clean1(float(v)) for v in values]


def _clean_tree(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_tree(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _clean1(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
