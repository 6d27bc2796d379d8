"""The benchmark scripts measure the model the package builds (shapes and arithmetic)."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import pytest

from tfsemiseg.config import ModelConfig
from tfsemiseg.models import build_unet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_conv  # noqa: E402
import profile_train_step  # noqa: E402


def _conv_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [l for l in model.layers if type(l) is keras.layers.Conv2D]


@pytest.mark.parametrize("depth,width", [(3, 16), (4, 8)])
def test_conv_shapes_are_the_unets_3x3_convolutions(depth, width):
    unet = build_unet(ModelConfig(depth=depth, base_width=width), 32, 3)
    convs = [l for l in _conv_layers(unet.segmenter) if l.kernel.shape[:2] == (3, 3)]
    built = [(l.output.shape[1], l.kernel.shape[2], l.kernel.shape[3]) for l in convs]
    assert sorted(bench_conv.unet_conv_shapes(depth, width, 32)) == sorted(built)
    assert len(built) == 4 * depth + 2


def test_conv_gflop_counts_every_convolution():
    cfg = ModelConfig(depth=2, base_width=4)
    model = build_unet(cfg, 16, 3).segmenter
    # by hand: 3x3 convs (H, Ci, Co), transposed 2x2 convs at their input size, the 1x1 head
    convs3 = [(16, 1, 4), (16, 4, 4), (8, 4, 8), (8, 8, 8), (4, 8, 16), (4, 16, 16),
              (8, 16, 8), (8, 8, 8), (16, 8, 4), (16, 4, 4)]
    flop = sum(2 * h * h * 9 * ci * co for h, ci, co in convs3)
    flop += 2 * 4 * 4 * 4 * 16 * 8 + 2 * 8 * 8 * 4 * 8 * 4  # dec1_up 16->8 at 4x4, dec0_up 8->4 at 8x8
    flop += 2 * 16 * 16 * 4 * 3  # seg_head
    assert profile_train_step.conv_gflop_per_image(model) == pytest.approx(flop / 1e9)
