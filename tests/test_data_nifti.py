"""Ingest: MSD and MM-WHS layouts, 4D images, and one clear DataError per bad input."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import PHANTOM_SHAPE, PHANTOM_TRAIN, np_bilinear, read_nifti, write_msd, write_nifti
from tfsemiseg.config import load_config
from tfsemiseg.data.datasets import discover
from tfsemiseg.data.nifti import read_image, read_label
from tfsemiseg.data.prepared import prepare_dataset
from tfsemiseg.data.preprocess import preprocess_case
from tfsemiseg.errors import DataError

REAL_IDS = ["hippocampus_003", "hippocampus_004", "hippocampus_243"]


def _volume(shape=(6, 7, 5), seed=0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 100).astype(dtype)


# --------------------------------------------------------------------------- MSD layout


def test_msd_ingest_real_subset(real_subset, real_data_dir, make_cfg):
    root = real_subset(REAL_IDS, ["hippocampus_002"])
    desc = json.loads((real_data_dir / "dataset.json").read_text())
    index = discover(root, make_cfg().data)

    expected_names = [desc["labels"][str(i)] for i in range(len(desc["labels"]))]
    assert index.class_names == expected_names == ["background", "Anterior", "Posterior"]
    assert index.num_classes == 3
    assert [c.case_id for c in index.labeled] == sorted(REAL_IDS)
    for case in index.labeled:
        assert case.image == (root / "imagesTr" / f"{case.case_id}.nii.gz").resolve()
        assert case.label == (root / "labelsTr" / f"{case.case_id}.nii.gz").resolve()
    assert [(c.case_id, c.label) for c in index.unlabeled] == [("hippocampus_002", None)]
    assert index.unlabeled[0].image == (root / "imagesTs" / "hippocampus_002.nii.gz").resolve()


def test_msd_ingest_real_full_index(real_data_dir, make_cfg):
    """The whole real folder is indexed: 220 labeled pairs, imagesTs listed as unlabeled."""
    desc = json.loads((real_data_dir / "dataset.json").read_text())
    index = discover(real_data_dir, make_cfg().data)
    from_json = sorted(Path(e["image"]).name[: -len(".nii.gz")] for e in desc["training"])
    assert len(index.labeled) == 220 and [c.case_id for c in index.labeled] == from_json
    assert len(index.unlabeled) == 130
    assert sorted(c.case_id for c in index.unlabeled) == sorted(Path(p).name[: -len(".nii.gz")] for p in desc["test"])
    assert all(c.label is None for c in index.unlabeled)
    assert all(c.label is not None and c.label.name == c.image.name for c in index.labeled)


def test_msd_imagests_join_global_stage_only_when_configured(phantom_dir, make_cfg, tmp_path):
    off = prepare_dataset(make_cfg(), phantom_dir, tmp_path / "run_off")
    on = prepare_dataset(make_cfg(**{"data.use_test_images_unlabeled": True}), phantom_dir, tmp_path / "run_on")
    test_ids = sorted(p.name[: -len(".nii.gz")] for p in (phantom_dir / "imagesTs").iterdir())
    assert len(test_ids) == 2
    assert not set(test_ids) & set(off.volumes)
    assert set(test_ids) <= set(on.volumes)
    for cid in test_ids:
        assert on.volumes[cid].label is None
    for fold in on.folds:
        assert fold.extra_unlabeled == test_ids
        assert not set(test_ids) & set(fold.train + fold.val + fold.test)


# --------------------------------------------------------------------------- 4D images


def test_4d_image_reads_configured_channel(tmp_path, make_cfg):
    data = _volume((6, 7, 5, 3))
    data[..., 1] += 1000  # channels clearly different
    path = write_nifti(tmp_path / "mm.nii.gz", data)
    for ch in range(3):
        vol = read_image(path, channel=ch)
        assert vol.array.dtype == np.float32 and vol.array.shape == (6, 7, 5)
        np.testing.assert_array_equal(vol.array, data[..., ch])

    # through the whole preprocessing with data.channel from the config
    label = (data[..., 0] > 50).astype(np.uint8)
    root = write_msd(tmp_path / "ds", [("mm_000", data, label)], labels={"0": "bg", "1": "fg"})
    index = discover(root, make_cfg().data)
    cfg = make_cfg(**{"data.channel": 2, "data.image_size": 8})
    out = preprocess_case(index.labeled[0], cfg.data, 2)
    lo, hi = data[..., 2].min(), data[..., 2].max()
    expected = np.moveaxis((data[..., 2] - lo) / (hi - lo), -1, 0)  # [5, 6, 7] before resize
    assert out.image.shape == (5, 8, 8)
    for k in range(5):
        np.testing.assert_allclose(out.image[k], np_bilinear(expected[k], 8), atol=1e-5)


# --------------------------------------------------------------------------- MM-WHS layout

MMWHS_YAML = """
data:
  layout: mmwhs
  image_size: 16
  label_map: {500: 1, 600: 2, 420: 3, 550: 4, 205: 5, 820: 6, 850: 7}
  class_names: [background, LV, RV, LA, RA, MYO, AA, PA]
