"""A Keras 3 functional 2D U-Net with the contrastive heads, as weight-sharing sub-models.

One functional graph is built; five `keras.Model`s are cut out of it, so they share
the very same layer objects (and weights):

    encoder           image [B,S,S,1] -> bottleneck [B, S/2**d, S/2**d, w*2**d]
    decoder_features  image -> last decoder block [B, S, S, w]
    segmenter         image -> logits [B, S, S, K]            (stage 3, "finetune")
    global_model      image -> h1 projection [B, D]           (stage 1, "global")
    local_model       image -> h2 embedding [B, S, S, E]      (stage 2, "local")

with d = `ModelConfig.depth`, w = `ModelConfig.base_width`. Under a `mixed_float16`
policy the body computes in float16 while the logits and both head outputs are float32
(their last layers have dtype="float32"); `encoder`/`decoder_features` outputs are float16.

Layer names are stable and carry their part as a prefix; every variable's
`variable.path` is `<layer name>/<weight name>` (e.g. `enc0_conv0/kernel`), which is
how `tfsemiseg.models.transfer` moves weights between stages:

    enc{l}_conv{j}, enc{l}_norm{j}, enc{l}_act{j}, enc{l}_pool     l = 0..d-1, j = 0, 1
    bottleneck_conv{j}, bottleneck_norm{j}, bottleneck_act{j}
    dec{l}_up (dec{l}_resize first when bilinear), dec{l}_concat,
    dec{l}_conv{j}, dec{l}_norm{j}, dec{l}_act{j}                    l = d-1..0
    seg_head; h1_pool, h1_dense0, h1_act0, h1_dense1; h2_conv0, h2_act0, h2_conv1

Decoder blocks are numbered by resolution level, like the encoder: `dec{l}` upsamples to
the resolution of `enc{l}` and concatenates its output, so the last decoder block (the
full-resolution one the local head and the segmentation head read) is `dec0`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras

from tfsemiseg.config import ModelConfig
from tfsemiseg.errors import ConfigError
from tfsemiseg.models.heads import global_head, local_head, segmentation_head
from tfsemiseg.models.layers import BatchNorm

PARTS: tuple[str, ...] = ("encoder", "decoder", "seg_head", "h1", "h2")
SEGMENTER_PARTS: tuple[str, ...] = ("encoder", "decoder", "seg_head")  # what a fine-tuned model has

# PyTorch's BatchNorm defaults (momentum 0.1 there = 0.9 here, eps 1e-5); Keras' own
# 0.99 makes the moving statistics lag far behind in short runs.
_BN_MOMENTUM = 0.9
_NORM_EPSILON = 1e-5
_PART_PATTERNS = (
    ("encoder", re.compile(r"^(enc\d+|bottleneck)_")),
    ("decoder", re.compile(r"^dec\d+_")),
    ("seg_head", re.compile(r"^seg_head$")),
    ("h1", re.compile(r"^h1_")),
    ("h2", re.compile(r"^h2_")),
)


@dataclass
class UNet:
    """The weight-sharing sub-models of one U-Net graph (see the module docstring)."""

    encoder: keras.Model
    decoder_features: keras.Model
    segmenter: keras.Model
    global_model: keras.Model
    local_model: keras.Model
    config: ModelConfig
    image_size: int
    num_classes: int


def build_unet(cfg: ModelConfig, image_size: int, num_classes: int) -> UNet:
    """Build the U-Net graph and its sub-models for [B, image_size, image_size, 1] inputs.

    Raises ConfigError when `image_size` is not divisible by 2**depth (each of the
    `depth` max-pools halves the size, and the decoder must land on the same sizes).
    """
    cfg.validate()
    factor = 2**cfg.depth
    if image_size < factor or image_size % factor:
        raise ConfigError(
            f"data.image_size {image_size} must be a positive multiple of 2**model.depth = {factor} "
            f"(model.depth {cfg.depth} halves the size {cfg.depth} times); "
            f"e.g. use {max(factor, image_size - image_size % factor)} or {image_size - image_size % factor + factor}"
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")

    image = keras.Input((image_size, image_size, 1), name="image")
    x, skips = image, []
    for level in range(cfg.depth):
        x = _conv_block(x, cfg, cfg.base_width * 2**level, f"enc{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    bottleneck = _conv_block(x, cfg, cfg.base_width * 2**cfg.depth, "bottleneck")

    x = bottleneck
    for level in reversed(range(cfg.depth)):
        width = cfg.base_width * 2**level
        x = _upsample(x, cfg, width, f"dec{level}")
        x = keras.layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, cfg, width, f"dec{level}")
    features = x

    return UNet(
        encoder=keras.Model(image, bottleneck, name="encoder"),
        decoder_features=keras.Model(image, features, name="decoder_features"),
        segmenter=keras.Model(image, segmentation_head(features, num_classes), name="segmenter"),
        global_model=keras.Model(image, global_head(bottleneck, cfg.global_head_dims), name="global_model"),
        local_model=keras.Model(image, local_head(features, cfg.local_head_dims), name="local_model"),
        config=cfg,
        image_size=image_size,
        num_classes=num_classes,
    )


def variable_part(path: str) -> str:
    """The part a variable belongs to, from its `variable.path` (or its layer name).

    One of PARTS ("encoder" includes the bottleneck), or "other" for names this module
    does not create. E.g. "enc0_conv0/kernel" -> "encoder", "h2_conv1/bias" -> "h2".
    """
    layer = path.split("/", 1)[0]
    for part, pattern in _PART_PATTERNS:
        if pattern.match(layer):
            return part
    return "other"


# --------------------------------------------------------------------------- blocks


def _conv_block(x: keras.KerasTensor, cfg: ModelConfig, width: int, prefix: str) -> keras.KerasTensor:
    """Two (3x3 conv -> norm -> activation): [B,H,W,C] -> [B,H,W,width]."""
    for j in range(2):
        x = keras.layers.Conv2D(
            width, 3, padding="same", use_bias=cfg.norm == "none",
            kernel_initializer="he_normal", name=f"{prefix}_conv{j}",
        )(x)
        if cfg.norm != "none":
            x = _norm(cfg, f"{prefix}_norm{j}")(x)
        x = _activation(cfg, f"{prefix}_act{j}")(x)
    return x


def _upsample(x: keras.KerasTensor, cfg: ModelConfig, width: int, prefix: str) -> keras.KerasTensor:
    """Double the resolution and map to `width` channels: [B,H,W,C] -> [B,2H,2W,width]."""
    if cfg.upsample == "transpose":
        return keras.layers.Conv2DTranspose(width, 2, strides=2, name=f"{prefix}_up")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{prefix}_resize")(x)
    return keras.layers.Conv2D(width, 3, padding="same", kernel_initializer="he_normal", name=f"{prefix}_up")(x)


def _norm(cfg: ModelConfig, name: str) -> keras.layers.Layer:
    if cfg.norm == "batch":
        # Fused kernel on one replica; under tf.distribute the batch statistics are
        # all-reduced over the replicas, so they are those of the global batch.
        return BatchNorm(momentum=_BN_MOMENTUM, epsilon=_NORM_EPSILON, name=name)
    if cfg.norm == "instance":  # groups=-1: one group per channel
        return keras.layers.GroupNormalization(groups=-1, epsilon=_NORM_EPSILON, name=name)
    if cfg.norm == "group":
        return keras.layers.GroupNormalization(groups=cfg.groups, epsilon=_NORM_EPSILON, name=name)
    raise ConfigError(f"model.norm {cfg.norm!r} is not one of batch, instance, group, none")


def _activation(cfg: ModelConfig, name: str) -> keras.layers.Layer:
    if cfg.activation == "relu":
        return keras.layers.ReLU(name=name)
    if cfg.activation == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.01, name=name)
    raise ConfigError(f"model.activation {cfg.activation!r} is not one of relu, leaky_relu")
