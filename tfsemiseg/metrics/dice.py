"""Dice overlap for integer label maps: pooled (paper Table 1) and per volume.

Two ways of reporting Dice are provided, and they generally give different
numbers:

* :class:`PooledDice` is the paper-compatible metric (Hu et al., MICCAI 2021,
  Table 1). For each foreground class ``c`` in ``1..K-1`` it sums the
  intersection ``|P_c ∩ G_c|`` and the sizes ``|P_c| + |G_c|`` over *all*
  slices of *all* test volumes, then reports ``2 * I / (|P| + |G|)`` per class
  and the mean over classes. Large structures weigh more than small ones, and
  slices where the class is absent from both prediction and label add nothing.
* :func:`dice_per_class` scores one volume (typically 3D, at native
  resolution); :func:`summarise_per_volume` then gives mean and standard
  deviation over volumes.

Empty-mask rules (both ways):

* a class absent from both prediction and label (over the pool, or in the
  volume) has Dice ``NaN`` and is excluded from every mean;
* a class absent from exactly one of them has Dice ``0.0``.

Label value 0 is background and is never scored. Every value in ``pred`` and
``label`` must lie in ``[0, num_classes)``; otherwise ``ValueError`` is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tfsemiseg.metrics._checks import check_label_maps, check_num_classes

__all__ = ["PooledDice", "dice_per_class", "summarise_per_volume"]


def _class_counts(
    pred: np.ndarray, label: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class intersection, prediction size and label size.

    Args:
        pred: integer label map, any shape.
        label: integer label map, same shape as ``pred``.
        num_classes: K, including background.

    Returns:
        ``(intersection, pred_size, label_size)``, each int64 of shape [K]
        (index 0 is background).
    """
    pred, label = check_label_maps(pred, label, num_classes)
    p = pred.ravel().astype(np.int64, copy=False)
    g = label.ravel().astype(np.int64, copy=False)
    intersection = np.bincount(g[p == g], minlength=num_classes)
    pred_size = np.bincount(p, minlength=num_classes)
    label_size = np.bincount(g, minlength=num_classes)
    return intersection, pred_size, label_size


def _dice_from_counts(intersection: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``2 I / (|P| + |G|)`` as float64, NaN where the denominator is 0."""
    out = np.full(intersection.shape, np.nan, dtype=np.float64)
    present = denominator > 0
    out[present] = 2.0 * intersection[present] / denominator[present]
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) if there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


class PooledDice:
    """Dice pooled over all slices of all test volumes (paper Table 1).

    Usage::

        metric = PooledDice(num_classes=3)
        for pred, label in test_batches:      # e.g. [S, 64, 64] int arrays
            metric.update(pred, label)
        metric.result()  # {"per_class": [...], "mean": ..., ...}

    Args:
        num_classes: K, the number of classes including background (label 0).
    """

    def __init__(self, num_classes: int) -> None:
        check_num_classes(num_classes)
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        k = self.num_classes - 1
        self._intersection = np.zeros(k, dtype=np.int64)
        self._pred_size = np.zeros(k, dtype=np.int64)
        self._label_size = np.zeros(k, dtype=np.int64)
        self._num_updates = 0

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Add one batch of predictions and labels to the pool.

        Args:
            pred: integer predicted label map, any shape (e.g. [S, H, W] slices).
            label: integer ground-truth label map, same shape as ``pred``.
        """
        inter, p_size, g_size = _class_counts(pred, label, self.num_classes)
        self._intersection += inter[1:]
        self._pred_size += p_size[1:]
        self._label_size += g_size[1:]
        self._num_updates += 1

    @classmethod
    def from_counts(cls, intersection: np.ndarray, pred_size: np.ndarray, label_size: np.ndarray,
                    num_updates: int = 1) -> "PooledDice":
        """A metric holding already pooled per-class counts ([K] each, index 0 background)."""
        metric = cls(len(intersection))
        metric._intersection += np.asarray(intersection, np.int64)[1:]
        metric._pred_size += np.asarray(pred_size, np.int64)[1:]
        metric._label_size += np.asarray(label_size, np.int64)[1:]
        metric._num_updates = int(num_updates)
        return metric

    def result(self) -> dict[str, Any]:
        """The pooled Dice so far.

        Returns:
            A dict with

            * ``per_class``: list of K-1 floats, Dice of classes 1..K-1, NaN for a
              class absent from both predictions and labels over the whole pool;
            * ``mean``: float, mean of ``per_class`` over the classes that are not
              NaN (NaN if none is);
            * ``intersection``, ``pred_size``, ``label_size``: lists of K-1 ints,
              the pooled voxel counts;
            * ``num_updates``: int, the number of ``update`` calls.
        """
        per_class = _dice_from_counts(self._intersection, self._pred_size + self._label_size)
        return {
            "per_class": [float(v) for v in per_class],
            "mean": _nanmean(per_class),
            "intersection": [int(v) for v in self._intersection],
            "pred_size": [int(v) for v in self._pred_size],
            "label_size": [int(v) for v in self._label_size],
            "num_updates": self._num_updates,
        }


def dice_per_class(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground class for one volume.

    Args:
        pred: integer predicted label map of one volume, e.g. [X, Y, Z] at native
            resolution (any shape is accepted).
        label: integer ground-truth label map, same shape as ``pred``.
        num_classes: K, the number of classes including background.

    Returns:
        float64 array [K-1]: Dice of classes 1..K-1; NaN where the class is absent
        from both ``pred`` and ``label``; 0.0 where it is absent from exactly one.
    """
    inter, p_size, g_size = _class_counts(pred, label, num_classes)
    return _dice_from_counts(inter[1:], p_size[1:] + g_size[1:])


def summarise_per_volume(values: Sequence[np.ndarray]) -> dict[str, Any]:
    """Per-class mean and standard deviation of per-volume Dice.

    NaN entries (class absent from both prediction and label in that volume) are
    excluded: they count neither in the mean nor in ``count``.

    Args:
        values: one float array [K-1] per volume, as from :func:`dice_per_class`.

    Returns:
        A dict with

        * ``mean``: list of K-1 floats, mean over volumes where the class is scored
          (NaN if none);
        * ``std``: list of K-1 floats, population standard deviation (ddof=0, as
          ``np.nanstd``) over the same volumes (NaN if none);
        * ``count``: list of K-1 ints, number of volumes where the class is scored;
        * ``mean_over_classes``: float, mean of ``mean`` over classes that are not
          NaN;
        * ``num_volumes``: int, ``len(values)``.
    """
    if len(values) == 0:
        raise ValueError("summarise_per_volume needs at least one volume")
    table = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    if table.ndim != 2:
        raise ValueError(f"each entry must be a 1D array [K-1], got stacked shape {table.shape}")
    means, stds, counts = [], [], []
    for column in table.T:
        scored = column[~np.isnan(column)]
        counts.append(int(scored.size))
        means.append(float(scored.mean()) if scored.size else float("nan"))
        stds.append(float(scored.std()) if scored.size else float("nan"))
    return {
        "mean": means,
        "std": stds,
        "count": counts,
        "mean_over_classes": _nanmean(np.asarray(means)),
        "num_volumes": int(table.shape[0]),
    }
