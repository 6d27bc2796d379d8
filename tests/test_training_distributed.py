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
# summed gradient is clipped, not each replica's part
STAGES = ("global", "local-stride", "local-block", "local-full", "local-self", "finetune+clip", "mixup", "tcsm")


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
    included), for every stage of every method: global, local (stride, block, full and
    the self-supervised one), fine-tune, mixup (one lambda and one permutation of the
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


def test_multi_worker_mirrored_strategy_two_workers_end_with_identical_weights(tmp_path) -> None:
    ports = ",".join(map(str, _free_ports(2)))
    steps = 3
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / "multiworker.py"), "--index", str(i), "--ports", ports,
             "--out", str(tmp_path), "--steps", str(steps)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for i in range(2)
    ]
    _, outputs = _while_running(procs, lambda: None)
    results = [_result(out) for out, _ in outputs]
    for i, r in enumerate(results):
        assert r["index"] == i and r["replicas"] == 2
        assert r["steps"] == steps and r["iterations"] == steps
        assert np.isfinite(r["loss"])
    assert results[0]["loss"] == results[1]["loss"]
    w0, w1 = np.load(tmp_path / "worker0.npz"), np.load(tmp_path / "worker1.npz")
    init = np.load(tmp_path / "worker0_init.npz")
    assert sorted(w0.files) == sorted(w1.files) and len(w0.files) > 0
    differ = [k for k in w0.files if not np.array_equal(w0[k], w1[k])]
    assert not differ, f"the workers' weights differ: {differ}"
    assert any(not np.allclose(w0[k], init[k]) for k in w0.files if "kernel" in k)
    # one stage folder: worker 0 (the chief) alone wrote checkpoints, log and summaries;
    # worker 1's scratch checkpoints are gone
    assert [r["chief"] for r in results] == [True, False]
    stage = tmp_path / "stage"
    assert (stage / "checkpoints" / "checkpoint").is_file() and (stage / "train.log").is_file()
    assert len(list((stage / "tb").iterdir())) == 1
    assert sorted(p.name for p in stage.iterdir()) == ["checkpoints", "tb", "train.log"]


def test_multi_worker_contrastive_and_finetune_steps_match_one_process(tmp_path) -> None:
    """Two worker processes (MultiWorkerMirroredStrategy on 127.0.0.1) take one step of the
    global stage (NT-Xent over the batch gathered across the workers) and of fine-tuning
    (with gradient clipping) on a fixed global batch; each worker's loss and weights equal
    a single-process run's."""
    stages = ("global", "finetune+clip")  # clipped: the summed gradient of both workers is clipped
    init = tmp_path / "init"
    engine_step.write_init(init)
    ports = ",".join(map(str, _free_ports(2)))
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / "multiworker_step.py"), "--index", str(i), "--ports", ports,
             "--init", str(init), "--out", str(tmp_path / f"worker{i}"), "--stages", ",".join(stages)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for i in range(2)
    ]
    one, outputs = _while_running(procs, lambda: engine_step.run_stages(
        tf.distribute.get_strategy(), init, tmp_path / "one", stages))
    for i, (out, _) in enumerate(outputs):
        r = _result(out)
        assert r["index"] == i and r["replicas"] == 2
        for stage in stages:
            assert np.isclose(r["stages"][stage]["loss"], one[stage]["loss"], rtol=1e-5, atol=1e-6), (i, stage)
            bad, moved = _compare(tmp_path / "one" / f"{stage}_after.npz", tmp_path / f"worker{i}" / f"{stage}_after.npz",
                                  init / f"{engine_step.MODEL_OF[stage.split('+')[0]]}_init.npz")
            assert not bad, f"worker {i}, {stage}: weights differ from one process: {bad}"
            assert moved > 100 * ATOL, stage
