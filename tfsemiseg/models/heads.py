"""The heads on top of the U-Net: h1 (global contrast), h2 (local contrast), segmentation.

Each function applies freshly created, named layers to a symbolic (Keras functional)
tensor and returns the output tensor. The last layer of every head computes in float32
(`dtype="float32"`), so under a `mixed_float16` policy the losses see float32 values.

Heads output raw, un-normalised vectors; the contrastive losses L2-normalise them.

Differences from the reference code (xhu248/semi_cotrast_seg), on purpose:
- h1 there is `Linear -> Linear` with no nonlinearity in between (and its SimCLR
  stage never passes the head's parameters to the optimiser, so h1 stays random).
  Ours is `Dense -> ReLU -> Dense`, as in SimCLR, and it is trained.
- h2 there is `1x1 conv -> 1x1 conv`, again without a nonlinearity; ours has a ReLU.
"""

from __future__ import annotations

from typing import Sequence

import keras


def global_head(bottleneck: keras.KerasTensor, dims: Sequence[int] = (256, 128)) -> keras.KerasTensor:
    """h1, the SimCLR projection head on the encoder output.

    [B, s, s, C] -> GlobalAveragePooling2D -> Dense(dims[0]) -> ReLU -> Dense(dims[1])
    -> [B, dims[1]] float32. Layers: `h1_pool`, `h1_dense0`, `h1_act0`, `h1_dense1`.
    """
    x = keras.layers.GlobalAveragePooling2D(name="h1_pool")(bottleneck)
    x = keras.layers.Dense(dims[0], name="h1_dense0")(x)
    x = keras.layers.ReLU(name="h1_act0")(x)
    return keras.layers.Dense(dims[1], dtype="float32", name="h1_dense1")(x)


def local_head(features: keras.KerasTensor, dims: Sequence[int] = (64, 64)) -> keras.KerasTensor:
    """h2, the pixel-embedding head on the last decoder block.

    [B, S, S, C] -> 1x1 conv(dims[0]) -> ReLU -> 1x1 conv(dims[1]) -> [B, S, S, dims[1]]
    float32. Layers: `h2_conv0`, `h2_act0`, `h2_conv1`.
    """
    x = keras.layers.Conv2D(dims[0], 1, name="h2_conv0")(features)
    x = keras.layers.ReLU(name="h2_act0")(x)
    return keras.layers.Conv2D(dims[1], 1, dtype="float32", name="h2_conv1")(x)


def segmentation_head(features: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """The 1x1 conv classifier: [B, S, S, C] -> logits [B, S, S, num_classes] float32.

    Layer: `seg_head`. No softmax: the model outputs logits.
    """
    return keras.layers.Conv2D(num_classes, 1, dtype="float32", name="seg_head")(features)
