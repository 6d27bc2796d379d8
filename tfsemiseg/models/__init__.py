"""The U-Net, its contrastive heads, and strict by-name weight transfer between stages."""

from tfsemiseg.models.heads import global_head, local_head, segmentation_head
from tfsemiseg.models.transfer import TransferReport, load_segmenter, load_weights_by_name, save_weights_by_name
from tfsemiseg.models.unet import PARTS, SEGMENTER_PARTS, UNet, build_unet, variable_part

__all__ = [
    "PARTS",
    "SEGMENTER_PARTS",
    "TransferReport",
    "UNet",
    "build_unet",
    "global_head",
    "load_segmenter",
    "load_weights_by_name",
    "local_head",
    "save_weights_by_name",
    "segmentation_head",
    "variable_part",
]
