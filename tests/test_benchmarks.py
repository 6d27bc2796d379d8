"""The benchmark scripts measure the model the package builds (shapes and arithmetic)."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import pytest

from tfsemiseg.config import ModelConfig
from tfsemiseg.models import build_unet

import bench_conv  # noqa: E402  (benchmarks/ is on pytest's pythonpath: pyproject.toml)
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


def test_ratio_is_reference_over_ours():
    from reference import ratio, reference_cell

    assert ratio(50.0, {"ok": True, "ms": 500.0, "peak_gb": 1.0}) == "10.0x"
    assert ratio(50.0, {"ok": False, "error": "out of memory"}) == "-"
    assert ratio(None, {"ok": True, "ms": 5.0}) == "-"
    assert reference_cell({"ok": True, "ms": 549.04, "peak_gb": 0.764}) == "549.0 ms, 0.76 GB"
    assert reference_cell({"ok": False, "error": "killed by signal 9 (out of memory?)"}).startswith("fails (killed")


def test_loss_benchmark_without_the_reference_says_so_and_prints_our_column(tmp_path):
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TFSEMISEG_REFERENCE_BENCH": str(tmp_path / "absent"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_losses.py"), "--size", "16", "--maps", "2",
                          "--channels", "8", "--modes", "stride4", "--repeats", "1", "--warmup", "0"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "avx2 " in lines[0] and "amx_bf16 " in lines[0]
    assert f"reference: not run, {tmp_path / 'absent'} not found; our column alone" in lines[1]
    row = [line for line in lines if line.startswith("| 16 | 2 | 8 | stride4")]
    assert row and row[0].rstrip().endswith("| - | - |")  # our figures, no reference, no ratio
