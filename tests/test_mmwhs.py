"""The shipped MM-WHS config end to end on the phantom in MM-WHS layout: make-phantom, run
(global + supervised local + fine-tuning), export and predict, which writes MM-WHS codes.

The real MM-WHS data cannot be fetched on the project's machines; this keeps configs/mmwhs.yaml
working as shipped, with only its sizes and epochs cut for a test.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import yaml
from click.testing import CliRunner

from conftest import REPO, read_nifti
from tfsemiseg.cli import cli

CONFIG = REPO / "configs" / "mmwhs.yaml"
SMALL = {  # sizes and epochs only: the layout, label map, classes and losses stay as shipped
    "data.image_size": 32, "model.base_width": 4,
    "train.global_stage.epochs": 1, "train.global_stage.batch_size": 16,
    "train.local_stage.epochs": 1,
    "train.finetune_stage.epochs": 2, "train.finetune_stage.validate_every_epochs": 1,
    "train.finetune_stage.validate_from_epoch": 1,
}


def run(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0 and result.exception is None, result.output + repr(result.exception)
    return result.output


def test_mmwhs_config_trains_exports_and_predicts_mmwhs_codes(tmp_path):
    shipped = yaml.safe_load(CONFIG.read_text())["data"]
    label_map = {int(k): v for k, v in shipped["label_map"].items()}
    codes = [0] + [raw for _, raw in sorted((c, r) for r, c in label_map.items())]
    data = tmp_path / "mmwhs"
    run("make-phantom", data, "--layout", "mmwhs", "--train", 8, "--test", 1, "--seed", 2)
    names = sorted(p.name for p in data.iterdir())
    assert names == sorted([f"phantom_{i:03d}_image.nii.gz" for i in range(9)]
                           + [f"phantom_{i:03d}_label.nii.gz" for i in range(8)])
    raw = read_nifti(data / "phantom_000_label.nii.gz")
    assert set(np.unique(raw)) == {0, 500, 205}  # MM-WHS codes: left ventricle, myocardium

    sets = [a for k, v in {**SMALL, "data.cache_dir": tmp_path / "cache"}.items() for a in ("--set", f"{k}={v}")]
    out = run("run", "--config", CONFIG, "--data", data, "--method", "global+local-block", "--fraction", 1.0,
              "--fold", 0, "--out", tmp_path / "run", *sets)
    cell = tmp_path / "run" / "fold0" / "frac1" / "global+local-block"
    result = json.loads((cell / "result.json").read_text())
    assert result["class_names"] == shipped["class_names"], out
    per_class = result["metrics"]["pooled_dice"]["per_class"]
    assert len(per_class) == 7
    lv, myo = label_map[500] - 1, label_map[205] - 1
    assert all(isinstance(per_class[i], float) and 0 <= per_class[i] <= 1 for i in (lv, myo))
    assert set(result["stages"]) == {"global", "local", "finetune"}
    assert result["config"]["data"]["layout"] == "mmwhs"

    model = tmp_path / "model"
    run("export", cell, "--to", model, "--data", data, "--parts", "test")
    meta = json.loads((model / "metadata.json").read_text())
    assert meta["label_codes"] == codes and meta["class_names"] == shipped["class_names"]
    assert "left_ventricle 500" in (model / "MODEL_CARD.md").read_text()

    image = data / "phantom_008_image.nii.gz"  # the unlabeled volume
    run("predict", "--model", model, image, "--out", tmp_path / "pred")
    written = nib.load(str(tmp_path / "pred" / image.name))  # named after the input
    assert written.get_data_dtype() == np.int16  # codes up to 850 do not fit uint8
    values = np.asarray(written.dataobj)
    assert values.shape == read_nifti(image).shape and set(np.unique(values)) <= set(codes)

    # the codes are the served class indices, relabeled
    from tfsemiseg.serving.predict import ExportedModel

    indices, _ = ExportedModel(model).segment(read_nifti(image).astype(np.float32))
    np.testing.assert_array_equal(values, np.asarray(codes)[indices])
    assert not math.isnan(meta["test_metrics"]["pooled_dice"]["mean"])


def test_label_codes_invert_the_label_map():
    from tfsemiseg.serving.export import label_codes

    assert label_codes(None, 3) is None and label_codes({}, 3) is None
    # several raw values of one class: the smallest; a class no raw value maps to keeps its index;
    # a raw value mapped to background does not replace 0
    assert label_codes({500: 1, 421: 1, 600: 2, 7: 0}, 4) == [0, 421, 600, 3]
