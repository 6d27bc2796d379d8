"""What validation costs in a fine-tuning stage, before and after `PooledValidator`.

On fold 0's validation volumes of MSD Hippocampus (../shared/data/Task04_Hippocampus), with
the U-Net of a config (default configs/hippocampus.yaml), it times

* one validation the way it was done before: `predict_probabilities` volume by volume,
  then `PooledDice` (one compiled call and one numpy argmax per volume);
* one validation with `PooledValidator` (every slice prepared once, one compiled function
  per batch of 64 slices returning the per-class counts): the same metric;
* one fine-tuning step at the labeled fraction's batch size,

and prints the validation's share of a whole fine-tuning stage at the config's schedule:
before, every `validate_every_epochs` epochs with the old path; after, with the config's
`validate_every_epochs` and `validate_from_epoch` and the new path. Run it on a quiet
machine; the figures are from this run only.

    python benchmarks/bench_validation.py [--config C] [--fraction 0.05] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data" / "Task04_Hippocampus"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "hippocampus.yaml"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not (Path(args.data) / "dataset.json").is_file():
        print(f"skipped: {args.data} not found (the real Hippocampus data is needed)")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from reference import machine_line
    from tfsemiseg.config import load_config
    from tfsemiseg.data.prepared import evaluation_volumes, prepare_dataset, training_arrays
    from tfsemiseg.evaluation import PooledValidator
    from tfsemiseg.inference import predict_probabilities
    from tfsemiseg.metrics.dice import PooledDice
    from tfsemiseg.training.engine import Trainer
    from tfsemiseg.training.stages import FinetuneTask

    print(machine_line())
    tmp = Path(tempfile.mkdtemp())
    cfg = load_config(args.config)  # its cache_dir: prepared once, reused
    data = prepare_dataset(cfg, Path(args.data), tmp / "run")
    split = data.split(0)
    vols = evaluation_volumes(data, split, "val")
    k = len(data.class_names)
    task = FinetuneTask(cfg, training_arrays(data, split, args.fraction), k, val_volumes=vols)
    trainer = Trainer(task, task.optim, tmp / "finetune", tf.distribute.get_strategy(), progress=False)
    model = task.output_model

    def old() -> dict:
        metric = PooledDice(k)
        for vol in vols:
            metric.update(predict_probabilities(model, vol.image).argmax(-1), vol.label)
        return metric.result()

    validator = PooledValidator(model, vols, k)

    def timed(fn):
        fn()  # compile
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), out

    t_old, r_old = timed(old)
    t_new, r_new = timed(validator)
    # the same metric; batches of other shapes may flip an argmax where two logits tie to float
    # round-off (an untrained model has many such pixels), so the counts agree to a few voxels
    changed = int(np.abs(np.subtract(r_old["pred_size"], r_new["pred_size"])).sum())
    print(f"pooled Dice: per volume {r_old['mean']:.6f}, PooledValidator {r_new['mean']:.6f} "
          f"({changed} of {sum(r_new['pred_size'])} predicted foreground voxels differ)")
    iterator = iter(task.dataset(0))
    t_step, _ = timed(lambda: trainer._train_step(iterator))
    st = task.optim
    train_s = st.epochs * task.steps_per_epoch * t_step
    every = max(1, st.validate_every_epochs)
    n_before = len([e for e in range(1, st.epochs + 1) if e % every == 0 or e == st.epochs])
    n_after = len([e for e in range(1, st.epochs + 1)
                   if e == st.epochs or (e % every == 0 and e >= st.validate_from_epoch)])
    slices = sum(v.num_slices for v in vols)
    print(f"{len(vols)} validation volumes, {slices} slices; fine-tuning at {100 * args.fraction:g}%: "
          f"{task.steps_per_epoch} steps/epoch x {st.epochs} epochs, {1000 * t_step:.0f} ms/step -> {train_s:.0f} s")
    print("| validation | one validation | validations per stage | validation s per stage | share of the stage |")
    print("|---|---:|---:|---:|---:|")
    for name, t, n in (("before: per volume, every epoch divisible by "
                        f"{every}", t_old, n_before),
                       (f"after: PooledValidator, epochs {st.validate_from_epoch}-{st.epochs} every {every}", t_new,
                        n_after)):
        print(f"| {name} | {t:.2f} s | {n} | {t * n:.0f} | {100 * t * n / (train_s + t * n):.1f}% |")


if __name__ == "__main__":
    main()
