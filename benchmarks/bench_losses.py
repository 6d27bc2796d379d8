"""Benchmark of the contrastive losses: forward + backward time and peak memory.

Every case runs in its own subprocess (so the peak memory is per case). The
child builds fixed-shape inputs, traces one ``tf.function`` computing the loss
and its gradient w.r.t. the features, runs ``--warmup`` untimed calls and
``--repeats`` timed ones, and reports the median time and the process peak
resident memory (``ru_maxrss``, which includes the TensorFlow runtime; the
"base" column is the peak measured just before the first loss call). "CPU
ms" is the median process CPU time per call (all threads), a useful second
view on a shared machine.

Labels are {0, 1, 2} with about ``--fg`` (5%) foreground drawn as a few random
ellipses per map. Modes:

* ``strideN`` / ``blockN``: the library's stride / block modes;
* ``full``: the library's exact mode over every pixel (automatic block
  sizes; ``--chunk-size`` caps anchors and keys per block);
* ``dense_fg``: the same single pool as ``full``, computed by the dense
  reference of :mod:`tfsemiseg.testing` (autodiff) with only the anchor rows
  materialised ([anchors, N] similarity and mask matrices); skipped when
  ``4 * anchors * N * 4`` bytes > ``--dense-limit-gb``;
* ``dense``: the same reference with every row: a naive N x N implementation
  (full similarity and mask matrices, like the PyTorch reference); skipped
  when ``N * N * 4`` bytes > ``--dense-limit-gb``;
* ``global``: NT-Xent at batch ``--global-batch`` x ``--global-dim``.

Where the paper's reference code can run (``../shared/reference-bench``, see
``benchmarks/reference.py``), the same invocation times it on the same cases
(stride, block and NT-Xent) and prints its figure and the ratio beside ours,
under a line naming the CPU; ``--no-reference`` prints our columns alone.

Examples::

    python benchmarks/bench_losses.py                      # default suite
    python benchmarks/bench_losses.py --size 64 --maps 16 --channels 32 \\
        --modes full,dense_fg,dense --repeats 5 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from reference import Reference, machine_line, ratio, reference_cell  # noqa: E402

DEFAULT_SUITE = [
    (64, 16, 128, ["stride4", "block16", "block32", "full", "dense_fg", "dense", "global"]),
    (160, 8, 128, ["stride4", "block16", "full"]),
]


def blob_labels(maps: int, size: int, fg: float, seed: int):
    """[maps, size, size] int32 labels in {0, 1, 2}: random ellipses, ~fg foreground."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    labels = np.zeros((maps, size, size), np.int32)
    for m in range(maps):
        for _ in range(50):
            if (labels[m] > 0).mean() >= fg:
                break
            cy, cx = rng.uniform(0, size, 2)
            ay, ax = rng.uniform(0.04, 0.11, 2) * size
            th = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(th) + dy * np.sin(th)) / ax
            v = (-dx * np.sin(th) + dy * np.cos(th)) / ay
            labels[m][u * u + v * v <= 1.0] = rng.integers(1, 3)
    return labels


def local_loss_fn(mode: str, chunk_size: int | None):
    """``(features, labels) -> loss`` of one local mode (strideN, blockN, full, dense_fg, dense)."""
    from tfsemiseg.losses import supervised_local_contrastive_loss
    from tfsemiseg.testing import dense_supervised_local_contrastive_loss

    if mode == "full":
        return lambda f, y: supervised_local_contrastive_loss(f, y, mode="full", chunk_size=chunk_size)
    if mode in ("dense_fg", "dense"):
        rows_only = mode == "dense_fg"
        return lambda f, y: dense_supervised_local_contrastive_loss(f, y, 0.1, "full", anchor_rows_only=rows_only)[0]
    if mode.startswith("stride"):
        return lambda f, y: supervised_local_contrastive_loss(f, y, mode="stride", stride=int(mode[6:]))
    if mode.startswith("block"):
        return lambda f, y: supervised_local_contrastive_loss(f, y, mode="block", block_size=int(mode[5:]))
    raise ValueError(f"unknown mode {mode}")


def time_step(loss_fn, features, labels, warmup: int, repeats: int) -> dict:
    """Traces loss + gradient once, runs it ``warmup`` then ``repeats`` times: the timing fields."""
    import resource

    import numpy as np
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(features.shape), tf.TensorSpec(labels.shape, tf.int32)])
    def step(f, y):
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss = loss_fn(f, y)
        grad = tape.gradient(loss, f)
        return loss, tf.reduce_sum(tf.abs(grad))

    def peak_gb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux

    base = peak_gb()
    for _ in range(warmup):
        loss, _ = step(features, labels)
        float(loss)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, gsum = step(features, labels)
        float(loss), float(gsum)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return dict(
        ms=float(np.median(times)),
        ms_min=float(np.min(times)),
        cpu_ms=float(np.median(cpu)),
        loss=float(loss),
        peak_gb=peak_gb(),
        base_gb=base,
    )