"""
RAW_VALUES = [0, 500, 600, 420, 550, 205, 820, 850, 421, 1000, 7]
MMWHS_MAP = {500: 1, 600: 2, 420: 3, 550: 4, 205: 5, 820: 6, 850: 7}


def _mmwhs_folder(root: Path, label_dtype=np.int16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    raw = {}
    for k, case in enumerate(("mr_train_1001", "mr_train_1002")):
        lab = rng.choice(RAW_VALUES, size=(10, 12, 8)).astype(label_dtype)
        write_nifti(root / f"{case}_image.nii.gz", _volume((10, 12, 8), seed=k, dtype=np.int16))
        write_nifti(root / f"{case}_label.nii.gz", lab)
        raw[case] = lab
    write_nifti(root / "mr_train_1003_image.nii.gz", _volume((10, 12, 8), seed=9))  # no label
    return raw


@pytest.mark.parametrize("label_dtype", [np.int16, np.float32])
def test_mmwhs_layout_maps_raw_labels(tmp_path, label_dtype):
    cfg_path = tmp_path / "mmwhs.yaml"
    cfg_path.write_text(MMWHS_YAML + f"  cache_dir: {tmp_path / 'cache'}\n")
    cfg = load_config(cfg_path)
    assert cfg.data.label_map == MMWHS_MAP
    root = tmp_path / "mmwhs"
    raw = _mmwhs_folder(root, label_dtype)

    index = discover(root, cfg.data)
    assert index.class_names == ["background", "LV", "RV", "LA", "RA", "MYO", "AA", "PA"]
    assert [c.case_id for c in index.labeled] == ["mr_train_1001", "mr_train_1002"]
    assert [(c.case_id, c.label) for c in index.unlabeled] == [("mr_train_1003", None)]

    for case in index.labeled:
        vol = read_label(case.label, index.num_classes, cfg.data.label_map)
        expected = np.vectorize(lambda v: MMWHS_MAP.get(int(v), 0))(raw[case.case_id])
        assert np.issubdtype(vol.array.dtype, np.integer)
        np.testing.assert_array_equal(vol.array, expected)
        assert set(np.unique(vol.array)) == set(range(8))  # every class present, 421/1000/7 -> 0
        sv = preprocess_case(case, cfg.data, index.num_classes)
        np.testing.assert_array_equal(sv.native_label, np.moveaxis(expected, -1, 0))


def test_shipped_mmwhs_config_maps_labels(tmp_path):
    shipped = Path(__file__).resolve().parents[1] / "configs" / "mmwhs.yaml"
    if not shipped.is_file():
        pytest.skip(f"{shipped} not written yet")
    cfg = load_config(shipped).replace(**{"data.cache_dir": str(tmp_path / "cache"), "data.image_size": 16})
    assert cfg.data.layout == "mmwhs" and cfg.data.label_map == MMWHS_MAP and len(cfg.data.class_names) == 8
    raw = _mmwhs_folder(tmp_path / "mmwhs")
    index = discover(tmp_path / "mmwhs", cfg.data)
    case = index.labeled[0]
    sv = preprocess_case(case, cfg.data, index.num_classes)
    expected = np.vectorize(lambda v: MMWHS_MAP.get(int(v), 0))(raw[case.case_id])
    np.testing.assert_array_equal(sv.native_label, np.moveaxis(expected, -1, 0))


def test_mmwhs_label_without_image_is_an_error(tmp_path):
    cfg = load_config(None).replace(**{"data.layout": "mmwhs", "data.label_map": MMWHS_MAP,
                                       "data.class_names": [str(i) for i in range(8)]})
    root = tmp_path / "mmwhs"
    _mmwhs_folder(root)
    orphan = write_nifti(root / "mr_train_1009_label.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(DataError, match=re.escape(f"{orphan}: label without a matching mr_train_1009_image.nii.gz")):
        discover(root, cfg.data)


# --------------------------------------------------------------------------- bad inputs
# Each test corrupts one file of a private phantom copy and checks the one DataError raised
# by prepare_dataset names that file and the problem (single line, for the CLI).


def _case(root: Path, i: int, part: str = "imagesTr") -> Path:
    return root / part / f"phantom_{i:03d}.nii.gz"


def _expect_error(root: Path, cfg, tmp_path, path: Path, problem: str) -> str:
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg, root, tmp_path / "run")
    msg = str(info.value)
    assert str(path) in msg, msg
    assert re.search(problem, msg), msg
    assert "\n" not in msg
    return msg


def test_bad_truncated_gzip(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 4)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), "unreadable or truncated NIfTI")


def test_bad_truncated_uncompressed_nii(tmp_path, make_cfg):
    img = _volume((8, 9, 7))
    root = write_msd(tmp_path / "ds", [("a", img, (img > 50).astype(np.uint8))], labels={"0": "bg", "1": "fg"})
    nii = root / "imagesTr" / "a.nii"
    write_nifti(nii, img)
    (root / "imagesTr" / "a.nii.gz").unlink()
    desc = json.loads((root / "dataset.json").read_text())
    desc["training"][0]["image"] = "./imagesTr/a.nii"
    (root / "dataset.json").write_text(json.dumps(desc))
    nii.write_bytes(nii.read_bytes()[:-200])
    _expect_error(root, make_cfg(), tmp_path, nii.resolve(), "unreadable or truncated NIfTI")


def test_bad_garbage_file(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 2, "labelsTr")
    bad.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), "unreadable or truncated NIfTI")


def test_bad_shape_mismatch(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 3, "labelsTr")
    write_nifti(bad, read_nifti(bad)[:, :-2, :])
    msg = _expect_error(root, make_cfg(), tmp_path, bad.resolve(), "label shape .* does not match image")
    assert str(PHANTOM_SHAPE) in msg and "(24, 26, 20)" in msg


def test_bad_label_value_outside_classes(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 5, "labelsTr")
    lab = read_nifti(bad).copy()
    lab[0, 0, 0] = 3  # dataset.json has 0, 1, 2
    write_nifti(bad, lab)
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), re.escape("label values [3] are outside the dataset's classes 0..2"))


def test_bad_label_value_outside_classes_after_mapping(phantom_dir, make_cfg, tmp_path):
    """A label_map sending a raw value to a class dataset.json does not have."""
    cfg = make_cfg(**{"data.label_map": {1: 1, 2: 5}})
    first = _case(phantom_dir, 0, "labelsTr")
    _expect_error(phantom_dir, cfg, tmp_path, first.resolve(), re.escape("label values [5] are outside the dataset's classes 0..2"))


def test_bad_non_integer_float_label(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 1, "labelsTr")
    lab = read_nifti(bad).astype(np.float32)
    lab[1, 1, 1] = 0.5
    write_nifti(bad, lab)
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), "non-integer values")


def test_bad_non_finite_intensities(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 6)
    img = read_nifti(bad).astype(np.float32)
    img[2, 3, 4] = np.nan
    img[5, 5, 5] = np.inf
    write_nifti(bad, img)
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), re.escape("2 non-finite (NaN/inf) voxels"))


def test_bad_constant_volume(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 7)
    write_nifti(bad, np.full(PHANTOM_SHAPE, 17.0, np.float32))
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), "image is constant .*cannot normalise")


def test_bad_2d_image(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 8)
    write_nifti(bad, read_nifti(bad)[:, :, 0])
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), re.escape("expected a 3D image (or 4D multi-modal), got 2D"))


def test_bad_4d_image_missing_channel(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 0)
    img = read_nifti(bad)
    write_nifti(bad, np.stack([img, img * 2], -1))
    cfg = make_cfg(**{"data.channel": 2})
    _expect_error(root, cfg, tmp_path, bad.resolve(), "4D image has 2 channels, configured channel 2 is missing")


def test_bad_empty_dataset(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    desc = json.loads((root / "dataset.json").read_text())
    desc["training"] = []
    (root / "dataset.json").write_text(json.dumps(desc))
    _expect_error(root, make_cfg(), tmp_path, root, "empty dataset")


def test_bad_missing_dataset_json(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    (root / "dataset.json").unlink()
    _expect_error(root, make_cfg(), tmp_path, root / "dataset.json", "missing")


def test_bad_listed_file_does_not_exist(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    gone = _case(root, 9, "labelsTr")
    gone.unlink()
    msg = _expect_error(root, make_cfg(), tmp_path, gone.resolve(), "does not exist")
    assert str(root / "dataset.json") in msg and "./labelsTr/phantom_009.nii.gz" in msg


def test_bad_dataset_folder_missing(tmp_path, make_cfg):
    _expect_error(tmp_path / "nowhere", make_cfg(), tmp_path, tmp_path / "nowhere", "dataset folder not found")


def test_good_phantom_has_no_error(phantom_dir, make_cfg, tmp_path):
    """The control for the tests above: the unmodified phantom prepares without error."""
    data = prepare_dataset(make_cfg(), phantom_dir, tmp_path / "run")
    assert len(data.volumes) == PHANTOM_TRAIN


# --------------------------------------------------------------------------- voxel sizes as written


def _write_with_pixdim(path: Path, zooms) -> None:
    """Rewrite `path` with pixdim[1..3] = zooms in its header, exactly as given."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    out = nib.Nifti1Image(data, np.eye(4))
    out.header["pixdim"][1:4] = zooms
    nib.save(out, str(path))


