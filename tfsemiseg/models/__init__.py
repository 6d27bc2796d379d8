"""The U-Net, its contrastive heads, and strict by-name weight transfer between stages."""

from tfsemiseg.models.heads import global_head, local_head, segmentation_head
from tfsemiseg.models.transfer import TransferReport, load_weights_by_name, save_weights_by_name
from tfsemiseg.models.unet import PARTS, STAGES, UNet, build_unet, stage_model, variable_part

__all__ = [
    "PARTS",
    "STAGES",
    "TransferReport",
    "UNet",
    "build_unet",
    "global_head",
    "load_weights_by_name",
    "local_head",
    "save_weights_by_name",
    "segmentation_head",
    "stage_model",
    "variable_part",
]
