"""Argument checks shared by the metrics."""

from __future__ import annotations

import numpy as np


def check_num_classes(num_classes: int) -> None:
    """Raises ValueError unless ``num_classes`` (K, background included) is at least 2."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + 1 class), got {num_classes}")


def check_label_maps(pred, label, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``label`` as arrays, once checked to be label maps of K classes.

    Args:
        pred: integer (or bool) label map, any shape.
        label: integer (or bool) label map, same shape as ``pred``.
        num_classes: K, including background.

    Returns:
        ``(np.asarray(pred), np.asarray(label))``.

    Raises:
        ValueError: if ``num_classes < 2``, the shapes differ, a map is not of
            an integer (or bool) dtype, or a value lies outside ``[0, K)``.
    """
    check_num_classes(num_classes)
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {pred.shape} != label shape {label.shape}")
    for name, arr in (("pred", pred), ("label", label)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} values must lie in [0, {num_classes}), "
                f"got range [{arr.min()}, {arr.max()}]"
            )
    return pred, label
