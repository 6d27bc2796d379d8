"""Segmentation metrics as pure numpy functions (no TensorFlow needed).

* :mod:`tfsemiseg.metrics.dice`: pooled Dice (paper Table 1) and per-volume Dice.
* :mod:`tfsemiseg.metrics.surface`: HD95 in millimetres with explicit empty-mask statuses.
"""

from tfsemiseg.metrics.dice import PooledDice, dice_per_class, summarise_per_volume
from tfsemiseg.metrics.surface import (
    STATUS_ABSENT,
    STATUS_MISSING_LABEL,
    STATUS_MISSING_PREDICTION,
    STATUS_OK,
    STATUSES,
    HD95Result,
    hausdorff_distance,
    hd95_per_class,
    summarise_hd95,
    surface_distances,
    surface_voxels,
)

__all__ = [
    "STATUSES",
    "STATUS_ABSENT",
    "STATUS_MISSING_LABEL",
    "STATUS_MISSING_PREDICTION",
    "STATUS_OK",
    "HD95Result",
    "PooledDice",
    "dice_per_class",
    "hausdorff_distance",
    "hd95_per_class",
    "summarise_hd95",
    "summarise_per_volume",
    "surface_distances",
    "surface_voxels",
]
