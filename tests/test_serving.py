"""SavedModel export and NIfTI prediction, on a model briefly trained on real Hippocampus data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REAL_DATA, REPO, write_nifti

TRAIN_CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007",
               "hippocampus_008", "hippocampus_011", "hippocampus_014", "hippocampus_015", "hippocampus_017"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 'random' run fine-tuned briefly on 10 real volumes (6 train / 2 val / 2 test)."""
    if not (REAL_DATA / "dataset.json").is_file():
        pytest.skip(f"real Hippocampus data not found at {REAL_DATA}; these tests need ../shared/data")
    from tfsemiseg.config import load_config
    from tfsemiseg.layout import Cell, RunLayout
    from tfsemiseg.training.methods import prepare_and_run
    from tfsemiseg.training.strategy import make_strategy

    tmp = tmp_path_factory.mktemp("serving")
    data = tmp / "data"
    desc = json.loads((REAL_DATA / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
        for cid in TRAIN_CASES:
            shutil.copyfile(REAL_DATA / sub / f"{cid}.nii.gz", data / sub / f"{cid}.nii.gz")
    desc["training"] = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in TRAIN_CASES]
    desc["test"] = []
    (data / "dataset.json").write_text(json.dumps(desc))
    cfg = load_config(REPO / "configs" / "tiny.yaml").replace(**{
        "data.cache_dir": str(tmp / "cache"),
        "train.finetune_stage.epochs": 25,
        "train.finetune_stage.batch_size": 8,
        "train.finetune_stage.validate_every_epochs": 5,
    })
    run, cell = RunLayout(tmp / "run"), Cell(0, 1.0, "random")
    result = prepare_and_run(cfg, data, run, cell, make_strategy(0), echo=lambda s: None)
    run_dir = run.cell_dir(cell)
    assert run_dir == tmp / "run" / "fold0" / "frac1" / "random"
    assert (run_dir / "result.json").is_file()
    from tfsemiseg.serving.export import export_run

    model_dir = export_run(run_dir, tmp / "models" / "hippo")
    return {"run_dir": run_dir, "model_dir": model_dir, "cfg": cfg, "result": result, "tmp": tmp,
            "test_cases": result["metrics"]["cases"]}


def test_saved_model_cli_lists_the_signature(trained_run):
    cli = Path(sys.executable).with_name("saved_model_cli")
    out = subprocess.run([str(cli), "show", "--all", "--dir", str(trained_run["model_dir"])],
                         capture_output=True, text=True, timeout=120).stdout
    block = out.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert "inputs['slices']" in block and "DT_FLOAT" in block and "shape: (-1, -1, -1)" in block
    assert "outputs['labels']" in block and "DT_INT32" in block
    assert "outputs['probabilities']" in block and "shape: (-1, -1, -1, 3)" in block
    meta = json.loads((trained_run["model_dir"] / "metadata.json").read_text())
    assert meta["class_names"] == ["background", "Anterior", "Posterior"]
    assert meta["slice_axis"] == 2 and meta["image_size"] == 32 and meta["labeled_fraction"] == 1.0
    assert "pooled_dice" in meta["test_metrics"] and meta["training_config"]["name"] == "tiny"
    result = json.loads((trained_run["run_dir"] / "result.json").read_text())
    assert meta["labeled_cases"] == sorted(result["labeled_cases"]) and len(meta["labeled_cases"]) > 0
    card = (trained_run["model_dir"] / "MODEL_CARD.md").read_text()
    assert "Labeled cases (their labels are the only ones used): " + ", ".join(meta["labeled_cases"]) in card


def library_prediction(segmenter, slices: np.ndarray, size: int, mirror: bool = False):
    """What the SavedModel must serve for raw slices [N, H, W], from independent parts: numpy
    min-max over the volume, bilinear resize to the model size, the library's softmax
    (`predict_probabilities`), bilinear resize back. -> probabilities [N, H, W, K], labels."""
    import tensorflow as tf

    from tfsemiseg.inference import predict_probabilities

    x = (slices - slices.min()) / (slices.max() - slices.min())
    x = tf.image.resize(x[..., None], (size, size), method="bilinear").numpy()[..., 0]
    probs = tf.image.resize(predict_probabilities(segmenter, x, mirror=mirror), slices.shape[1:3],
                            method="bilinear").numpy()
    return probs, probs.argmax(-1).astype(np.int32)


def test_fresh_tensorflow_process_matches_library_prediction(trained_run, tmp_path):
    from tfsemiseg.models.transfer import load_segmenter

    volume = np.asarray(nib.load(str(REAL_DATA / "imagesTr" / "hippocampus_001.nii.gz")).dataobj, np.float32)
    slices = np.moveaxis(volume, 2, 0)
    np.save(tmp_path / "slices.npy", slices)
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "fn = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = fn(slices=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['probabilities'].numpy()); np.save(sys.argv[4], out['labels'].numpy())\n"
        "print(sorted(m for m in sys.modules if m.startswith('tfsemiseg')))\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code, str(trained_run["model_dir"]), str(tmp_path / "slices.npy"),
                           str(tmp_path / "p.npy"), str(tmp_path / "l.npy")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("[]")  # the serving process never imported the project
    served_p, served_l = np.load(tmp_path / "p.npy"), np.load(tmp_path / "l.npy")

    cfg = trained_run["cfg"]
    unet = load_segmenter(cfg, trained_run["run_dir"] / "finetune" / "weights.npz", 3)
    probs, labels = library_prediction(unet.segmenter, slices, cfg.data.image_size)
    assert served_p.shape == probs.shape == slices.shape + (3,)
    np.testing.assert_allclose(served_p, probs, atol=1e-5)
    assert (served_l == labels).mean() > 0.9999


def test_predict_round_trips_a_real_volume_and_overlaps_its_label(trained_run, tmp_path):
    from tfsemiseg.cli import cli

    case = trained_run["test_cases"][0]["case"]  # a test-split volume: never trained on
    src = REAL_DATA / "imagesTr" / f"{case}.nii.gz"
    out = tmp_path / "pred"
    res = CliRunner().invoke(cli, ["predict", "--model", str(trained_run["model_dir"]), str(src), "--out", str(out),
                                   "--probabilities"])
    assert res.exit_code == 0, res.output
    assert f"{case}.nii.gz: shape" in res.output and "Anterior=" in res.output
    pred_img, src_img = nib.load(str(out / f"{case}.nii.gz")), nib.load(str(src))
    assert pred_img.shape == src_img.shape
    np.testing.assert_array_equal(pred_img.affine, src_img.affine)
    assert pred_img.header.get_data_dtype() == np.uint8
    assert int(pred_img.header["qform_code"]) == int(src_img.header["qform_code"])
    assert int(pred_img.header["sform_code"]) == int(src_img.header["sform_code"])
    assert pred_img.header.get_zooms() == src_img.header.get_zooms()
    pred = np.asarray(pred_img.dataobj)
    label = np.asarray(nib.load(str(REAL_DATA / "labelsTr" / f"{case}.nii.gz")).dataobj).astype(int)
    fg_dice = 2 * np.sum((pred > 0) & (label > 0)) / (np.sum(pred > 0) + np.sum(label > 0))
    assert fg_dice > 0.3, fg_dice
    probs = nib.load(str(out / f"{case}_probabilities.nii.gz"))
    assert probs.shape == src_img.shape + (3,)
    np.testing.assert_allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-4)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    again = CliRunner().invoke(cli, ["predict", "--model", str(trained_run["model_dir"]), str(src), "--out", str(out)])
    assert again.exit_code != 0 and "already exists (use --force" in again.output
    forced = CliRunner().invoke(cli, ["predict", "--model", str(trained_run["model_dir"]), str(src), "--out", str(out),
                                      "--force"])
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize("kind", ["truncated", "2d", "4d", "4d-one-channel", "zero-zoom", "negative-zoom", "nan-zoom"])
def test_predict_rejects_bad_inputs_with_one_clear_error(trained_run, tmp_path, kind):
    from tfsemiseg.cli import cli

    bad = tmp_path / f"bad_{kind}.nii.gz"
    good = tmp_path / "good.nii.gz"  # listed first: nothing is written for it either
    write_nifti(good, np.random.rand(12, 12, 6).astype(np.float32))
    if kind.endswith("zoom"):
        img = nib.Nifti1Image(np.random.rand(12, 12, 6).astype(np.float32), np.eye(4))
        img.header["pixdim"][1:4] = {"zero": (1.0, 0.0, 1.0), "negative": (-1.0, 1.0, 1.0),
                                     "nan": (1.0, 1.0, np.nan)}[kind.split("-")[0]]
        nib.save(img, str(bad))
        expected = "voxel size in the header is"
    elif kind == "4d-one-channel":
        write_nifti(bad, np.random.rand(8, 8, 8, 1).astype(np.float32))
        expected = "expected a 3D volume, got 4D"
    elif kind == "truncated":
        data = (REAL_DATA / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        expected = "unreadable or truncated"
    elif kind == "2d":
        write_nifti(bad, np.random.rand(20, 20).astype(np.float32))
        expected = "expected a 3D volume, got 2D"
    else:
        write_nifti(bad, np.random.rand(8, 8, 8, 2).astype(np.float32))
        expected = "expected a 3D volume, got 4D"
    res = CliRunner().invoke(cli, ["predict", "--model", str(trained_run["model_dir"]), str(good), str(bad), "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code != 0
    assert str(bad) in res.output and expected in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())  # nothing written
    if kind.endswith("zoom"):  # a known-broken header can be overridden
        res = CliRunner().invoke(cli, ["predict", "--model", str(trained_run["model_dir"]), str(bad), "--out",
                                       str(tmp_path / "o"), "--spacing", "1", "1", "1"])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "o" / bad.name).is_file()


def test_export_refuses_to_overwrite_and_leaves_no_temp(trained_run, tmp_path):
    from tfsemiseg.cli import cli

    dest = tmp_path / "m"
    dest.mkdir()
    res = CliRunner().invoke(cli, ["export", str(trained_run["run_dir"]), "--to", str(dest)])
    assert res.exit_code != 0 and "already exists" in res.output
    res = CliRunner().invoke(cli, ["export", str(tmp_path), "--to", str(tmp_path / "x")])
    assert res.exit_code != 0 and "not a finished run" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_export_with_mirroring_serves_the_mirrored_prediction(trained_run, tmp_path):
    import tensorflow as tf

    from tfsemiseg.config import from_dict
    from tfsemiseg.models.transfer import load_segmenter
    from tfsemiseg.serving.export import export_run

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run["run_dir"], run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    cfg = from_dict(result["config"]).replace(**{"evaluation.mirror": True})
    result["config"] = cfg.to_dict()
    (run_dir / "result.json").write_text(json.dumps(result))
    model_dir = export_run(run_dir, tmp_path / "mirrored")
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["test_time_mirroring"] is True
    assert "Test-time mirroring" in (model_dir / "MODEL_CARD.md").read_text()
    assert "Test-time mirroring" not in (trained_run["model_dir"] / "MODEL_CARD.md").read_text()

    volume = np.asarray(nib.load(str(REAL_DATA / "imagesTr" / "hippocampus_001.nii.gz")).dataobj, np.float32)
    slices = np.moveaxis(volume, 2, 0)
    served = tf.saved_model.load(str(model_dir)).signatures["serving_default"](slices=tf.constant(slices))
    unet = load_segmenter(cfg, run_dir / "finetune" / "weights.npz", 3)
    mirrored, _ = library_prediction(unet.segmenter, slices, cfg.data.image_size, mirror=True)
    plain, _ = library_prediction(unet.segmenter, slices, cfg.data.image_size, mirror=False)
    np.testing.assert_allclose(served["probabilities"].numpy(), mirrored, atol=1e-5)
    assert np.abs(mirrored - plain).max() > 1e-3


def _perturbed_copy(run_dir: Path, dest: Path, scale: float, seed: int) -> Path:
    """A copy of a finished run whose fine-tuned weights differ (a second ensemble member)."""
    shutil.copytree(run_dir, dest)
    path = dest / "finetune" / "weights.npz"
    rng = np.random.default_rng(seed)
    with np.load(path) as z:
        weights = {k: (v + scale * rng.standard_normal(v.shape).astype(v.dtype) if "kernel" in k else v)
                   for k, v in z.items()}
    np.savez(path, **weights)
    return dest


def test_ensemble_export_serves_the_mean_softmax_and_is_evaluated(trained_run, tmp_path):
    from tfsemiseg.models.transfer import load_segmenter

    runs = [trained_run["run_dir"], _perturbed_copy(trained_run["run_dir"], trained_run["tmp"] / "run" / "fold0"
                                                    / "frac1" / "random-b", 0.05, seed=7)]
    dest = tmp_path / "ensemble"
    res = CliRunner().invoke(__import__("tfsemiseg.cli", fromlist=["cli"]).cli, [
        "export", *map(str, runs), "--to", str(dest), "--data", str(trained_run["tmp"] / "data")])
    assert res.exit_code == 0, res.output
    meta = json.loads((dest / "metadata.json").read_text())
    assert meta["method"] == "ensemble" and [m["run"] for m in meta["members"]] == [str(r) for r in runs]
    assert meta["fold"] == 0 and meta["val_metrics"]["num_volumes"] == 2 and meta["test_metrics"]["num_volumes"] == 2
    card = (dest / "MODEL_CARD.md").read_text()
    assert "an ensemble of 2 runs" in card and "### Validation part" in card and "### Test part" in card

    volume = np.asarray(nib.load(str(REAL_DATA / "imagesTr" / "hippocampus_001.nii.gz")).dataobj, np.float32)
    slices = np.moveaxis(volume, 2, 0)
    import tensorflow as tf

    served = tf.saved_model.load(str(dest)).signatures["serving_default"](slices=tf.constant(slices))
    cfg = trained_run["cfg"]
    members = [library_prediction(load_segmenter(cfg, r / "finetune" / "weights.npz", 3).segmenter, slices,
                                  cfg.data.image_size)[0] for r in runs]
    assert np.abs(members[0] - members[1]).max() > 1e-2  # the two members really differ
    np.testing.assert_allclose(served["probabilities"].numpy(), (members[0] + members[1]) / 2, atol=1e-5)
    # the test part's metrics are the ensemble's own, not the first member's (the copy's result.json is its too)
    assert meta["test_metrics"]["pooled_dice"] != meta["members"][0]["test_metrics"]["pooled_dice"]
    assert meta["test_metrics"]["num_volumes"] == meta["members"][0]["test_metrics"]["num_volumes"]


def test_ensemble_export_refuses_runs_it_cannot_serve_as_one(trained_run, tmp_path):
    from tfsemiseg.errors import TfSemisegError
    from tfsemiseg.serving.export import export_run

    other = tmp_path / "run" / "fold1" / "frac1" / "random"
    shutil.copytree(trained_run["run_dir"], other)
    result = json.loads((other / "result.json").read_text())
    result["fold"] = 1
    result["config"]["data"]["image_size"] = 64
    (other / "result.json").write_text(json.dumps(result))
    with pytest.raises(TfSemisegError, match=r"image_size 64 differs from .*; the runs of one exported model"):
        export_run([trained_run["run_dir"], other], tmp_path / "m")
    result["config"]["data"]["image_size"] = 32
    (other / "result.json").write_text(json.dumps(result))
    with pytest.raises(TfSemisegError, match=r"folds \[0, 1\]: no test part is held out from all of them"):
        export_run([trained_run["run_dir"], other], tmp_path / "m", data_dir=trained_run["tmp"] / "data")
    # the same fold number of another split: its result's digest and its stage's labels-only one both differ
    result["fold"], result["split_digest"] = 0, "another split"
    (other / "result.json").write_text(json.dumps(result))
    stage_file = other / "finetune" / "stage.json"
    stage = json.loads(stage_file.read_text())
    own = json.loads((trained_run["run_dir"] / "result.json").read_text())["split_digest"]
    assert stage["labels_split_digest"] == own  # no extra unlabeled images in this run
    stage_file.write_text(json.dumps({**stage, "labels_split_digest": "0" * 16}))
    with pytest.raises(TfSemisegError, match=r"trained on another split than fold 0 of .*0{16} != " + own
                       + " without extra unlabeled images.*must share one split"):
        export_run([trained_run["run_dir"], other], tmp_path / "m", data_dir=trained_run["tmp"] / "data")
    # a split that differs only by extra unlabeled images (a self-training student's) gives the same
    # labels to the same volumes: its labels-only digest lets it join
    stage_file.write_text(json.dumps(stage))
    export_run([trained_run["run_dir"], other], tmp_path / "joined", data_dir=trained_run["tmp"] / "data")
    assert (tmp_path / "joined" / "saved_model.pb").is_file()
    flat = tmp_path / "flat"  # a finished run copied out of its run folder: no splits to evaluate on
    shutil.copytree(trained_run["run_dir"], flat)
    with pytest.raises(TfSemisegError, match=r"flat: not a method folder of a run"):
        export_run([flat], tmp_path / "m", data_dir=trained_run["tmp"] / "data")
    assert not (tmp_path / "m").exists()


def test_unpack_rebuilds_the_run_from_its_export(trained_run, tmp_path):
    from tfsemiseg.cli import cli

    run_dir = trained_run["run_dir"]
    dest = tmp_path / "again" / "fold0" / "frac1" / "random"
    res = CliRunner().invoke(cli, ["unpack", str(trained_run["model_dir"]), "--result", str(run_dir / "result.json"),
                                   "--to", str(dest)])
    assert res.exit_code == 0, res.output
    assert (dest / "result.json").read_bytes() == (run_dir / "result.json").read_bytes()
    with np.load(run_dir / "finetune" / "weights.npz") as own, np.load(dest / "finetune" / "weights.npz") as back:
        segmenter_keys = {k for k in own.files if not k.startswith(("h1", "h2"))}
        assert segmenter_keys <= set(back.files)
        for key in segmenter_keys:
            np.testing.assert_array_equal(back[key], own[key], err_msg=key)
    # the rebuilt folder is a run again: exported and evaluated, it scores what the run scored
    res = CliRunner().invoke(cli, ["export", str(dest), "--to", str(tmp_path / "m"), "--data",
                                   str(trained_run["tmp"] / "data"), "--parts", "test"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["test_metrics"]["pooled_dice"]["mean"] == pytest.approx(
        trained_run["result"]["metrics"]["pooled_dice"]["mean"], abs=1e-6)


def test_unpack_refuses_what_it_cannot_rebuild(trained_run, tmp_path):
    from tfsemiseg.errors import TfSemisegError
    from tfsemiseg.serving.unpack import unpack_export

    model_dir, result_path = trained_run["model_dir"], trained_run["run_dir"] / "result.json"
    dest = tmp_path / "run" / "fold0" / "frac1" / "random"
    meta, own = json.loads((model_dir / "metadata.json").read_text()), json.loads(result_path.read_text())

    def variant(name, metadata=None, result=None):
        """A copy of the exported model with other metadata, or another result file."""
        if result is not None:
            (tmp_path / f"{name}.json").write_text(json.dumps(result))
            return tmp_path / f"{name}.json"
        shutil.copytree(model_dir, tmp_path / name)
        (tmp_path / name / "metadata.json").write_text(metadata if isinstance(metadata, str) else json.dumps(metadata))
        return tmp_path / name

    wider = json.loads(json.dumps(own["config"]))
    wider["model"]["base_width"] *= 2
    with pytest.raises(TfSemisegError, match=r"other.json: its config is not the one .* was trained with"):
        unpack_export(model_dir, variant("other", result={**own, "config": wider}), dest)
    with pytest.raises(TfSemisegError, match=r"ensemble: an ensemble of 2 runs; name the one to unpack \(--member 0 to 1\)"):
        unpack_export(variant("ensemble", {**meta, "members": [{}, {}]}), result_path, dest)
    with pytest.raises(TfSemisegError, match=r"exported from one run, not an ensemble; --member applies to ensembles only"):
        unpack_export(model_dir, result_path, dest, member=0)
    stage = json.loads((trained_run["run_dir"] / "finetune" / "stage.json").read_text())
    with pytest.raises(TfSemisegError, match=r"other_fold.json: its fold 1 differs from .*result.json's; give the "
                                             r"fine-tuning stage file of the same run"):
        unpack_export(model_dir, result_path, dest, stage_path=variant("other_fold", result={**stage, "fold": 1}))
    with pytest.raises(TfSemisegError, match=r"global.json: not the stage file of a fine-tuning stage"):
        unpack_export(model_dir, result_path, dest, stage_path=variant("global", result={**stage, "stage": "global"}))
    with pytest.raises(TfSemisegError, match=r"broken/metadata.json: not valid JSON"):
        unpack_export(variant("broken", "{not json"), result_path, dest)
    with pytest.raises(TfSemisegError, match=r"list.json: not the result file of a run"):
        unpack_export(model_dir, variant("list", result=[own]), dest)
    with pytest.raises(TfSemisegError, match=r"flat: not a method folder of a run"):
        unpack_export(model_dir, result_path, tmp_path / "flat")
    with pytest.raises(TfSemisegError, match=r"is the result of the cell fold0/frac1/random .*give RUN/fold0/frac1/random"):
        unpack_export(model_dir, result_path, tmp_path / "run" / "fold1" / "frac0.05" / "random")
    with pytest.raises(TfSemisegError, match=r"not an exported model"):
        unpack_export(tmp_path, result_path, dest)
    # a config that matches the metadata but not the variables: refused after loading, nothing left behind
    with pytest.raises(TfSemisegError, match=r"wide: its variables do not fit the U-Net of .*wide.json \(.*differ in shape"):
        unpack_export(variant("wide", {**meta, "training_config": wider}),
                      variant("wide", result={**own, "config": wider}), dest)
    assert not dest.exists() and not list(dest.parent.glob(".*"))
    # a run evaluated on validation only keeps its result under its own name; an existing cell is kept
    val_result = variant("result_val", result={**own, "part": "val"})
    unpack_export(model_dir, val_result, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["finetune", "result_val.json"]
    with pytest.raises(TfSemisegError, match=r"random: already exists \(use --force"):
        unpack_export(model_dir, result_path, dest)
    unpack_export(model_dir, result_path, dest, overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == ["finetune", "result.json"]


def test_unpack_rebuilds_each_member_of_an_ensemble_as_a_teacher(trained_run, tmp_path, monkeypatch):
    from tfsemiseg.cli import cli
    from tfsemiseg.errors import TfSemisegError
    from tfsemiseg.serving.export import export_run
    from tfsemiseg.serving.unpack import unpack_export
    from tfsemiseg.training.engine import stage_finished
    from tfsemiseg.training.methods import _trained_config

    runs = [trained_run["run_dir"], _perturbed_copy(trained_run["run_dir"], tmp_path / "run" / "fold0" / "frac1"
                                                    / "random", 0.05, seed=11)]
    model_dir = export_run(runs, tmp_path / "ensemble")
    for i, run_dir in enumerate(runs):
        dest = tmp_path / f"back{i}" / "fold0" / "frac1" / "random"
        res = CliRunner().invoke(cli, ["unpack", str(model_dir), "--member", str(i), "--result",
                                       str(run_dir / "result.json"), "--stage", str(run_dir / "finetune" / "stage.json"),
                                       "--to", str(dest)])
        assert res.exit_code == 0, res.output
        with np.load(run_dir / "finetune" / "weights.npz") as own, np.load(dest / "finetune" / "weights.npz") as back:
            keys = {k for k in own.files if not k.startswith(("h1", "h2"))}
            assert keys <= set(back.files)
            for key in keys:
                np.testing.assert_array_equal(back[key], own[key], err_msg=f"member {i}: {key}")
        # with its stage file, the folder is a finished cell that records its config: a teacher
        assert stage_finished(dest / "finetune") and _trained_config(dest) == trained_run["cfg"]
    with pytest.raises(TfSemisegError, match=r"an ensemble of 2 runs has no member 2 \(--member 0 to 1\)"):
        unpack_export(model_dir, runs[0] / "result.json", tmp_path / "x" / "fold0" / "frac1" / "random", member=2)
    # members trained with another seed than the one the result file records are refused
    other = json.loads((runs[1] / "result.json").read_text())
    (tmp_path / "seed5.json").write_text(json.dumps({**other, "seed": 5}))
    with pytest.raises(TfSemisegError, match=r"seed5.json: seed 5 differs from .*ensemble's member 1 0"):
        unpack_export(model_dir, tmp_path / "seed5.json", tmp_path / "x" / "fold0" / "frac1" / "random", member=1)
    # variables that, split into members, do not rebuild the served ensemble are refused
    import tfsemiseg.serving.unpack as unpack_module

    split = unpack_module._variable_groups

    def off(model_dir, loaded):
        groups = split(model_dir, loaded)
        groups[1] = {k: v * 1.5 if k.endswith("kernel") else v for k, v in groups[1].items()}
        return groups

    monkeypatch.setattr(unpack_module, "_variable_groups", off)
    with pytest.raises(TfSemisegError, match=r"ensemble: its variables, split into 2 members, do not reproduce its output"):
        unpack_export(model_dir, runs[0] / "result.json", tmp_path / "x" / "fold0" / "frac1" / "random", member=0)
    assert not (tmp_path / "x").exists()


def test_views_along_other_axes_are_served_and_evaluated_averaged_in_3d(trained_run, tmp_path):
    """A run sliced along axis 0 joins one sliced along axis 2: the model serves the mean of both
    views in 3D, its validation figures are those of what it serves, and unpack rebuilds either."""
    from tfsemiseg.cli import cli
    from tfsemiseg.config import from_dict
    from tfsemiseg.data.prepared import prepare_dataset
    from tfsemiseg.metrics.dice import dice_per_class
    from tfsemiseg.models.transfer import load_segmenter
    from tfsemiseg.serving.export import export_run

    first = trained_run["run_dir"]
    view = _perturbed_copy(first, trained_run["tmp"] / "run" / "fold0" / "frac1" / "random-axis0", 0.05, seed=3)
    result = json.loads((view / "result.json").read_text())
    result["config"]["data"]["slice_axis"] = 0
    (view / "result.json").write_text(json.dumps(result))
    data = trained_run["tmp"] / "data"
    dest = export_run([first, view], tmp_path / "views", data_dir=data, parts=("val",))
    meta = json.loads((dest / "metadata.json").read_text())
    assert meta["slice_axis"] == 2 and meta["member_slice_axes"] == [2, 0]
    assert [m["slice_axis"] for m in meta["members"]] == [2, 0] and meta["val_metrics"]["view_axes"] == [2, 0]
    assert "slice the volume along axes 2, 0" in (dest / "MODEL_CARD.md").read_text()

    cfg = trained_run["cfg"]
    fn = __import__("tensorflow").saved_model.load(str(dest)).signatures["serving_default"]
    segmenters = [load_segmenter(cfg, r / "finetune" / "weights.npz", 3).segmenter for r in (first, view)]
    val = prepare_dataset(cfg, data, first.parents[2]).split(0).val
    assert len(val) == 2
    dice = []
    for case in val:
        volume = np.asarray(nib.load(str(data / "imagesTr" / f"{case}.nii.gz")).dataobj, np.float32)
        label = np.asarray(nib.load(str(data / "labelsTr" / f"{case}.nii.gz")).dataobj).astype(np.uint8)
        # each view on its own slices (numpy moveaxis), its probabilities put back into the volume
        along2 = np.moveaxis(library_prediction(segmenters[0], np.moveaxis(volume, 2, 0), cfg.data.image_size)[0], 0, 2)
        along0 = library_prediction(segmenters[1], volume, cfg.data.image_size)[0]
        assert np.abs(along2 - along0).max() > 0.1  # the views really differ
        expected = np.moveaxis((along2 + along0) / 2, 2, 0)
        served = fn(slices=__import__("tensorflow").constant(np.moveaxis(volume, 2, 0)))
        np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
        labels = np.moveaxis(served["labels"].numpy(), 0, 2).astype(np.uint8)
        dice.append(dice_per_class(labels, label, 3))
    np.testing.assert_allclose(np.mean(dice, 0), meta["val_metrics"]["volume_dice"]["mean"], atol=1e-3)

    back = tmp_path / "back" / "fold0" / "frac1" / "random"
    res = CliRunner().invoke(cli, ["unpack", str(dest), "--member", "1", "--result", str(view / "result.json"),
                                   "--to", str(back)])
    assert res.exit_code == 0, res.output
    assert from_dict(json.loads((back / "result.json").read_text())["config"]).data.slice_axis == 0
    with np.load(view / "finetune" / "weights.npz") as own, np.load(back / "finetune" / "weights.npz") as got:
        for key in (k for k in own.files if not k.startswith(("h1", "h2"))):
            np.testing.assert_array_equal(got[key], own[key], err_msg=key)

    # members along axes 2, 0, 2: the SavedModel holds them grouped by view (0, 2, then 1), and
    # unpack still gives each member its own weights; a result of the wrong view is refused
    from tfsemiseg.errors import TfSemisegError
    from tfsemiseg.serving.unpack import unpack_export

    third = _perturbed_copy(first, trained_run["tmp"] / "run" / "fold0" / "frac1" / "random-third", 0.05, seed=5)
    mixed = export_run([first, view, third], tmp_path / "mixed")
    assert json.loads((mixed / "metadata.json").read_text())["member_slice_axes"] == [2, 0, 2]
    for member, run_dir in ((2, third), (1, view)):
        dest = tmp_path / f"m{member}" / "fold0" / "frac1" / "random"
        unpack_export(mixed, run_dir / "result.json", dest, member=member)
        with np.load(run_dir / "finetune" / "weights.npz") as own, np.load(dest / "finetune" / "weights.npz") as got:
            assert all(np.array_equal(got[k], own[k]) for k in own.files if not k.startswith(("h1", "h2"))), member
    with pytest.raises(TfSemisegError, match=r"result.json: slice_axis 2 differs from .*mixed's member 1 0"):
        unpack_export(mixed, third / "result.json", tmp_path / "x" / "fold0" / "frac1" / "random", member=1)