def run_case(case: dict) -> dict:
    """Child side: time one case, return the result record."""
    import numpy as np
    import tensorflow as tf

    from tfsemiseg.losses import global_contrastive_loss

    mode, size, maps, channels = case["mode"], case["size"], case["maps"], case["channels"]
    rng = np.random.default_rng(0)
    record = dict(case)
    if mode == "global":
        shape = (2, case["global_batch"], case["global_dim"])
        features = tf.constant(rng.normal(size=shape).astype(np.float32))
        labels = tf.zeros([1], tf.int32)
        record.update(points=2 * case["global_batch"], anchors=2 * case["global_batch"])

        def loss_fn(f, y):
            return global_contrastive_loss(f[0], f[1], temperature=0.5)

    else:
        features = tf.constant(rng.normal(size=(maps, size, size, channels)).astype(np.float32))
        lab = blob_labels(maps, size, case["fg"], seed=1)
        labels = tf.constant(lab)
        n = maps * size * size
        anchors = int((lab > 0).sum())
        record.update(points=n, anchors=anchors)
        limit = case["dense_limit_gb"] * 1e9
        if mode == "dense" and n * n * 4 > limit:
            record["skipped"] = f"N^2*4 B = {n * n * 4 / 1e9:.1f} GB > {case['dense_limit_gb']} GB"
            return record
        if mode == "dense_fg" and 4 * anchors * n * 4 > limit:
            record["skipped"] = f"4*A*N*4 B = {4 * anchors * n * 4 / 1e9:.1f} GB > {case['dense_limit_gb']} GB"
            return record
        loss_fn = local_loss_fn(mode, case["chunk_size"])
    record.update(time_step(loss_fn, features, labels, case["warmup"], case["repeats"]))
    return record


def spawn(case: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(case)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return dict(case, error=f"timeout after {timeout:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return dict(case, error=f"exit {proc.returncode}: {tail[:200]}")


def reference_case(r: dict) -> str | None:
    """The reference-bench case for one of our rows (None: the reference has no counterpart)."""
    if r["mode"] == "global":
        return f"ntxent:{r['global_batch']}:{r['global_dim']}"
    if r["mode"].startswith(("stride", "block")):
        return f"loss:{r['mode']}:{r['size']}:{r['maps']}:{r['channels']}"
    return None


def table(rows: list[dict]) -> str:
    out = [
        "| size | maps | C | mode | points N | fg points | median ms | min ms | CPU ms | peak GB | base GB | loss"
        " | reference | ratio |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        mode = r["mode"] + (f" (chunk {r['chunk_size']})" if r["mode"] == "full" and r.get("chunk_size") else "")
        if r["mode"] == "global":
            mode = f"global B={r['global_batch']} D={r['global_dim']}"
        head = f"| {r['size']} | {r['maps']} | {r['channels']} | {mode} | {r.get('points', '')} | {r.get('anchors', '')} |"
        ref = r.get("reference")
        tail = f" {reference_cell(ref)} | {ratio(r.get('ms'), ref)} |"
        if "ms" in r:
            out.append(
                head
                + f" {r['ms']:.1f} | {r['ms_min']:.1f} | {r['cpu_ms']:.0f} | {r['peak_gb']:.2f}"
                + f" | {r['base_gb']:.2f} | {r['loss']:.4f} |" + tail
            )
        else:
            out.append(head + f" skipped: {r.get('skipped') or r.get('error')} | | | | | |" + tail)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs="+", help="map sizes (H = W); default: the default suite")
    p.add_argument("--maps", type=int, default=16, help="maps per batch (images x 2 views)")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--modes", default="stride4,block16,block32,full,dense_fg,dense,global",
                   help="comma separated: strideN, blockN, full, dense_fg, dense, global")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="full mode: cap on anchors and keys per block (default: automatic)")
    p.add_argument("--fg", type=float, default=0.05, help="foreground fraction")
    p.add_argument("--global-batch", type=int, default=80)
    p.add_argument("--global-dim", type=int, default=256)
    p.add_argument("--dense-limit-gb", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    p.add_argument("--no-reference", action="store_true", help="do not time the paper's reference code")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print("RESULT " + json.dumps(run_case(json.loads(args.child))), flush=True)
        return

    if args.repeats < 5:
        print(f"note: --repeats {args.repeats} < 5", file=sys.stderr)
    chunk = args.chunk_size  # None: the library's automatic block size
    suite = (
        [(s, args.maps, args.channels, args.modes.split(",")) for s in args.size]
        if args.size
        else DEFAULT_SUITE
    )
    print(machine_line(), flush=True)
    reference = Reference(enabled=not args.no_reference, timeout=args.timeout)
    print(reference.header(), flush=True)
    rows = []
    for size, maps, channels, modes in suite:
        for mode in modes:
            case = dict(
                mode=mode.strip(), size=size, maps=maps, channels=channels, fg=args.fg,
                repeats=args.repeats, warmup=args.warmup, chunk_size=chunk,
                global_batch=args.global_batch, global_dim=args.global_dim,
                dense_limit_gb=args.dense_limit_gb,
            )
            t0 = time.time()
            row = spawn(case, args.timeout)
            ref_case = reference_case(row)
            if ref_case and reference.available:
                row["reference"] = reference.time(ref_case, repeats=args.repeats, warmup=1)
            rows.append(row)
            print(f"done {mode} size={size} maps={maps} C={channels} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
