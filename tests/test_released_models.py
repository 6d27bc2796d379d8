"""The released models in saved_models/ segment real Hippocampus volumes out of the box."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import REAL_DATA, REPO

MODELS = sorted(p.parent for p in (REPO / "saved_models").glob("*/saved_model.pb"))


@pytest.mark.parametrize("model_dir", MODELS, ids=[p.name for p in MODELS])
def test_released_model_segments_held_out_volumes(model_dir, tmp_path):
    if not (REAL_DATA / "dataset.json").is_file():
        pytest.skip(f"real Hippocampus data not found at {REAL_DATA}; these tests need ../shared/data")
    from tfsemiseg.config import from_dict
    from tfsemiseg.data.datasets import case_id_of
    from tfsemiseg.data.splits import make_split
    from tfsemiseg.serving.predict import predict_files

    meta = json.loads((model_dir / "metadata.json").read_text())
    assert (model_dir / "MODEL_CARD.md").is_file()
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"{model_dir} is {size} bytes (the limit for a released model is 20 MB)"
    cfg = from_dict(meta["training_config"])
    desc = json.loads((REAL_DATA / "dataset.json").read_text())
    ids = [case_id_of(e["image"]) for e in desc["training"]]
    test_ids = make_split(ids, [], cfg.split, meta["fold"]).test[:3]  # never trained on
    files = [REAL_DATA / "imagesTr" / f"{c}.nii.gz" for c in test_ids]
    preds = predict_files(model_dir, files, tmp_path)
    for case, pred in zip(test_ids, preds):
        out = np.asarray(nib.load(str(pred.output)).dataobj)
        label = np.asarray(nib.load(str(REAL_DATA / "labelsTr" / f"{case}.nii.gz")).dataobj).astype(int)
        for c in (1, 2):
            dice = 2 * np.sum((out == c) & (label == c)) / (np.sum(out == c) + np.sum(label == c))
            assert dice > 0.6, (case, c, dice)
