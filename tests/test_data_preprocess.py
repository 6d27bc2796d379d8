"""Per-volume preprocessing (dtype, min-max, slicing, resizing) and the slice cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import PHANTOM_SHAPE, PHANTOM_TRAIN, np_bilinear, np_nearest, read_nifti, write_msd, write_nifti
from tfsemiseg.data.datasets import Case, discover
from tfsemiseg.data.nifti import read_label
from tfsemiseg.data.prepared import prepare_dataset
from tfsemiseg.data.preprocess import model_input, preprocess_case

def _single_case(tmp_path: Path, image: np.ndarray, label: np.ndarray | None = None, zooms=None) -> Case:
    img_path = tmp_path / "img.nii.gz"
    write_nifti(img_path, image, None if zooms is None else np.diag([*zooms, 1.0]))
    lab_path = None
    if label is not None:
        lab_path = write_nifti(tmp_path / "lab.nii.gz", label)
    return Case("c", img_path, lab_path)


# --------------------------------------------------------------------------- per volume


def test_model_input_minmax_exact_range_and_matches_numpy():
    rng = np.random.default_rng(1)
    vol = (rng.normal(300, 80, (9, 10, 11))).astype(np.float32)
    out = model_input(vol, 11).numpy()[..., 0]  # 10x11 slices to 11x11: min-max, then resize
    assert out.dtype == np.float32 and out.shape == (9, 11, 11)
    same = model_input(vol[:, :, :10], 10).numpy()[..., 0]  # same size: exactly min-max
    v = vol[:, :, :10].astype(np.float64)
    assert same.min() == 0.0 and same.max() == 1.0
    np.testing.assert_allclose(same, (v - v.min()) / (v.max() - v.min()), atol=1e-6)
    assert np.all(model_input(np.full((2, 4, 4), 7.0, np.float32), 4).numpy() == 0)  # constant: 0, not NaN


def test_image_float32_label_integer_and_normalised(tmp_path, make_cfg):
    rng = np.random.default_rng(2)
    image = rng.integers(-50, 3000, (16, 16, 12)).astype(np.int16)
    label = rng.integers(0, 3, (16, 16, 12)).astype(np.uint8)
    case = _single_case(tmp_path, image, label)
    vol = preprocess_case(case, make_cfg(**{"data.image_size": 16}).data, 3)
    assert vol.image.dtype == np.float32
    assert np.issubdtype(vol.label.dtype, np.integer) and np.issubdtype(vol.native_label.dtype, np.integer)
    # same size: the resize is the identity, so the result is exactly min-max of the volume
    assert vol.image.min() == 0.0 and vol.image.max() == 1.0
    v = image.astype(np.float64)
    np.testing.assert_allclose(vol.image, np.moveaxis((v - v.min()) / (v.max() - v.min()), -1, 0), atol=1e-6)
    np.testing.assert_array_equal(vol.label, np.moveaxis(label, -1, 0))


@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_slicing_axis(tmp_path, make_cfg, axis):
    rng = np.random.default_rng(3)
    shape = [16, 16, 16]
    shape[axis] = 7  # the slicing axis has its own length, the others the target size
    image = rng.random(shape).astype(np.float32)
    label = rng.integers(0, 3, shape).astype(np.uint8)
    case = _single_case(tmp_path, image, label, zooms=(1.0, 2.0, 3.0))
    vol = preprocess_case(case, make_cfg(**{"data.image_size": 16, "data.slice_axis": axis}).data, 3)
    norm = (image - image.min()) / (image.max() - image.min())
    assert vol.image.shape == (7, 16, 16) and vol.num_slices == 7
    np.testing.assert_allclose(vol.image, np.moveaxis(norm, axis, 0), atol=1e-6)
    np.testing.assert_array_equal(vol.native_label, np.moveaxis(label, axis, 0))
    assert vol.native_shape == (7, 16, 16)
    zooms = [1.0, 2.0, 3.0]  # spacing follows the axes: slicing axis first, the others in order
    assert vol.spacing == (zooms[axis], *[z for a, z in enumerate(zooms) if a != axis % 3])


def test_default_slice_axis_is_last(tmp_path, make_cfg):
    image = np.random.default_rng(4).random((20, 24, 9)).astype(np.float32)
    vol = preprocess_case(_single_case(tmp_path, image), make_cfg().data, 3)
    assert vol.num_slices == 9 and vol.native_shape == (9, 20, 24) and vol.label is None


def test_bilinear_image_resize_matches_numpy(tmp_path, make_cfg):
    rng = np.random.default_rng(5)
    image = rng.random((37, 29, 4)).astype(np.float32)  # non-square, non-integer scales
    vol = preprocess_case(_single_case(tmp_path, image), make_cfg(**{"data.image_size": 64}).data, 3)
    norm = (image - image.min()) / (image.max() - image.min())
    assert vol.image.shape == (4, 64, 64) and vol.image.dtype == np.float32
    for k in range(4):
        np.testing.assert_allclose(vol.image[k], np_bilinear(norm[:, :, k], 64), atol=1e-5)
    # downsampling too
    small = model_input(np.moveaxis(image, -1, 0), 16).numpy()[..., 0]
    np.testing.assert_allclose(small[2], np_bilinear(norm[:, :, 2], 16), atol=1e-5)


@pytest.mark.parametrize("src", [32, 37])
def test_label_nearest_resize_adds_no_class(tmp_path, make_cfg, src):
    """A slice with classes {0, 2} only must not gain class 1 at the 0/2 borders."""
    label = np.zeros((src, src, 2), np.uint8)
    label[src // 4 : 3 * src // 4, src // 3 : src - 3, :] = 2
    label[3:7, 2:5, 1] = 2
    image = np.random.default_rng(6).random(label.shape).astype(np.float32)
    vol = preprocess_case(_single_case(tmp_path, image, label), make_cfg(**{"data.image_size": 64}).data, 3)
    assert vol.label.shape == (2, 64, 64)
    for k in range(2):
        assert set(np.unique(vol.label[k])) == {0, 2}
        np.testing.assert_array_equal(vol.label[k], np_nearest(label[:, :, k], 64))
    # the check is meaningful: bilinear interpolation + truncation would create class 1
    blurred = np_bilinear(label[:, :, 0].astype(np.float64), 64).astype(np.uint8)
    assert 1 in blurred


@pytest.mark.parametrize("case_id", ["hippocampus_003", "hippocampus_243"])
def test_real_float32_label_becomes_integer(real_data_dir, case_id):
    """These two real label files are stored as float32: read as integers equal to rint."""
    path = real_data_dir / "labelsTr" / f"{case_id}.nii.gz"
    raw = read_nifti(path)
    assert raw.dtype == np.float32  # the premise of this test
    vol = read_label(path, 3)
    assert np.issubdtype(vol.array.dtype, np.integer)
    np.testing.assert_array_equal(vol.array, np.rint(raw).astype(np.int64))
    assert set(np.unique(vol.array)) == {0, 1, 2}


def test_real_volume_slices(real_subset, make_cfg):
    root = real_subset(["hippocampus_003", "hippocampus_004"])
    cfg = make_cfg()
    index = discover(root, cfg.data)
    for case in index.labeled:
        vol = preprocess_case(case, cfg.data, 3)
        img = read_nifti(case.image).astype(np.float64)
        lab = np.rint(read_nifti(case.label)).astype(np.int64)
        norm = (img - img.min()) / (img.max() - img.min())
        assert vol.num_slices == img.shape[2] and vol.image.shape == (img.shape[2], 64, 64)
        assert vol.native_shape == (img.shape[2], img.shape[0], img.shape[1])
        assert vol.image.dtype == np.float32 and vol.label.dtype.kind in "iu"
        np.testing.assert_array_equal(vol.native_label, np.moveaxis(lab, -1, 0))
        for k in (0, img.shape[2] // 2, img.shape[2] - 1):
            np.testing.assert_allclose(vol.image[k], np_bilinear(norm[:, :, k], 64), atol=1e-5)
            np.testing.assert_array_equal(vol.label[k], np_nearest(lab[:, :, k], 64))
        assert set(np.unique(vol.label)) <= {0, 1, 2}


# --------------------------------------------------------------------------- cache


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npz"))


def _leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def _assert_same(a, b):
    assert a.volumes.keys() == b.volumes.keys()
    for cid in a.volumes:
        va, vb = a.volumes[cid], b.volumes[cid]
        np.testing.assert_array_equal(va.image, vb.image)
        np.testing.assert_array_equal(va.label, vb.label)
        np.testing.assert_array_equal(va.native_label, vb.native_label)
        assert va.native_shape == vb.native_shape and va.spacing == vb.spacing and va.case_id == vb.case_id
        np.testing.assert_array_equal(va.affine, vb.affine)


def test_cache_second_prepare_reuses_entries(phantom_dir, make_cfg, tmp_path):
    cfg = make_cfg()
    first = prepare_dataset(cfg, phantom_dir, tmp_path / "run")
    assert first.built == PHANTOM_TRAIN
    second = prepare_dataset(cfg, phantom_dir, tmp_path / "run")
    assert second.built == 0
    _assert_same(first, second)
    cache = Path(cfg.data.cache_dir)
    assert len(_entries(cache)) == PHANTOM_TRAIN
    assert _leftovers(cache) == []
    assert Path(cfg.data.cache_dir).resolve().is_relative_to(tmp_path.resolve())


def test_cache_changed_file_rebuilds_that_entry(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    cfg = make_cfg()
    first = prepare_dataset(cfg, root, tmp_path / "run")
    cache = Path(cfg.data.cache_dir)
    old_entry = [p for p in _entries(cache) if p.name.startswith("phantom_004.")]
    assert len(old_entry) == 1

    path = root / "imagesTr" / "phantom_004.nii.gz"
    img = read_nifti(path).astype(np.float32)
    img[:, :, :10] = img.max() - img[:, :, :10]  # new content, same shape
    write_nifti(path, img)
    second = prepare_dataset(cfg, root, tmp_path / "run")
    assert second.built == 1
    new = second.volumes["phantom_004"].image
    assert not np.array_equal(new, first.volumes["phantom_004"].image)
    fresh = preprocess_case(Case("phantom_004", path.resolve(), (root / "labelsTr" / "phantom_004.nii.gz").resolve()), cfg.data, 3)
    np.testing.assert_array_equal(new, fresh.image)
    # the stale entry is gone, one entry per case
    assert not old_entry[0].exists()
    assert len(_entries(cache)) == PHANTOM_TRAIN
    assert [p for p in _entries(cache) if p.name.startswith("phantom_004.")] != old_entry
    assert _leftovers(cache) == []


def test_cache_changed_label_rebuilds_that_entry(copy_phantom, make_cfg, tmp_path):
    root = copy_phantom()
    cfg = make_cfg()
    prepare_dataset(cfg, root, tmp_path / "run")
    path = root / "labelsTr" / "phantom_001.nii.gz"
    write_nifti(path, np.zeros(PHANTOM_SHAPE, np.uint8))
    again = prepare_dataset(cfg, root, tmp_path / "run")
    assert again.built == 1
    assert again.volumes["phantom_001"].label.max() == 0


def test_cache_changed_image_size_rebuilds(phantom_dir, make_cfg, tmp_path):
    cfg = make_cfg()
    prepare_dataset(cfg, phantom_dir, tmp_path / "run")
    cache = Path(cfg.data.cache_dir)
    old = _entries(cache)
    other = make_cfg(**{"data.image_size": 32})
    rebuilt = prepare_dataset(other, phantom_dir, tmp_path / "run")
    assert rebuilt.built == PHANTOM_TRAIN
    assert all(v.image.shape[1:] == (32, 32) for v in rebuilt.volumes.values())
    assert not any(p.exists() for p in old)  # stale entries removed
    assert len(_entries(cache)) == PHANTOM_TRAIN
    # and the new entries are then reused
    assert prepare_dataset(other, phantom_dir, tmp_path / "run").built == 0


@pytest.mark.parametrize("corruption", ["truncate", "garbage", "empty"])
def test_cache_corrupt_entry_is_rebuilt(phantom_dir, make_cfg, tmp_path, corruption):
    cfg = make_cfg()
    first = prepare_dataset(cfg, phantom_dir, tmp_path / "run")
    cache = Path(cfg.data.cache_dir)
    entry = [p for p in _entries(cache) if p.name.startswith("phantom_002.")][0]
    data = entry.read_bytes()
    entry.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(500), "empty": b""}[corruption])
    again = prepare_dataset(cfg, phantom_dir, tmp_path / "run")
    assert again.built == 1
    _assert_same(first, again)
    assert entry.read_bytes() == data  # rewritten with the same content
    assert _leftovers(cache) == []


def test_cache_write_failure_leaves_no_partial_entry(phantom_dir, make_cfg, tmp_path, monkeypatch):
    """The entry is written to a temporary file and renamed: a crash mid-write leaves nothing."""
    import tfsemiseg.data.preprocess as pre

    real_savez = np.savez
    calls = []

    def failing_savez(fh, **arrays):
        calls.append(1)
        if len(calls) == 3:
            real_savez(fh, **arrays)
            fh.flush()
            raise OSError(28, "No space left on device")
        return real_savez(fh, **arrays)

    monkeypatch.setattr(pre.np, "savez", failing_savez)
    cfg = make_cfg()
    with pytest.raises(OSError):
        prepare_dataset(cfg, phantom_dir, tmp_path / "run")
    cache = Path(cfg.data.cache_dir)
    assert len(_entries(cache)) == 2  # the two written before the failure, not the third
    assert _leftovers(cache) == []
    monkeypatch.setattr(pre.np, "savez", real_savez)
    assert prepare_dataset(cfg, phantom_dir, tmp_path / "run").built == PHANTOM_TRAIN - 2


def test_cache_case_ids_sharing_a_prefix(tmp_path, make_cfg):
    """Case "a" must not treat case "a.v2"'s entry as its own stale entry."""
    rng = np.random.default_rng(7)
    cases = []
    for cid in ("a", "a.v2", "b"):
        img = rng.random((8, 9, 6)).astype(np.float32)
        cases.append((cid, img, (img > 0.5).astype(np.uint8)))
    root = write_msd(tmp_path / "ds", cases, labels={"0": "bg", "1": "fg"})
    cfg = make_cfg(**{"data.image_size": 8})
    assert prepare_dataset(cfg, root, tmp_path / "run").built == 3
    assert prepare_dataset(cfg, root, tmp_path / "run").built == 0
    # rebuilding "a" (changed content) must leave "a.v2"'s valid entry alone
    write_nifti(root / "imagesTr" / "a.nii.gz", rng.random((8, 9, 6)).astype(np.float32))
    assert prepare_dataset(cfg, root, tmp_path / "run").built == 1
    assert prepare_dataset(cfg, root, tmp_path / "run").built == 0
    assert len(_entries(Path(cfg.data.cache_dir))) == 3
