"""Where one training step's time goes: TensorFlow profiler time per op type.

Builds the same step as bench_train_step.py (the Trainer's compiled step on synthetic
data), runs `--warmup` steps, profiles `--steps` steps with `tf.profiler`, and prints
the op types by self time (summed over the threads that ran them, so with 2 threads a
step's total is about twice its wall time; the idle time of all threads, the input
pipeline's included, is left out of the shares). It also
prints the convolutions' arithmetic per step and the rate the step achieves on it.

Examples::

    python benchmarks/profile_train_step.py --case finetune:4:64:8
    python benchmarks/profile_train_step.py --case local:3:16:4 --ops 20   # also the top single ops
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import tempfile
import time
from pathlib import Path


import bench_train_step  # noqa: E402


def conv_gflop_per_image(model) -> float:
    """Forward multiply-adds x 2 of the model's Conv2D / Conv2DTranspose layers, per image."""
    import keras
    import numpy as np

    flop = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, h, w, _ = layer.input.shape
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
        else:
            continue
        flop += 2.0 * h * w * float(np.prod(layer.kernel.shape))
    return flop / 1e9


def op_type_times(logdir: str) -> tuple[dict, list]:
    """Self time (us) per op type and per op, from the profile in `logdir`."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    xspaces = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data, ok = plugin.xspace_to_tools_data(xspaces, "framework_op_stats", {})
    if not ok:
        raise SystemExit(f"the profiler could not convert {xspaces}: {data[:200]!r}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    rows = [dict(zip(cols, [c.get("v") if c else None for c in r["c"]])) for r in table["rows"]]
    by_type = collections.Counter()
    for r in rows:
        by_type[r["type"]] += r["total_self_time"]
    return dict(by_type), sorted(rows, key=lambda r: -r["total_self_time"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="finetune:4:64:8", help="stage:depth:width:batch")
    p.add_argument("--devices", nargs=1, type=int, default=[1])
    bench_train_step.add_step_arguments(p)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="op types to list")
    p.add_argument("--ops", type=int, default=0, help="also list this many single ops")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory() as tmp:
        step, task = bench_train_step.build_step(args, Path(tmp))
        import tensorflow as tf

        for _ in range(args.warmup):
            step()
        logdir = os.path.join(tmp, "profile")
        tf.profiler.experimental.start(logdir)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall_ms = 1000 * (time.perf_counter() - t0) / args.steps
        tf.profiler.experimental.stop()
        by_type, ops = op_type_times(logdir)

    by_type.pop("IDLE", None)
    ops = [r for r in ops if r["type"] != "IDLE"]
    total = sum(by_type.values())
    gflop = 3 * conv_gflop_per_image(task.output_model) * task.images_per_step
    print(f"{args.case}: {wall_ms:.0f} ms per profiled step (wall); {total / 1000 / args.steps:.0f} ms of "
          f"busy thread time per step; convolutions ~{gflop:.1f} GFLOP per step (forward x 3), "
          f"{gflop / wall_ms * 1000:.0f} GFLOP/s over the whole step")
    print("| op type | thread ms per step | share |")
    print("|---|---|---|")
    for name, us in sorted(by_type.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {name} | {us / 1000 / args.steps:.1f} | {100 * us / total:.1f}% |")
    if args.ops:
        print("\n| op | type | thread ms per step |")
        print("|---|---|---|")
        for r in ops[: args.ops]:
            print(f"| {r['operation'][:90]} | {r['type']} | {r['total_self_time'] / 1000 / args.steps:.1f} |")


if __name__ == "__main__":
    main()
