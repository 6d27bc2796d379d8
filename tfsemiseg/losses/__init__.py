"""Losses: global NT-Xent, supervised / self-supervised local contrast, CE + Dice.

Every loss casts its inputs to float32 at entry and returns a scalar float32. Every
loss is a pure function of the batch it is given: under a distribution strategy the
task gathers the global batch first (`tfsemiseg.training.strategy.replica_gather`).
"""

from tfsemiseg.losses.global_contrastive import global_contrastive_loss, nt_xent_from_pairs
from tfsemiseg.losses.local_contrastive import (
    local_contrastive_points,
    pooled_weighted_lse_sum,
    self_supervised_local_contrastive_loss,
    supervised_local_contrastive_loss,
    supervised_local_contrastive_loss_with_count,
)
from tfsemiseg.losses.semi_supervised import consistency_loss, flip_rotate, mixup_loss, sigmoid_rampup
from tfsemiseg.losses.segmentation import (
    DICE_EPSILON,
    cross_entropy,
    segmentation_loss,
    soft_dice_loss,
)

__all__ = [
    "consistency_loss",
    "flip_rotate",
    "mixup_loss",
    "sigmoid_rampup",
    "DICE_EPSILON",
    "cross_entropy",
    "global_contrastive_loss",
    "local_contrastive_points",
    "nt_xent_from_pairs",
    "pooled_weighted_lse_sum",
    "segmentation_loss",
    "self_supervised_local_contrastive_loss",
    "soft_dice_loss",
    "supervised_local_contrastive_loss",
    "supervised_local_contrastive_loss_with_count",
]
