"""A run killed with SIGKILL mid-epoch resumes from its last checkpoint with the same command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import REPO

SCRIPTS = Path(__file__).resolve().parent / "scripts"
STEPS_PER_EPOCH = 30  # 3 labeled volumes (half of the 6 train volumes) x 20 slices / batch 2
EPOCHS = 2
CKPT_EVERY = 4


def _latest_checkpoint_step(checkpoints: Path) -> int:
    """Step of the latest checkpoint named in checkpoints/checkpoint (0 if none yet)."""
    try:
        text = (checkpoints / "checkpoint").read_text()
    except OSError:
        return 0
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else 0


def test_sigkill_mid_epoch_then_the_same_command_resumes_and_finishes(phantom_dir, tmp_path) -> None:
    config = {
        "name": "killed",
        "output_dir": str(tmp_path / "runs"),
        "data": {"image_size": 32, "cache_dir": str(tmp_path / "cache")},
        "split": {"ratios": [3, 1, 1], "num_folds": 1},
        "model": {"depth": 2, "base_width": 4},
        "train": {"seed": 0, "finetune_stage": {
            "epochs": EPOCHS, "batch_size": 2, "learning_rate": 1e-3,
            "checkpoint_every_steps": CKPT_EVERY, "validate_every_epochs": 1}},
    }
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    args = ["run", "--config", str(config_path), "--data", str(phantom_dir),
            "--method", "random", "--fraction", "0.5", "--fold", "0"]
    stage_dir = tmp_path / "runs" / "killed" / "fold0" / "frac0.5" / "random" / "finetune"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TFSEMISEG_STEP_DELAY": "0.1"}

    # 1. the run, with steps slowed down to 0.1 s, killed once a mid-epoch checkpoint exists
    log1 = tmp_path / "first.log"
    with open(log1, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "throttled_cli.py"), *args],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 150
            while _latest_checkpoint_step(stage_dir / "checkpoints") == 0:
                assert proc.poll() is None, f"run ended before a checkpoint: {log1.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint within 150 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    killed_at = _latest_checkpoint_step(stage_dir / "checkpoints")
    assert f"({STEPS_PER_EPOCH} steps/epoch)" in log1.read_text()
    assert 0 < killed_at < STEPS_PER_EPOCH, killed_at  # mid-epoch: in the first epoch
    assert not (stage_dir / "stage.json").exists()

    # 2. the same command, not slowed down, resumes from there and finishes
    env.pop("TFSEMISEG_STEP_DELAY")
    run = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    resumed = re.findall(r"resumed from \S+ckpt-(\d+) at step (\d+), epoch (\d+)", run.stderr)
    assert resumed, run.stderr[-3000:]
    ckpt, step, epoch = map(int, resumed[0])
    assert ckpt == step == killed_at and epoch == 0
    assert "resumed from" in (stage_dir / "train.log").read_text()

    stage = json.loads((stage_dir / "stage.json").read_text())
    assert stage["steps"] == EPOCHS * STEPS_PER_EPOCH and stage["epochs"] == EPOCHS
    assert [row["epoch"] for row in stage["history"]] == [1, 2]  # the epochs of the resumed process
    assert (stage_dir / "weights.npz").is_file()
    result = json.loads((stage_dir.parent / "result.json").read_text())
    assert result["method"] == "random" and result["fraction"] == 0.5
    assert 0.0 <= result["metrics"]["pooled_dice"]["mean"] <= 1.0
