"""Distributed training gives the single-device result.

* 2 logical CPU devices (MirroredStrategy) against 1: one step of every stage on the
  same global batch from the same initial weights gives the same loss and weights.
* MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train in lockstep and
  end with identical weights.

Logical devices and TF_CONFIG must be set before TensorFlow initialises, so the
multi-device runs are subprocesses (tests/scripts/) that print a `RESULT {json}` line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

SCRIPTS = Path(__file__).resolve().parent / "scripts"
_spec = importlib.util.spec_from_file_location("engine_step", SCRIPTS / "engine_step.py")
engine_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_step)

RTOL, ATOL = 1e-4, 1e-5


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, "no RESULT line"
    return json.loads(lines[-1][len("RESULT "):])


def _while_running(procs: list[subprocess.Popen], work, timeout: float = 400):
    """(work(), [(stdout, stderr)] of each process) with `work` run while the processes run;
    each must exit 0, and none is left running."""
    outputs = []
    try:
        value = work()
        for p in procs:
            outputs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    return value, outputs


def _compare(reference: Path, other: Path, init: Path) -> tuple[list[str], float]:
    """(names of variables outside tolerance, largest change of a trainable weight by the step)."""
    a, b, w0 = np.load(reference), np.load(other), np.load(init)
    assert sorted(a.files) == sorted(b.files)
    bad = [k for k in a.files if not np.allclose(b[k], a[k], rtol=RTOL, atol=ATOL)]
    moved = max(float(np.abs(a[k] - w0[k]).max()) for k in a.files if "moving_" not in k)
    return bad, moved


# fine-tune with clip_norm far below the gradient norm: also checks that the replicas'
# summed gradient is clipped, not each replica's part. One supervised local mode stands
# for the three: they share the step and the loss (`_pooled_loss` on the replica-gathered
# features) and differ only in which pixels form a pool, which test_losses_local checks.
STAGES = ("global", "local-block", "local-self", "finetune+clip", "mixup", "tcsm")


def _implied_gradient_norm(after: Path, init: Path, lr: float) -> float:
    """Global norm of the gradient of a first Adam step with epsilon 1 (engine_step):
    |dw| = lr * c * |g| / (c * |g| + 1), c = sqrt(1 - beta_2)."""
    a, w0 = np.load(after), np.load(init)
    c = np.sqrt(1 - 0.999)
    sq = 0.0
    for k in a.files:
        if "moving_" not in k:
            d = np.abs(a[k].astype(np.float64) - w0[k])
            sq += float(np.sum((d / (c * (lr - d))) ** 2))
    return float(np.sqrt(sq))


def test_two_devices_match_one_device_for_every_stage(tmp_path) -> None:
    """One step on the same global batch: same loss, same weights (BatchNorm statistics
    included), for every stage of every method: global, local (block for the three
    supervised modes, and the self-supervised one), fine-tune, mixup (one lambda and one permutation of the
    global batch) and TCSM (one transform, noise drawn for the global batch; the
    teacher's weights are compared); and a skipped local step changes nothing on 2
    devices either."""
    init = tmp_path / "init"
    engine_step.write_init(init)
    cmd = [sys.executable, str(SCRIPTS / "engine_step.py"), "--devices", "2", "--init", str(init),
           "--out", str(tmp_path / "two"), "--stages", ",".join(STAGES)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    # the single-device reference, in this process while the child runs
    one, [(stdout, _)] = _while_running([child], lambda: engine_step.run_stages(
        tf.distribute.get_strategy(), init, tmp_path / "one", STAGES))
    two = _result(stdout)
    assert two["replicas"] == 2
    for stage in STAGES:
        r1, r2 = one[stage], two["stages"][stage]
        assert r1["iterations"] == r2["iterations"] == 1 and r1["steps"] == r2["steps"] == 1, stage
        assert np.isclose(r2["loss"], r1["loss"], rtol=1e-5, atol=1e-6), (stage, r1["loss"], r2["loss"])
        model = engine_step.MODEL_OF[stage.split("-")[0].split("+")[0]]
        bad, moved = _compare(tmp_path / "one" / f"{stage}_after.npz", tmp_path / "two" / f"{stage}_after.npz",
                              init / f"{model}_init.npz")
        assert not bad, f"{stage}: weights differ between 1 and 2 devices: {bad}"
        assert moved > 100 * ATOL, f"{stage}: the step barely moved the weights ({moved})"
        if stage.startswith("local") and stage != "local-self":  # then a batch without foreground: skipped, nothing changes
            for r in (r1, r2):
                assert r["skipped_count"] == 0 and r["skipped_unchanged"] and r["iterations_after_skip"] == 1
    # the clipped step's gradient has exactly the clip norm, on 1 and on 2 devices
    lr = engine_step.make_config(engine_step.CLIP_NORM).train.finetune_stage.learning_rate
    for run in ("one", "two"):
        norm = _implied_gradient_norm(tmp_path / run / "finetune+clip_after.npz", init / "segmenter_init.npz", lr)
        assert norm == pytest.approx(engine_step.CLIP_NORM, rel=1e-2), run


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


MULTI_WORKER_STAGES = ("global", "finetune+clip")  # clipped: the summed gradient of both workers is clipped
FIT_STEPS = 3


@pytest.fixture(scope="module")
def multi_worker_run(tmp_path_factory) -> dict:
    """Two worker processes (MultiWorkerMirroredStrategy on 127.0.0.1), started once for
    both tests below: one step of each of MULTI_WORKER_STAGES on the fixed global batch,
    then FIT_STEPS steps of fine-tuning through `Trainer.fit` in one stage folder; and the
    single-process run of the same steps, in this process while the workers run."""
    tmp = tmp_path_factory.mktemp("multi_worker")
    init = tmp / "init"
    engine_step.write_init(init)
    ports = ",".join(map(str, _free_ports(2)))
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / "multiworker_step.py"), "--index", str(i), "--ports", ports,
             "--init", str(init), "--out", str(tmp / f"worker{i}"), "--stages", ",".join(MULTI_WORKER_STAGES),
             "--fit-out", str(tmp / "fit"), "--fit-steps", str(FIT_STEPS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for i in range(2)
    ]
    one, outputs = _while_running(procs, lambda: engine_step.run_stages(
        tf.distribute.get_strategy(), init, tmp / "one", MULTI_WORKER_STAGES))
    return {"tmp": tmp, "init": init, "one": one, "workers": [_result(out) for out, _ in outputs]}


def test_multi_worker_mirrored_strategy_two_workers_end_with_identical_weights(multi_worker_run) -> None:
    tmp = multi_worker_run["tmp"] / "fit"
    results = [r["fit"] for r in multi_worker_run["workers"]]
    for i, r in enumerate(results):
        assert r["index"] == i and r["replicas"] == 2
        assert r["steps"] == FIT_STEPS and r["iterations"] == FIT_STEPS
        assert np.isfinite(r["loss"])
    assert results[0]["loss"] == results[1]["loss"]
    w0, w1 = np.load(tmp / "worker0.npz"), np.load(tmp / "worker1.npz")
    init = np.load(tmp / "worker0_init.npz")
    assert sorted(w0.files) == sorted(w1.files) and len(w0.files) > 0
    differ = [k for k in w0.files if not np.array_equal(w0[k], w1[k])]
    assert not differ, f"the workers' weights differ: {differ}"
    assert any(not np.allclose(w0[k], init[k]) for k in w0.files if "kernel" in k)
    # one stage folder: worker 0 (the chief) alone wrote checkpoints, log and summaries;
    # worker 1's scratch checkpoints are gone
    assert [r["chief"] for r in results] == [True, False]
    stage = tmp / "stage"
    assert (stage / "checkpoints" / "checkpoint").is_file() and (stage / "train.log").is_file()
    assert len(list((stage / "tb").iterdir())) == 1
    assert sorted(p.name for p in stage.iterdir()) == ["checkpoints", "tb", "train.log"]


def test_multi_worker_contrastive_and_finetune_steps_match_one_process(multi_worker_run) -> None:
    """Each worker's loss and weights after one step of the global stage (NT-Xent over the
    batch gathered across the workers) and of fine-tuning (with gradient clipping) on a
    fixed global batch equal a single-process run's."""
    tmp, init, one = multi_worker_run["tmp"], multi_worker_run["init"], multi_worker_run["one"]
    for i, r in enumerate(multi_worker_run["workers"]):
        assert r["index"] == i and r["replicas"] == 2
        for stage in MULTI_WORKER_STAGES:
            assert np.isclose(r["stages"][stage]["loss"], one[stage]["loss"], rtol=1e-5, atol=1e-6), (i, stage)
            bad, moved = _compare(tmp / "one" / f"{stage}_after.npz", tmp / f"worker{i}" / f"{stage}_after.npz",
                                  init / f"{engine_step.MODEL_OF[stage.split('+')[0]]}_init.npz")
            assert not bad, f"worker {i}, {stage}: weights differ from one process: {bad}"
            assert moved > 100 * ATOL, stage
