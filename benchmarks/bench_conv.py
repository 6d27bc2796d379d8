"""The U-Net's 3x3 convolutions one by one: forward, input gradient and kernel gradient.

For every 3x3 convolution of a U-Net (`--depth`, `--width`, batch `--batch`, `--size`
pixels), times TensorFlow's three kernels (with oneDNN: Conv2D, Conv2DBackpropInput,
Conv2DBackpropFilter) and, for the kernel gradient, the same sum computed as nine
shifted matrix products (x_shift^T dy per tap). Prints ms (median of `--repeats`) and
GFLOP/s (2 * B * H * W * 9 * Ci * Co per kernel). This is what a U-Net training step's
time is made of on CPU (profile_train_step.py).

    python benchmarks/bench_conv.py                       # paper width: 4 levels from 64
    python benchmarks/bench_conv.py --width 16 --depth 3  # configs/hippocampus.yaml
"""

from __future__ import annotations

import argparse
import os
import time


def unet_conv_shapes(depth: int, width: int, size: int) -> list[tuple[int, int, int]]:
    """(H, Ci, Co) of every 3x3 convolution in tfsemiseg's U-Net, encoder to decoder."""
    shapes, ci = [], 1
    for level in range(depth + 1):  # encoder levels, then the bottleneck
        co = width << level
        shapes += [(size >> level, ci, co), (size >> level, co, co)]
        ci = co
    for level in reversed(range(depth)):  # after the concatenation: 2 * width channels in
        co = width << level
        shapes += [(size >> level, 2 * co, co), (size >> level, co, co)]
    return shapes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    import tfsemiseg  # noqa: F401  (oneDNN on before TensorFlow starts)
    import tensorflow as tf

    def median_ms(fn) -> float:
        fn(), fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn().numpy()
            times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times))

    def shifted_filter_grad(x, dy):
        h, ci, co = x.shape[1], x.shape[-1], dy.shape[-1]
        xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        d = tf.reshape(dy, [-1, co])
        taps = [tf.matmul(tf.reshape(xp[:, i : i + h, j : j + h, :], [-1, ci]), d, transpose_a=True)
                for i in range(3) for j in range(3)]
        return tf.reshape(tf.stack(taps), [3, 3, ci, co])

    print(f"U-Net depth {args.depth}, width {args.width}, batch {args.batch}, {args.size}x{args.size}; "
          f"ms (GFLOP/s), median of {args.repeats}")
    print("| H | Ci -> Co | forward | input grad | kernel grad | kernel grad, shifted matmuls |")
    print("|---|---|---|---|---|---|")
    totals = np.zeros(4)
    for h, ci, co in unet_conv_shapes(args.depth, args.width, args.size):
        x = tf.random.normal([args.batch, h, h, ci])
        w = tf.random.normal([3, 3, ci, co])
        dy = tf.random.normal([args.batch, h, h, co])
        kernels = [
            tf.function(autograph=False, func=lambda: tf.nn.conv2d(x, w, 1, "SAME")),
            tf.function(autograph=False, func=lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=[args.batch, h, h, ci], filter=w, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")),
            tf.function(autograph=False, func=lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=[3, 3, ci, co], out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")),
            tf.function(autograph=False, func=lambda: shifted_filter_grad(x, dy)),
        ]
        ms = np.array([median_ms(k) for k in kernels])
        totals += ms
        gflop = 2 * args.batch * h * h * 9 * ci * co / 1e9
        cells = " | ".join(f"{m:.1f} ({gflop / m * 1000:.0f})" for m in ms)
        print(f"| {h} | {ci} -> {co} | {cells} |", flush=True)
    print("| all | | " + " | ".join(f"{t:.0f}" for t in totals) + " |")


if __name__ == "__main__":
    main()
