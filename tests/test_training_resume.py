"""A run killed with SIGKILL mid-epoch resumes from its last checkpoint with the same command;
a retrained parent stage makes the stages after it stale; older stage digests are reused."""

from __future__ import annotations

import hashlib
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
FINETUNE_STEPS_PER_EPOCH = 30  # 3 labeled volumes (half of the 6 train volumes) x 20 slices / batch 2


def _latest_checkpoint_step(checkpoints: Path) -> int:
    """Step of the latest checkpoint named in checkpoints/checkpoint (0 if none yet)."""
    try:
        text = (checkpoints / "checkpoint").read_text()
    except OSError:
        return 0
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else 0


# --------------------------------------------------------------------------- every stage, and export

THREE_STAGES = ("global", "local", "finetune")


def _three_stage_config(tmp_path: Path) -> Path:
    """global+local-block on the phantom at 32x32: 15 global, 15 local and 30 fine-tuning
    steps per epoch, 2 epochs each, a checkpoint every 3 steps, fixed data order."""
    stage = {"epochs": 2, "learning_rate": 1e-3, "checkpoint_every_steps": 3}
    config = {
        "name": "killed",
        "output_dir": str(tmp_path / "runs"),
        "data": {"image_size": 32, "cache_dir": str(tmp_path / "cache")},
        "split": {"ratios": [3, 1, 1], "num_folds": 1},
        "model": {"depth": 2, "base_width": 4, "global_head_dims": [16, 8], "local_head_dims": [8, 8]},
        "train": {"seed": 0, "deterministic": True,
                  "global_stage": {**stage, "batch_size": 8},
                  "local_stage": {**stage, "batch_size": 4},
                  "global_loss": {"temperature": 0.5}, "local_loss": {"block_size": 16},
                  "finetune_stage": {**stage, "batch_size": 2, "validate_every_epochs": 1}},
    }
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_until(args: list[str], cwd: Path, env: dict, log: Path, ready, what: str) -> None:
    """Start throttled `cli.py ARGS`, SIGKILL it as soon as `ready()` holds."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "throttled_cli.py"), *args],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not ready():
                assert proc.poll() is None, f"ended before {what}: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no {what} within 240 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sigkill_inside_every_stage_and_export_then_rerun_matches_an_uninterrupted_run(phantom_dir, tmp_path):
    """Killed once inside the global, the local and the fine-tuning stage (at its first
    checkpoint, mid-epoch), then inside export: re-running the same commands finishes,
    with the weights of an uninterrupted run, and no partial SavedModel is ever where
    `predict` would load it. The killed run has no --out: it goes to the config's
    output_dir/name.

    Every op on this path is deterministic on the CPU with a fixed data order
    (`train.deterministic`), so the weights are compared for equality up to float32
    round-off (1e-6); oneDNN's convolutions and Eigen's reductions give the same result
    for the same inputs and thread count."""
    import numpy as np

    cfg = _three_stage_config(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = ["run", "--config", str(cfg), "--data", str(phantom_dir), "--method", "global+local-block",
              "--fraction", "0.5", "--fold", "0"]
    plain = subprocess.run([sys.executable, str(REPO / "cli.py"), *common, "--out", str(tmp_path / "uninterrupted")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]

    def folders(root: Path) -> dict[str, Path]:
        cell = root / "fold0" / "frac0.5" / "global+local-block"
        return {"global": root / "fold0" / "global", "local": cell / "local", "finetune": cell / "finetune"}

    killed, reference = folders(tmp_path / "runs" / "killed"), folders(tmp_path / "uninterrupted")
    cell = killed["finetune"].parent
    slow = {**env, "TFSEMISEG_STEP_DELAY": "0.1"}
    for stage in THREE_STAGES:
        folder = killed[stage]
        _run_until(common, tmp_path, slow, tmp_path / f"kill_{stage}.log",
                   lambda: _latest_checkpoint_step(folder / "checkpoints") > 0, f"a {stage} checkpoint")
        assert not (folder / "stage.json").exists(), f"killed after {stage} finished"
    killed_at = _latest_checkpoint_step(killed["finetune"] / "checkpoints")
    assert f"({FINETUNE_STEPS_PER_EPOCH} steps/epoch" in (tmp_path / "kill_finetune.log").read_text()
    assert 0 < killed_at < FINETUNE_STEPS_PER_EPOCH, killed_at  # mid-epoch: in the first epoch

    again = subprocess.run([sys.executable, str(REPO / "cli.py"), *common], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # only the fine-tuning stage was left to resume: from its checkpoint, in epoch 0
    resumed = re.findall(r"resumed from \S+ckpt-(\d+) at step (\d+), epoch (\d+)", again.stderr)
    assert [tuple(map(int, r)) for r in resumed] == [(killed_at, killed_at, 0)], again.stderr[-3000:]
    for stage in THREE_STAGES:
        info = json.loads((killed[stage] / "stage.json").read_text())
        assert "resumed from" in (killed[stage] / "train.log").read_text(), stage
        a, b = np.load(killed[stage] / "weights.npz"), np.load(reference[stage] / "weights.npz")
        assert sorted(a.files) == sorted(b.files)
        bad = [k for k in a.files if not np.allclose(a[k], b[k], rtol=1e-6, atol=1e-6)]
        assert not bad, f"{stage}: weights differ from the uninterrupted run: {bad[:5]}"
        assert info["steps"] == json.loads((reference[stage] / "stage.json").read_text())["steps"]
    finetune = json.loads((killed["finetune"] / "stage.json").read_text())
    assert finetune["steps"] == 2 * FINETUNE_STEPS_PER_EPOCH and finetune["epochs"] == 2
    assert [row["epoch"] for row in finetune["history"]] == [1, 2]  # the epochs of the resumed process
    result = json.loads((cell / "result.json").read_text())
    assert result["method"] == "global+local-block" and result["fraction"] == 0.5
    assert 0.0 <= result["metrics"]["pooled_dice"]["mean"] <= 1.0

    # export, killed after the SavedModel is written into its temporary folder
    dest = tmp_path / "models" / "m"
    export = ["export", str(cell), "--to", str(dest)]
    _run_until(export, tmp_path, {**env, "TFSEMISEG_EXPORT_DELAY": "60"}, tmp_path / "kill_export.log",
               lambda: any((p / "saved_model.pb").exists() for p in dest.parent.glob(".m.*")), "a temporary SavedModel")
    assert not dest.exists()  # nothing where predict would look
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), *export], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (dest / "saved_model.pb").is_file() and (dest / "metadata.json").is_file()
    assert [p.name for p in dest.parent.iterdir()] == ["m"]  # the killed export's leftovers are gone
    meta = json.loads((dest / "metadata.json").read_text())
    assert meta["training_precision"] == {"global": "float32", "local": "float32", "finetune": "float32"}


def test_retrained_parent_stage_makes_later_stages_stale(phantom_dir, tmp_path):
    """Once a parent stage is retrained (other weights), every finished stage after it is
    refused, one at a time, with the folder to delete named; deleting it as told and
    rerunning the same command retrains it."""
    import shutil

    cfg = _three_stage_config(tmp_path)
    root = tmp_path / "r"
    args = [sys.executable, str(REPO / "cli.py"), "run", "--config", str(cfg), "--data", str(phantom_dir),
            "--method", "global+local-block", "--fraction", "0.5", "--fold", "0", "--out", str(root),
            "--set", "train.local_stage.epochs=1", "--set", "train.finetune_stage.epochs=1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*args, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)

    first = run("--set", "train.global_stage.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    cell = root / "fold0" / "frac0.5" / "global+local-block"
    shutil.rmtree(root / "fold0" / "global")  # the global stage retrained, for longer
    retrained = run("--set", "train.global_stage.epochs=2")
    assert retrained.returncode != 0
    assert f"{cell / 'local'}: stale" in retrained.stderr and f"delete {cell / 'local'}" in retrained.stderr
    assert "Traceback" not in retrained.stderr
    assert json.loads((root / "fold0" / "global" / "stage.json").read_text())["epochs"] == 2
    shutil.rmtree(cell / "local")  # as told: then the fine-tuning stage is the stale one
    retrained = run("--set", "train.global_stage.epochs=2")
    assert retrained.returncode != 0 and f"{cell / 'finetune'}: stale" in retrained.stderr
    shutil.rmtree(cell / "finetune")
    done = run("--set", "train.global_stage.epochs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already finished" in done.stdout  # global and local reused, fine-tuning retrained
    assert json.loads((cell / "result.json").read_text())["stages"]["global"]["epochs"] == 2


def _older_digest(cfg, plan, mode: str, spacing: bool = True) -> str:
    """The stage digest as the version before train.global_loss / train.local_loss wrote it:
    the loss settings and a mode inside the stage's own section (`spacing=False`: as the
    versions before data.spacing wrote it)."""
    d = cfg.to_dict()
    d["data"].pop("cache_dir")
    if not spacing:
        d["data"].pop("spacing")
    train = d["train"]
    stage = {k: v for k, v in train[f"{plan.name}_stage"].items() if k != "select_best"}  # not in those versions
    stage.update(temperature=0.1, mode="stride", stride=4, block_size=16)
    if plan.name in ("global", "local"):
        stage.update(train[f"{plan.name}_loss"])
    if plan.name == "local":
        stage["mode"] = mode
    parts = {"data": d["data"], "split": d["split"], "model": d["model"], "augment": d["augment"], "stage": stage,
             "seed": train["seed"], "plan": [plan.name, plan.init_from, plan.local_mode, plan.variant]}
    if plan.variant or plan.local_mode == "self":
        parts["baselines"] = train["baselines"]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def test_finished_stages_of_the_previous_config_layout_are_reused(tmp_path):
    """A stage.json written before the loss settings left the stage sections (and before
    data.spacing existed) is accepted for the same settings, and refused for other ones."""
    from tfsemiseg.config import load_config
    from tfsemiseg.errors import TfSemisegError
    from tfsemiseg.training.methods import _check_reuse, _older_digests, _stage_digest
    from tfsemiseg.training.plans import METHODS

    cfg = load_config(REPO / "configs" / "hippocampus.yaml")
    folder = tmp_path / "stage"
    folder.mkdir()
    for method in ("global+local-block", "global+local-stride", "global+local-self", "tcsm", "random"):
        for plan in METHODS[method]:
            mode = plan.local_mode if plan.local_mode != "self" else "block"
            for spacing in (True, False):
                old = _older_digest(cfg, plan, mode, spacing)
                assert old != _stage_digest(cfg, plan) and old in _older_digests(cfg, plan), (method, plan, spacing)
                (folder / "stage.json").write_text(json.dumps({"config_digest": old}))
                _check_reuse(folder, _stage_digest(cfg, plan), None, _older_digests(cfg, plan))
    spaced = cfg.replace(**{"data.spacing": [1.0, 1.0, 1.0]})  # set: only the digests that hold it
    plan = METHODS["random"][0]
    assert _older_digest(spaced, plan, "block", spacing=False) not in _older_digests(spaced, plan)
    other = cfg.replace(**{"train.local_loss.temperature": 0.05})
    plan = METHODS["global+local-block"][1]
    (folder / "stage.json").write_text(json.dumps({"config_digest": _older_digest(cfg, plan, "block")}))
    try:
        _check_reuse(folder, _stage_digest(other, plan), None, _older_digests(other, plan))
    except TfSemisegError as exc:
        assert "finished with a different configuration" in str(exc)
    else:
        raise AssertionError("a stage finished with other settings was reused")


def test_select_best_at_its_former_behaviour_keeps_the_digest():
    """Before `select_best` existed, fine-tuning kept its best validation checkpoint and the
    other stages their last: at those values a stage's digest is the one those versions
    wrote (no `select_best` in it), so their finished stages are reused; other values change it."""
    import dataclasses

    from tfsemiseg.config import load_config
    from tfsemiseg.training.methods import _older_digests, _stage_digest
    from tfsemiseg.training.plans import METHODS

    cfg = load_config(REPO / "configs" / "hippocampus.yaml")
    for plan in METHODS["global+local-block"]:
        d = cfg.to_dict()
        d["data"].pop("cache_dir")
        stage = {k: v for k, v in d["train"][f"{plan.name}_stage"].items() if k != "select_best"}
        parts = {"data": d["data"], "split": d["split"], "model": d["model"], "augment": d["augment"],
                 "stage": stage, "seed": d["train"]["seed"],
                 "plan": [plan.name, plan.init_from, plan.local_mode, plan.variant],
                 "loss": d["train"][f"{plan.name}_loss"] if plan.name != "finetune" else None}
        if parts["loss"] is None:
            parts.pop("loss")
        before = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        assert _stage_digest(cfg, plan) == before, plan
    for method, plans in METHODS.items():  # every plan, at the former behaviour: no select_best in the digest
        for plan in plans:
            stage_dict = dataclasses.asdict(getattr(cfg.train, f"{plan.name}_stage"))
            assert stage_dict["select_best"] == (plan.name == "finetune"), (method, plan)
    # the grid's finished global stages (written before select_best existed) are still reused
    glob = METHODS["global"][0]
    saved = sorted((REPO / "docs" / "results" / "hippocampus" / "paper-schedule").glob("fold*/global/stage.json"))
    for path in saved:
        digest = json.loads(path.read_text())["config_digest"]
        assert digest in [_stage_digest(cfg, glob), *_older_digests(cfg, glob)], path
    glob, tune = METHODS["global"]
    assert _stage_digest(cfg.replace(**{"train.global_stage.select_best": True}), glob) != _stage_digest(cfg, glob)
    assert _stage_digest(cfg.replace(**{"train.finetune_stage.select_best": False}), tune) != _stage_digest(cfg, tune)


def test_global_stage_selected_on_validation_loss_end_to_end(phantom_dir, tmp_path):
    """`train.global_stage.select_best: true` through the CLI: the global stage validates its
    NT-Xent on the split's validation slices every epoch, keeps the lowest, and the stage file
    and result.json record it."""
    cfg = _three_stage_config(tmp_path)
    root = tmp_path / "r"
    done = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "run", "--config", str(cfg), "--data", str(phantom_dir),
         "--method", "global", "--fraction", "0.5", "--fold", "0", "--out", str(root),
         "--set", "train.global_stage.epochs=3", "--set", "train.global_stage.select_best=true",
         "--set", "train.finetune_stage.epochs=1"],
        cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((root / "fold0" / "global" / "stage.json").read_text())
    losses = [row["val_loss"] for row in info["history"]]
    assert len(losses) == 3 and all(v > 0 for v in losses)
    assert info["best_val_loss"] == min(losses) and info["best_val_dice"] is None
    result = json.loads((root / "fold0" / "frac0.5" / "global" / "result.json").read_text())
    assert result["stages"]["global"]["best_val_loss"] == min(losses)
    assert result["stages"]["finetune"]["best_val_loss"] is None
    # a fold without validation slices: one clear error
    none = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "run", "--config", str(cfg), "--data", str(phantom_dir),
         "--method", "global", "--fraction", "0.5", "--fold", "0", "--out", str(tmp_path / "none"),
         "--set", "split.ratios=[3,0,1]", "--set", "train.global_stage.select_best=true"],
        cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=400)
    assert none.returncode != 0 and "Traceback" not in none.stderr
    assert ("train.global_stage.select_best: fold 0 has 0 validation volume(s) and 0 slice(s); the validation "
            "loss needs at least 2 slices") in none.stderr, none.stderr[-2000:]
