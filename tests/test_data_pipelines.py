"""Training arrays (no leakage) and the tf.data pipelines of each stage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import no_aug
from tfsemiseg.config import Config
from tfsemiseg.data.pipelines import finetune_dataset, global_dataset, local_dataset
from tfsemiseg.data.prepared import evaluation_volumes, training_arrays

POISON_IMAGE = np.float32(0.123456)
POISON_VAL_TEST_LABEL = 7  # classes are 0, 1, 2
POISON_UNLABELED_TRAIN_LABEL = 9
FRACTION = 0.5


def _rows(a: np.ndarray) -> list[bytes]:
    return [np.ascontiguousarray(x).tobytes() for x in a]


def _take(ds, n: int) -> list:
    return [tuple(t.numpy() for t in batch) for batch in ds.take(n)]


def _synthetic(n: int = 12, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size), dtype=np.float32) * 0.8 + 0.1
    labels = rng.integers(0, 3, (n, size, size)).astype(np.uint8)  # unique per slice
    return images, labels


# --------------------------------------------------------------------------- leakage


def test_no_leakage_of_val_test_or_unlabeled_labels(prepared_phantom):
    data = prepared_phantom
    split = data.split(0)
    assert (len(split.train), len(split.val), len(split.test)) == (6, 2, 2)
    labeled, unlabeled = split.labeled(FRACTION), split.unlabeled(FRACTION)
    assert len(labeled) == 3 and len(unlabeled) == 3

    # poison, in memory, everything a training stage must never see
    for cid in split.val + split.test:
        vol = data.volumes[cid]
        vol.image = np.full_like(vol.image, POISON_IMAGE)
        vol.label = np.full_like(vol.label, POISON_VAL_TEST_LABEL)
    for cid in unlabeled:
        vol = data.volumes[cid]
        vol.label = np.full_like(vol.label, POISON_UNLABELED_TRAIN_LABEL)

    arrays = training_arrays(data, split, FRACTION)
    assert arrays.labeled_cases == labeled
    assert sorted(arrays.unlabeled_cases) == sorted(unlabeled)

    # labeled arrays: exactly the slices of split.labeled(f), in order
    np.testing.assert_array_equal(arrays.labeled_images, np.concatenate([data.volumes[c].image for c in labeled]))
    np.testing.assert_array_equal(arrays.labeled_labels, np.concatenate([data.volumes[c].label for c in labeled]))
    assert set(np.unique(arrays.labeled_labels)) <= {0, 1, 2}
    # unlabeled (global stage) images: every train slice, no val/test slice
    train_rows = _rows(np.concatenate([data.volumes[c].image for c in split.train]))
    assert sorted(_rows(arrays.unlabeled_images)) == sorted(train_rows)
    for a in (arrays.unlabeled_images, arrays.labeled_images):
        assert not np.any(np.all(a == POISON_IMAGE, axis=(1, 2)))

    aug = no_aug(Config()).augment
    allowed_images = set(train_rows)
    allowed_pairs = {(i, l) for i, l in zip(_rows(arrays.labeled_images), _rows(arrays.labeled_labels.astype(np.int32)))}
    batch = 16

    n = len(arrays.unlabeled_images)
    seen = set()
    for a, b in _take(global_dataset(arrays.unlabeled_images, batch, aug, seed=1, deterministic=True), math.ceil(n / batch)):
        for view in (a, b):
            assert not np.any(np.all(view == POISON_IMAGE, axis=(1, 2, 3)))
            rows = _rows(view[..., 0])
            assert set(rows) <= allowed_images
            seen.update(rows)
    assert seen == allowed_images  # every train slice was seen, nothing else

    m = len(arrays.labeled_images)
    for name, ds in [
        ("local", local_dataset(arrays.labeled_images, arrays.labeled_labels, batch, aug, seed=2, deterministic=True)),
        ("finetune", finetune_dataset(arrays.labeled_images, arrays.labeled_labels, batch, aug, seed=3, deterministic=True)),
    ]:
        seen_pairs = set()
        for out in _take(ds, math.ceil(m / batch)):
            images, labels = out[0], out[-1]
            assert not np.any(np.isin(labels, [POISON_VAL_TEST_LABEL, POISON_UNLABELED_TRAIN_LABEL])), name
            assert not np.any(np.all(images == POISON_IMAGE, axis=(1, 2, 3))), name
            pairs = set(zip(_rows(images[..., 0]), _rows(labels.astype(np.int32))))
            assert pairs <= allowed_pairs, name
            seen_pairs |= pairs
        assert seen_pairs == allowed_pairs, name


def test_extra_unlabeled_images_only_in_global_stage(phantom_dir, make_cfg, tmp_path):
    from tfsemiseg.data.prepared import prepare_dataset

    data = prepare_dataset(make_cfg(**{"data.use_test_images_unlabeled": True}), phantom_dir, tmp_path / "run")
    split = data.split(0)
    assert len(split.extra_unlabeled) == 2
    arrays = training_arrays(data, split, 1.0)
    extra_rows = set(_rows(np.concatenate([data.volumes[c].image for c in split.extra_unlabeled])))
    assert extra_rows <= set(_rows(arrays.unlabeled_images))
    assert not extra_rows & set(_rows(arrays.labeled_images))
    assert arrays.labeled_cases == split.labeling_order  # fraction 1: every train case, no extra one
    held_out = set(_rows(np.concatenate([data.volumes[c].image for c in split.val + split.test])))
    assert not held_out & set(_rows(arrays.unlabeled_images))


def test_evaluation_volumes_are_val_and_test(prepared_phantom):
    split = prepared_phantom.split(1)
    for part in ("val", "test"):
        vols = evaluation_volumes(prepared_phantom, split, part)
        assert [v.case_id for v in vols] == getattr(split, part)
    with pytest.raises(ValueError):
        evaluation_volumes(prepared_phantom, split, "train")


# --------------------------------------------------------------------------- stage outputs


def test_global_batches_two_views():
    images, _ = _synthetic()
    aug = Config().augment
    a, b = _take(global_dataset(images, 4, aug, seed=0, deterministic=True), 1)[0]
    assert a.shape == b.shape == (4, 24, 24, 1) and a.dtype == b.dtype == np.float32
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert not np.array_equal(a, b)  # two independently augmented views

    a, b = _take(global_dataset(images, 4, no_aug(Config()).augment, seed=0, deterministic=True), 1)[0]
    np.testing.assert_array_equal(a, b)  # without augmentation both are the source slice
    assert set(_rows(a[..., 0])) <= set(_rows(images))


def test_local_batches_intensity_only():
    images, labels = _synthetic()
    by_label = {r: i for i, r in enumerate(_rows(labels.astype(np.int32)))}
    assert len(by_label) == len(labels)

    # intensity off: both views are the source slice, the label its label
    a, b, y = _take(local_dataset(images, labels, 4, no_aug(Config()).augment, seed=0, deterministic=True), 1)[0]
    assert a.shape == b.shape == (4, 24, 24, 1) and a.dtype == np.float32
    assert y.shape == (4, 24, 24) and y.dtype == np.int32
    for k in range(4):
        i = by_label[y[k].tobytes()]
        np.testing.assert_array_equal(a[k, ..., 0], images[i])
        np.testing.assert_array_equal(b[k, ..., 0], images[i])

    # brightness only (x * c): each view is c * source exactly, no spatial change
    cfg = no_aug(Config()).replace(**{"augment.local_intensity.brightness_prob": 1.0})
    a, b, y = _take(local_dataset(images, labels, 4, cfg.augment, seed=0, deterministic=True), 1)[0]
    lo, hi = cfg.augment.local_intensity.brightness_range
    factors = []
    for k in range(4):
        src = images[by_label[y[k].tobytes()]]
        for view in (a[k, ..., 0], b[k, ..., 0]):
            c = float(np.sum(view * src) / np.sum(src * src))
            assert lo - 1e-6 <= c <= hi + 1e-6
            np.testing.assert_allclose(view, c * src, rtol=1e-5, atol=1e-6)
            factors.append(c)
    assert len(set(np.round(factors, 6))) > 1  # the views really were changed

    # default intensity augmentation: labels untouched and from the source set
    a, b, y = _take(local_dataset(images, labels, 4, Config().augment, seed=5, deterministic=True), 1)[0]
    assert all(y[k].tobytes() in by_label for k in range(4))


def test_finetune_batches_shapes_and_classes(prepared_phantom):
    split = prepared_phantom.split(0)
    arrays = training_arrays(prepared_phantom, split, FRACTION)
    x, y = _take(finetune_dataset(arrays.labeled_images, arrays.labeled_labels, 8, Config().augment, seed=0,
                                  deterministic=True), 1)[0]
    assert x.shape == (8, 64, 64, 1) and x.dtype == np.float32
    assert y.shape == (8, 64, 64) and y.dtype == np.int32
    assert set(np.unique(y)) <= {0, 1, 2} and len(np.unique(y)) > 1
    assert np.all(np.isfinite(x))


def test_finetune_flips_image_and_label_together():
    images, labels = _synthetic(n=10)
    cfg = no_aug(Config()).replace(**{"augment.finetune_spatial.flip_prob": 0.5})
    flips = [lambda a: a, lambda a: a[::-1], lambda a: a[:, ::-1], lambda a: a[::-1, ::-1]]
    used = set()
    for x, y in _take(finetune_dataset(images, labels, 8, cfg.augment, seed=4, deterministic=True), 3):
        for k in range(8):
            match = [(i, f) for i in range(len(images)) for f in range(4)
                     if np.array_equal(x[k, ..., 0], flips[f](images[i]))]
            assert len(match) == 1
            i, f = match[0]
            np.testing.assert_array_equal(y[k], flips[f](labels[i]))
            used.add(f)
    assert len(used) > 1  # some flips did happen


def test_finetune_rotation_scale_same_geometry_for_image_and_label():
    """Piecewise-constant images (value per class): wherever the bilinear image equals a class
    value exactly, the nearest-sampled label must be that class."""
    values = np.array([0.0, 0.3, 1.0], np.float32)
    rng = np.random.default_rng(8)
    labels = np.zeros((6, 32, 32), np.uint8)
    for k in range(6):
        r, c = rng.integers(4, 12, 2)
        labels[k, r : r + 14, c : c + 12] = 1
        labels[k, r + 5 : r + 18, c + 6 : c + 16] = 2
    images = values[labels]
    cfg = no_aug(Config()).replace(**{
        "augment.finetune_spatial.rotation_prob": 1.0, "augment.finetune_spatial.rotation_max": 0.6,
        "augment.finetune_spatial.scale_prob": 1.0, "augment.finetune_spatial.flip_prob": 0.5,
    })
    x, y = _take(finetune_dataset(images, labels, 6, cfg.augment, seed=9, deterministic=True), 1)[0]
    x = x[..., 0]
    assert set(np.unique(y)) <= {0, 1, 2}
    assert not any(np.array_equal(y[k], labels[i]) for k in range(6) for i in range(6))  # transformed
    checked = 0
    for cls, v in enumerate(values):
        where = x == v
        assert np.all(y[where] == cls), cls
        checked += int(where[y > 0].sum()) if cls else 0
    assert checked > 500  # enough foreground pixels were compared


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("stage", ["global", "finetune"])
def test_same_seed_same_batches_other_seed_differs(stage):
    images, labels = _synthetic(n=16)
    # cheap random augmentation (graph building of the full default set is slow on CI);
    # what is tested here is the seeding of the pipeline: shuffle order + per-sample seeds
    changes = {f"augment.{stage}_spatial.flip_prob": 0.5, f"augment.{stage}_intensity.noise_prob": 1.0}
    aug = no_aug(Config()).replace(**changes).augment

    def first(seed):
        if stage == "global":
            ds = global_dataset(images, 4, aug, seed=seed, deterministic=True)
        else:
            ds = finetune_dataset(images, labels, 4, aug, seed=seed, deterministic=True)
        return _take(ds, 2)

    a, b, c = first(11), first(11), first(12)
    for ba, bb in zip(a, b):
        for ta, tb in zip(ba, bb):
            np.testing.assert_array_equal(ta, tb)
    assert not all(np.array_equal(ta, tc) for ba, bc in zip(a, c) for ta, tc in zip(ba, bc))


def test_empty_pipeline_is_an_error():
    with pytest.raises(ValueError, match="at least one slice"):
        global_dataset(np.zeros((0, 8, 8), np.float32), 2, Config().augment)
