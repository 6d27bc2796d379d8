"""Benchmark of one training step of each stage: images per second, 1 device vs 2 logical CPUs.

Each case runs in its own subprocess (logical devices are fixed at TensorFlow start-up).
The child builds the stage's Task on synthetic 64x64 data (labels with ~5% foreground),
runs the Trainer's compiled step `--warmup` times, then times `--repeats` steps and
reports the median ms per step, images per second and peak resident memory.

Examples::

    python benchmarks/bench_train_step.py                       # default cases
    python benchmarks/bench_train_step.py --cases finetune:3:16:8 --devices 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from reference import Reference, machine_line, ratio, reference_cell  # noqa: E402

# stage:depth:width:batch (images per step; the contrastive stages see 2 views of each)
DEFAULT_CASES = [
    "global:3:16:80", "local:3:16:4", "finetune:3:16:8",          # configs/hippocampus.yaml
    "finetune:4:16:8",                                             # the reference code's U-Net, width 16
    "global:4:64:40", "local:4:64:4", "finetune:4:64:8",           # ... at the paper's width: timed beside it
]


def reference_case(case: str, size: int) -> str | None:
    """The reference-bench step for our case: the reference U-Net has 4 poolings."""
    stage, depth, width, batch = case.split(":")
    return f"step:{stage}:{width}:{batch}:{size}" if depth == "4" else None


def build_step(args: argparse.Namespace, tmp: Path):
    """The Trainer's compiled step for `args.case` on synthetic data: (step, task).

    `step()` runs one training step and returns its loss as a numpy value. Call before any
    other TensorFlow work in the process (it fixes the logical devices).
    """
    import numpy as np

    from tfsemiseg.training.strategy import make_strategy

    strategy = make_strategy(args.devices[0])

    from tfsemiseg.config import Config
    from tfsemiseg.data.prepared import TrainingArrays
    from tfsemiseg.training.engine import Trainer
    from tfsemiseg.training.precision import precision_policy, resolve_precision
    from tfsemiseg.training.stages import FinetuneTask, GlobalTask, LocalTask

    stage, depth, width, batch = args.case.split(":")
    depth, width, batch = int(depth), int(width), int(batch)
    rng = np.random.default_rng(0)
    n = 256
    images = rng.random((n, args.size, args.size), np.float32)
    labels = np.zeros((n, args.size, args.size), np.uint8)
    s = args.size
    labels[:, s // 3 : s // 3 + s // 8, s // 3 : s // 2] = 1
    labels[:, s // 2 : s // 2 + s // 8, s // 3 : s // 2] = 2
    arrays = TrainingArrays(images, images, labels, [], [])
    key = {"global": "global_stage", "local": "local_stage", "finetune": "finetune_stage"}[stage]
    cfg = Config().replace(**{
        "data.image_size": s, "model.depth": depth, "model.base_width": width,
        f"train.{key}.batch_size": batch, f"train.{key}.epochs": 1,
        "model.local_head_dims": [args.head_dim, args.head_dim],
    })
    kw = {"num_replicas": strategy.num_replicas_in_sync, **({"mode": args.local_mode} if stage == "local" else {})}
    precision = resolve_precision(args.precision)
    with precision_policy(precision):
        task = {"global": GlobalTask, "local": LocalTask, "finetune": FinetuneTask}[stage](cfg, arrays, 3, **kw)
        trainer = Trainer(task, getattr(cfg.train, key), tmp, strategy, precision=precision, progress=False)
    task.precision = precision
    iterator = iter(strategy.experimental_distribute_dataset(task.dataset(0)))
    return (lambda: trainer._train_step(iterator)[0].numpy()), task


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The options `build_step` reads besides the case and devices."""
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--local-mode", default="stride", choices=["stride", "block", "full"])
    p.add_argument("--head-dim", type=int, default=128, help="local head output (reference: 128)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed_bfloat16"],
                   help="train.precision (auto: mixed_bfloat16 where the CPU has AMX-BF16 or AVX512-BF16)")


def child(args: argparse.Namespace) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import resource

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        step, task = build_step(args, Path(tmp))
        for _ in range(args.warmup):
            step()
        # time the step alone: the input pipeline is measured by bench_pipeline.py
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    images_per_step = task.images_per_step
    params = sum(int(np.prod(v.shape)) for v in task.output_model.trainable_variables)
    return {"case": args.case, "devices": args.devices[0], "precision": task.precision, "ms": ms,
            "img_s": images_per_step / ms * 1000,
            "images_per_step": images_per_step, "params": params,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="stage:depth:width:batch")
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2])
    add_step_arguments(p)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-reference", action="store_true", help="do not time the paper's reference code")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(machine_line(), flush=True)
    reference = Reference(enabled=not args.no_reference)
    print(reference.header(), flush=True)
    print(f"| case (stage:depth:width:batch) | devices | precision | params | ms/step (median of {args.repeats})"
          " | images/s | peak GB | reference (same run) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        ref_case = reference_case(case, args.size)
        ref = reference.time(ref_case, repeats=5, warmup=1) if ref_case and reference.available else None
        for devices in args.devices:
            cmd = [sys.executable, __file__, "--child", "--case", case, "--devices", str(devices), "--size",
                   str(args.size), "--local-mode", args.local_mode, "--head-dim", str(args.head_dim),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--precision", args.precision]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {case} | {devices} | failed: {proc.stderr.strip().splitlines()[-1][:120]} | | | | | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {case} | {devices} | {r['precision']} | {r['params']:,} | {r['ms']:.0f} | {r['img_s']:.1f}"
                  f" | {r['peak_gb']:.2f} | {reference_cell(ref)} | {ratio(r['ms'], ref)} |", flush=True)


if __name__ == "__main__":
    main()
