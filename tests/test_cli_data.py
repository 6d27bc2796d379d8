"""The data commands of cli.py: make-phantom, prepare, download, and --help."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import PHANTOM_SHAPE, PHANTOM_TRAIN, REPO, np_nearest, read_nifti
from tfsemiseg.cli import cli

SUMMARY_ROW = re.compile(r"^\s*(\d+) (train|val|test|labeled [0-9.]+|extra unlabeled)\s+(\d+)\s+(\d+)\s*(.*)$")


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    # never an unexpected Python exception (those would be a traceback for the user)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def write_config(path: Path, tmp: Path, **sections) -> Path:
    """A YAML config whose cache lives in `tmp`, plus the given top-level sections."""
    data = {"data": {"cache_dir": str(tmp / "cache")}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def assert_one_error_line(result, *needles: str) -> str:
    assert result.exit_code != 0
    # download's progress lines ("  12 MB of 40 MB") may precede the error
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not re.match(r"^\s+\d+ MB", ln)]
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1 and len(lines) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "Traceback" not in result.output
    return errors[0]


def half_up(x: float, n: int) -> int:
    return max(1, int((Decimal(str(x)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


# --------------------------------------------------------------------------- help


def test_every_command_has_help():
    top = run("--help")
    assert top.exit_code == 0
    assert set(cli.commands) >= {"prepare", "make-phantom", "download"}
    for name in cli.commands:
        assert name in top.output
        res = run(name, "--help")
        assert res.exit_code == 0, (name, res.output)
        usage = res.output.splitlines()[0]
        assert usage.startswith("Usage: ") and f" {name} " in usage, usage
        assert "--help" in res.output


# --------------------------------------------------------------------------- make-phantom


def test_make_phantom_then_prepare(tmp_path):
    out = tmp_path / "ph"
    res = run("make-phantom", out, "--train", 5, "--test", 1, "--seed", 3)
    assert res.exit_code == 0, res.output
    assert "wrote 5 labeled and 1 unlabeled phantom volumes" in res.output
    desc = json.loads((out / "dataset.json").read_text())
    assert len(desc["training"]) == 5 and len(desc["test"]) == 1
    assert desc["labels"] == {"0": "background", "1": "head", "2": "tail"}
    for entry in desc["training"]:
        img, lab = read_nifti(out / entry["image"]), read_nifti(out / entry["label"])
        assert img.shape == lab.shape and img.ndim == 3
        assert set(np.unique(lab)) == {0, 1, 2} and img.max() > img.min()
    assert (out / desc["test"][0]).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"]  # no temp folder beside it

    cfg = write_config(tmp_path / "c.yaml", tmp_path)
    res = run("prepare", "--config", cfg, "--data", out, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "dataset Phantom: 5 labeled volumes, 1 unlabeled" in res.output
    assert (tmp_path / "run" / "splits.json").is_file()


def test_make_phantom_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ph"
    assert run("make-phantom", out, "--train", 2, "--test", 0).exit_code == 0
    marker = out / "marker.txt"
    marker.write_text("keep me")
    res = run("make-phantom", out, "--train", 3, "--test", 0)
    assert_one_error_line(res, str(out), "already exists (use --force to replace it)")
    assert marker.read_text() == "keep me"
    assert len(json.loads((out / "dataset.json").read_text())["training"]) == 2

    res = run("make-phantom", out, "--train", 3, "--test", 0, "--force")
    assert res.exit_code == 0, res.output
    assert not marker.exists()
    assert len(json.loads((out / "dataset.json").read_text())["training"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"]


# --------------------------------------------------------------------------- prepare


def test_prepare_summary_on_phantom(phantom_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path)
    run_dir = tmp_path / "run"
    res = run("prepare", "--config", cfg, "--data", phantom_dir, "--out", run_dir)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "dataset Phantom: 10 labeled volumes, 2 unlabeled; classes 0=background, 1=head, 2=tail" in out
    assert f"cache: {PHANTOM_TRAIN} volumes preprocessed now, 0 reused" in out
    assert f"splits: {run_dir / 'splits.json'} (4 folds)" in out

    splits = json.loads((run_dir / "splits.json").read_text())
    rows = {}
    for line in out.splitlines():
        m = SUMMARY_ROW.match(line)
        if m:
            rows[(int(m[1]), m[2])] = (int(m[3]), int(m[4]), m[5])
    slices_per_volume = PHANTOM_SHAPE[2]  # default slice axis: last
    assert len(rows) == 4 * (3 + 3)
    for fold in splits["folds"]:
        k = fold["fold"]
        for part in ("train", "val", "test"):
            n = len(fold[part])
            assert rows[(k, part)][:2] == (n, n * slices_per_volume), (k, part)
        n_train = len(fold["train"])
        for f in ("0.05", "0.1", "0.2"):
            n = half_up(float(f), n_train)
            assert rows[(k, f"labeled {f}")][:2] == (n, n * slices_per_volume)

    # class percentages of fold 0's train part, from the label files (nearest resize to 64)
    counts = np.zeros(3)
    for cid in splits["folds"][0]["train"]:
        lab = np.moveaxis(read_nifti(phantom_dir / "labelsTr" / f"{cid}.nii.gz"), -1, 0)
        for sl in lab:
            counts += np.bincount(np_nearest(sl, 64).ravel(), minlength=3)
    pct = [float(p.rstrip("%")) for p in rows[(0, "train")][2].split()]
    np.testing.assert_allclose(pct, 100 * counts / counts.sum(), atol=0.006)

    again = run("prepare", "--config", cfg, "--data", phantom_dir, "--out", run_dir)
    assert again.exit_code == 0
    assert f"cache: 0 volumes preprocessed now, {PHANTOM_TRAIN} reused" in again.output
    assert [ln for ln in again.output.splitlines() if SUMMARY_ROW.match(ln)] == \
           [ln for ln in out.splitlines() if SUMMARY_ROW.match(ln)]


def test_prepare_custom_fractions_and_changed_seed(phantom_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path)
    res = run("prepare", "--config", cfg, "--data", phantom_dir, "--out", tmp_path / "run", "--fractions", 0.5)
    assert res.exit_code == 0
    assert re.search(r"^\s*0 labeled 0\.5\s+3\s+60\b", res.output, re.M)
    assert "labeled 0.05" not in res.output
    other = write_config(tmp_path / "c2.yaml", tmp_path, split={"seed": 99})
    res = run("prepare", "--config", other, "--data", phantom_dir, "--out", tmp_path / "run")
    assert_one_error_line(res, str(tmp_path / "run" / "splits.json"), "different seed")


def _truncate(root: Path) -> Path:
    bad = root / "imagesTr" / "phantom_000.nii.gz"  # the first case: fails before any TF import
    bad.write_bytes(bad.read_bytes()[:3000])
    return bad


def _missing_json(root: Path) -> Path:
    (root / "dataset.json").unlink()
    return root / "dataset.json"


def _shape_mismatch(root: Path) -> Path:
    from conftest import write_nifti

    bad = root / "labelsTr" / "phantom_005.nii.gz"
    write_nifti(bad, read_nifti(bad)[1:])
    return bad


@pytest.mark.parametrize("corrupt, problem", [(_truncate, "truncated"), (_missing_json, "missing"),
                                              (_shape_mismatch, "does not match")])
def test_prepare_bad_data_one_error_line(copy_phantom, tmp_path, corrupt, problem):
    root = copy_phantom()
    bad = corrupt(root)
    cfg = write_config(tmp_path / "c.yaml", tmp_path)
    res = run("prepare", "--config", cfg, "--data", root, "--out", tmp_path / "run")
    name = str(bad.resolve()) if bad.exists() else str(bad)
    assert_one_error_line(res, name, problem)
    assert res.exit_code == 1


def test_prepare_bad_data_subprocess_no_traceback(copy_phantom, tmp_path):
    """The real process: exit code 1, one `Error:` line on stderr, no traceback."""
    root = copy_phantom()
    bad = _truncate(root)
    cfg = write_config(tmp_path / "c.yaml", tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "prepare", "--config", str(cfg), "--data", str(root),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(bad.resolve()) in lines[0], proc.stderr
    assert "unreadable or truncated NIfTI file" in lines[0]
    assert not (tmp_path / "run").exists()  # failed before writing anything


def test_prepare_missing_data_option():
    res = CliRunner().invoke(cli, ["prepare"])
    assert res.exit_code == 2 and "Missing option '--data'" in res.output


# --------------------------------------------------------------------------- download


TASK = "Task04_Hippocampus"


@pytest.fixture
def task_archive(phantom_dir, tmp_path) -> Path:
    """A tar holding Task04_Hippocampus/ (dataset.json + a phantom), like the MSD archives."""
    src = tmp_path / "src" / TASK
    shutil.copytree(phantom_dir, src)
    archive = tmp_path / "archive" / f"{TASK}.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=TASK)
    return archive


def _download_config(tmp_path: Path, url: str, checksum: str) -> Path:
    return write_config(tmp_path / "dl.yaml", tmp_path, downloads={TASK: {"url": url, "checksum": checksum}})


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_download_file_url_extracts(task_archive, phantom_dir, tmp_path, algo):
    digest = hashlib.new(algo, task_archive.read_bytes()).hexdigest()
    cfg = _download_config(tmp_path, task_archive.as_uri(), f"{algo}:{digest}")
    dest = tmp_path / "data"
    res = run("download", TASK, "--config", cfg, "--to", dest)
    assert res.exit_code == 0, res.output
    assert f"extracted {TASK} to {dest / TASK}" in res.output
    assert [p.name for p in dest.iterdir()] == [TASK]  # no temp folder or archive left
    got = sorted(p.relative_to(dest / TASK) for p in (dest / TASK).rglob("*") if p.is_file())
    want = sorted(p.relative_to(phantom_dir) for p in phantom_dir.rglob("*") if p.is_file())
    assert got == want and (dest / TASK / "dataset.json").is_file()
    for rel in want:
        assert (dest / TASK / rel).read_bytes() == (phantom_dir / rel).read_bytes()

    # a second download into the same place is refused, the data untouched
    res = run("download", TASK, "--config", cfg, "--to", dest)
    assert_one_error_line(res, str(dest / TASK), "already exists")
    assert [p.name for p in dest.iterdir()] == [TASK]


def test_download_bad_checksum_leaves_nothing(task_archive, tmp_path):
    wrong = "0" * 64
    cfg = _download_config(tmp_path, task_archive.as_uri(), f"sha256:{wrong}")
    dest = tmp_path / "data"
    res = run("download", TASK, "--config", cfg, "--to", dest)
    actual = hashlib.sha256(task_archive.read_bytes()).hexdigest()
    assert_one_error_line(res, task_archive.as_uri(), "checksum mismatch", actual, wrong)
    assert list(dest.iterdir()) == []


def test_download_missing_url_leaves_nothing(tmp_path):
    cfg = _download_config(tmp_path, "file:///nonexistent/Task04_Hippocampus.tar", "md5:" + "0" * 32)
    dest = tmp_path / "data"
    res = run("download", TASK, "--config", cfg, "--to", dest)
    assert_one_error_line(res, "file:///nonexistent/Task04_Hippocampus.tar", "download failed")
    assert list(dest.iterdir()) == []


def test_download_archive_without_dataset_json(tmp_path):
    src = tmp_path / "src" / TASK
    src.mkdir(parents=True)
    (src / "readme.txt").write_text("no dataset.json here")
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=TASK)
    cfg = _download_config(tmp_path, archive.as_uri(), "md5:" + hashlib.md5(archive.read_bytes()).hexdigest())
    dest = tmp_path / "data"
    res = run("download", TASK, "--config", cfg, "--to", dest)
    assert_one_error_line(res, f"archive has no {TASK}/dataset.json")
    assert list(dest.iterdir()) == []


def test_download_unknown_task(tmp_path):
    res = run("download", "Task99_Nothing", "--to", tmp_path / "data")
    assert_one_error_line(res, "unknown task 'Task99_Nothing'", "Task02_Heart", "Task04_Hippocampus")