@pytest.mark.parametrize("zooms, part", [
    ((0.0, 1.0, 1.0), "imagesTr"), ((1.0, -1.0, 1.0), "imagesTr"), ((1.0, 1.0, np.nan), "imagesTr"),
    ((0.0, 1.0, 1.0), "labelsTr"),
])
def test_bad_voxel_size_as_written_in_the_header(copy_phantom, make_cfg, tmp_path, zooms, part):
    root = copy_phantom()
    bad = _case(root, 3, part)
    _write_with_pixdim(bad, zooms)
    # nibabel's loader repairs zero and negative pixdims silently: the check reads the header as written
    if not np.isnan(zooms).any():
        assert all(z > 0 for z in nib.load(str(bad)).header.get_zooms())
    msg = _expect_error(root, make_cfg(), tmp_path, bad.resolve(), r"voxel size in the header is .*data\.spacing")
    assert ("0.0" in msg) if 0.0 in zooms else ("-1.0" in msg or "nan" in msg)
    assert not (tmp_path / "run" / "splits.json").exists()  # nothing written


def test_data_spacing_overrides_broken_headers(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    for part in ("imagesTr", "labelsTr"):
        _write_with_pixdim(_case(root, 3, part), (0.0, 0.0, 0.0))
    cfg = make_cfg(**{"data.spacing": [0.5, 0.75, 2.0]})
    data = prepare_dataset(cfg, root, tmp_path / "run")
    axis = cfg.data.slice_axis % 3
    expected = tuple([0.5, 0.75, 2.0][a] for a in [axis] + [a for a in range(3) if a != axis])
    assert data.volumes["phantom_003"].spacing == expected
    assert data.volumes["phantom_004"].spacing == expected  # for every file, not just the broken one


def test_bad_4d_label_with_one_channel(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 5, "labelsTr")
    write_nifti(bad, read_nifti(bad)[..., None])
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), re.escape("expected a 3D label map, got 4D of shape"))


def test_bad_2d_label(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    bad = _case(root, 6, "labelsTr")
    write_nifti(bad, read_nifti(bad)[:, :, 0])
    _expect_error(root, make_cfg(), tmp_path, bad.resolve(), re.escape("expected a 3D label map, got 2D"))
