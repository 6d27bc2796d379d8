"""Dice (pooled and per volume) and HD95 against independent brute-force computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tfsemiseg.metrics import (
    STATUS_ABSENT,
    STATUS_MISSING_LABEL,
    STATUS_MISSING_PREDICTION,
    STATUS_OK,
    HD95Result,
    PooledDice,
    dice_per_class,
    hausdorff_distance,
    hd95_per_class,
    summarise_hd95,
    summarise_per_volume,
    surface_voxels,
)

SPACING = (1.0, 0.5, 2.0)


# ---------------------------------------------------------------------------
# helpers: independent reference implementations


def _random_label_map(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """Label map of random boxes (so masks have interiors) plus some salt noise."""
    out = np.zeros(shape, dtype=np.int64)
    for _ in range(rng.integers(1, 5)):
        c = int(rng.integers(1, num_classes))
        lo = [int(rng.integers(0, s)) for s in shape]
        hi = [int(rng.integers(lo_i + 1, s + 1)) for lo_i, s in zip(lo, shape)]
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = c
    noise = rng.random(shape) < 0.08
    out[noise] = rng.integers(0, num_classes, size=int(noise.sum()))
    return out


def _brute_surface(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Voxels of ``mask`` with at least one neighbour outside it (or outside the array).

    A neighbour differs by at most 1 along each axis and along at most
    ``connectivity`` axes; written with padding and shifts, not erosion.
    """
    padded = np.pad(mask.astype(bool), 1, constant_values=False)
    has_outside_neighbour = np.zeros(mask.shape, dtype=bool)
    for offset in itertools.product((-1, 0, 1), repeat=mask.ndim):
        moved = sum(o != 0 for o in offset)
        if moved == 0 or moved > connectivity:
            continue
        window = tuple(slice(1 + o, 1 + o + s) for o, s in zip(offset, mask.shape))
        has_outside_neighbour |= ~padded[window]
    return mask.astype(bool) & has_outside_neighbour


def _brute_directed(a: np.ndarray, b: np.ndarray, spacing, connectivity: int) -> np.ndarray:
    """Distance from each surface voxel of ``a`` to the nearest surface voxel of ``b`` (all pairs)."""
    pa = np.argwhere(_brute_surface(a, connectivity)) * np.asarray(spacing)
    pb = np.argwhere(_brute_surface(b, connectivity)) * np.asarray(spacing)
    pairwise = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return pairwise.min(axis=1)


def _brute_hd95_max(a, b, spacing, connectivity=1) -> float:
    return float(
        max(
            np.percentile(_brute_directed(a, b, spacing, connectivity), 95),
            np.percentile(_brute_directed(b, a, spacing, connectivity), 95),
        )
    )


def _brute_hd95_union(a, b, spacing, connectivity=1) -> float:
    both = np.concatenate(
        [_brute_directed(a, b, spacing, connectivity), _brute_directed(b, a, spacing, connectivity)]
    )
    return float(np.percentile(both, 95))


# ---------------------------------------------------------------------------
# pooled Dice


def test_pooled_dice_matches_set_based_computation():
    rng = np.random.default_rng(0)
    k = 4
    metric = PooledDice(k)
    pred_sets = {c: set() for c in range(1, k)}
    label_sets = {c: set() for c in range(1, k)}
    offset = 0
    for shape in [(3, 16, 16), (5, 16, 16), (1, 16, 16), (2, 8, 12)]:
        pred = _random_label_map(rng, shape, k)
        label = _random_label_map(rng, shape, k)
        metric.update(pred, label)
        for c in range(1, k):
            pred_sets[c] |= {offset + int(i) for i in np.flatnonzero(pred.ravel() == c)}
            label_sets[c] |= {offset + int(i) for i in np.flatnonzero(label.ravel() == c)}
        offset += pred.size

    result = metric.result()
    expected = [
        2 * len(pred_sets[c] & label_sets[c]) / (len(pred_sets[c]) + len(label_sets[c])) for c in range(1, k)
    ]
    np.testing.assert_allclose(result["per_class"], expected, rtol=1e-12)
    assert result["mean"] == pytest.approx(np.mean(expected), rel=1e-12)
    assert result["intersection"] == [len(pred_sets[c] & label_sets[c]) for c in range(1, k)]
    assert result["pred_size"] == [len(pred_sets[c]) for c in range(1, k)]
    assert result["label_size"] == [len(label_sets[c]) for c in range(1, k)]
    assert result["num_updates"] == 4


def test_pooled_dice_differs_from_mean_of_per_slice_dice():
    pred = np.zeros((2, 16, 16), dtype=np.int32)
    label = np.zeros_like(pred)
    pred[0, :10, :10] = 1  # slice 0: large structure, perfect (slice Dice 1)
    label[0, :10, :10] = 1
    pred[1, 0, 0] = 1  # slice 1: one-voxel structure, missed (slice Dice 0)
    label[1, 5, 5] = 1

    metric = PooledDice(2)
    metric.update(pred, label)
    pooled = metric.result()["per_class"][0]

    per_slice = [dice_per_class(pred[s], label[s], 2)[0] for s in range(2)]
    assert per_slice == [1.0, 0.0]
    assert pooled == pytest.approx(2 * 100 / (101 + 101))
    assert pooled != pytest.approx(np.mean(per_slice))

    # Feeding the slices one update at a time pools to the same value.
    by_slice = PooledDice(2)
    for s in range(2):
        by_slice.update(pred[s], label[s])
    assert by_slice.result()["per_class"][0] == pytest.approx(pooled)


def test_pooled_dice_class_absent_from_whole_pool_is_nan_and_excluded():
    pred = np.array([[0, 1, 1], [0, 0, 3]])
    label = np.array([[0, 1, 0], [0, 0, 0]])
    metric = PooledDice(4)
    metric.update(pred, label)
    result = metric.result()
    assert result["per_class"][0] == pytest.approx(2 * 1 / 3)
    assert math.isnan(result["per_class"][1])  # class 2: nowhere
    assert result["per_class"][2] == 0.0  # class 3: predicted only
    assert result["mean"] == pytest.approx((2 / 3 + 0.0) / 2)

    metric.reset()
    metric.update(np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int))
    empty = metric.result()
    assert all(math.isnan(v) for v in empty["per_class"])
    assert math.isnan(empty["mean"])


@pytest.mark.parametrize(
    "pred, label",
    [
        (np.zeros((2, 2), dtype=int), np.zeros((2, 3), dtype=int)),  # shapes differ
        (np.full((2, 2), 3), np.zeros((2, 2), dtype=int)),  # value out of range
        (np.full((2, 2), -1), np.zeros((2, 2), dtype=int)),  # negative value
        (np.zeros((2, 2), dtype=np.float32), np.zeros((2, 2), dtype=int)),  # not integer
    ],
)
def test_dice_rejects_bad_input(pred, label):
    with pytest.raises(ValueError):
        PooledDice(3).update(pred, label)
    with pytest.raises(ValueError):
        dice_per_class(pred, label, 3)


# ---------------------------------------------------------------------------
# per-volume Dice


def test_dice_per_class_values_and_empty_rules():
    pred = np.zeros((4, 4, 4), dtype=np.int16)
    label = np.zeros_like(pred)
    pred[0, :2, :2] = 1  # 4 voxels
    label[0, :2, :1] = 1  # 2 voxels, both inside pred
    pred[3, 3, 3] = 2  # class 2: predicted only -> 0
    label[2, 2, 2] = 3  # class 3: labelled only -> 0
    # class 4: absent from both -> NaN
    d = dice_per_class(pred, label, 5)
    assert d.shape == (4,) and d.dtype == np.float64
    assert d[0] == pytest.approx(2 * 2 / (4 + 2))
    assert d[1] == 0.0
    assert d[2] == 0.0
    assert math.isnan(d[3])


def test_summarise_per_volume_is_nan_aware():
    values = [np.array([1.0, np.nan]), np.array([0.5, np.nan]), np.array([0.0, 0.8])]
    s = summarise_per_volume(values)
    assert s["count"] == [3, 1]
    np.testing.assert_allclose(s["mean"], [0.5, 0.8])
    np.testing.assert_allclose(s["std"], [np.std([1.0, 0.5, 0.0]), 0.0])
    assert s["mean_over_classes"] == pytest.approx(0.65)
    assert s["num_volumes"] == 3

    never = summarise_per_volume([np.array([0.7, np.nan])])
    assert never["count"] == [1, 0]
    assert math.isnan(never["mean"][1]) and math.isnan(never["std"][1])
    assert never["mean_over_classes"] == pytest.approx(0.7)


# ---------------------------------------------------------------------------
# HD95


@pytest.mark.parametrize("connectivity", [1, 3])
def test_surface_voxels_match_brute_force(connectivity):
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = _random_label_map(rng, (7, 6, 8), 2) == 1
        np.testing.assert_array_equal(surface_voxels(mask, connectivity), _brute_surface(mask, connectivity))


def test_hd95_matches_brute_force_on_random_masks_with_anisotropic_spacing():
    rng = np.random.default_rng(2)
    k = 3
    compared = 0
    union_differs = 0
    for _ in range(12):
        shape = (int(rng.integers(5, 9)), int(rng.integers(5, 9)), int(rng.integers(4, 8)))
        pred = _random_label_map(rng, shape, k)
        label = _random_label_map(rng, shape, k)
        result = hd95_per_class(pred, label, SPACING, k)
        for c in range(1, k):
            p, g = pred == c, label == c
            if not (p.any() and g.any()):
                continue
            expected = _brute_hd95_max(p, g, SPACING)
            assert result.status[c - 1] == STATUS_OK
            assert result.values[c - 1] == pytest.approx(expected, rel=1e-9, abs=1e-9)
            compared += 1
            union_differs += not math.isclose(expected, _brute_hd95_union(p, g, SPACING), abs_tol=1e-9)
    assert compared >= 15
    # The random cases tell max-of-directed from the medpy union definition.
    assert union_differs >= 3


def test_hd95_full_connectivity_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(4):
        p = _random_label_map(rng, (6, 7, 5), 2) == 1
        g = _random_label_map(rng, (6, 7, 5), 2) == 1
        if not (p.any() and g.any()):
            continue
        got = hausdorff_distance(p, g, SPACING, connectivity=3)
        assert got == pytest.approx(_brute_hd95_max(p, g, SPACING, connectivity=3), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("axis, shift, expected_mm", [(2, 2, 4.0), (1, 3, 1.5), (0, 1, 1.0)])
def test_translated_cube_gives_translation_distance_in_mm(axis, shift, expected_mm):
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[5:11, 5:11, 5:11] = 1
    pred = np.roll(label, shift, axis=axis)
    result = hd95_per_class(pred, label, SPACING, 2)
    assert result.status == [STATUS_OK]
    assert result.values[0] == pytest.approx(expected_mm)
    assert hausdorff_distance(pred == 1, label == 1, SPACING, percentile=100) == pytest.approx(expected_mm)


def test_identical_masks_give_zero():
    rng = np.random.default_rng(4)
    label = _random_label_map(rng, (8, 9, 7), 4)
    result = hd95_per_class(label, label.copy(), SPACING, 4)
    for value, status in zip(result.values, result.status):
        if status == STATUS_OK:
            assert value == 0.0
        else:
            assert status == STATUS_ABSENT and math.isnan(value)
    assert STATUS_OK in result.status


def test_hd95_empty_mask_statuses():
    pred = np.zeros((6, 6, 6), dtype=np.int64)
    label = np.zeros_like(pred)
    pred[1:3, 1:3, 1:3] = 1
    label[1:3, 1:3, 1:3] = 1  # class 1: both present -> ok, 0 mm
    label[4, 4, 4] = 2  # class 2: label only -> missing_prediction
    pred[0, 5, 0] = 3  # class 3: prediction only -> missing_label
    # class 4 nowhere -> absent
    result = hd95_per_class(pred, label, SPACING, 5)
    assert isinstance(result, HD95Result)
    values, status, diagonal = result
    assert status == [STATUS_OK, STATUS_MISSING_PREDICTION, STATUS_MISSING_LABEL, STATUS_ABSENT]
    assert diagonal == pytest.approx(math.sqrt(sum((6 * s) ** 2 for s in SPACING)))
    assert values[0] == 0.0
    assert all(math.isnan(v) for v in values[1:])


def test_summarise_hd95_counts_statuses_and_averages_defined_values_only():
    results = [
        HD95Result(np.array([1.0, np.nan]), [STATUS_OK, STATUS_MISSING_PREDICTION]),
        HD95Result(np.array([3.0, 2.0]), [STATUS_OK, STATUS_OK]),
        HD95Result(np.array([8.0, np.nan]), [STATUS_OK, STATUS_ABSENT]),
        HD95Result(np.array([np.nan, np.nan]), [STATUS_MISSING_LABEL, STATUS_MISSING_PREDICTION]),
    ]
    s = summarise_hd95(results)
    assert s["count"] == [3, 1]
    np.testing.assert_allclose(s["mean"], [4.0, 2.0])
    np.testing.assert_allclose(s["median"], [3.0, 2.0])
    np.testing.assert_allclose(s["std"], [np.std([1.0, 3.0, 8.0]), 0.0])
    assert s["status_counts"][0] == {
        STATUS_OK: 3, STATUS_ABSENT: 0, STATUS_MISSING_PREDICTION: 0, STATUS_MISSING_LABEL: 1
    }
    assert s["status_counts"][1] == {
        STATUS_OK: 1, STATUS_ABSENT: 1, STATUS_MISSING_PREDICTION: 2, STATUS_MISSING_LABEL: 0
    }
    assert s["mean_over_classes"] == pytest.approx(3.0)
    assert s["num_volumes"] == 4
    # no diagonal given: a miss is unknown, so mean_all is NaN where a class was missed
    assert s["mean_all"][0] != s["mean_all"][0]


def test_summarise_hd95_mean_over_all_volumes_counts_misses_as_the_diagonal():
    d = [10.0, 20.0, 30.0, 40.0]
    results = [
        HD95Result(np.array([1.0, np.nan]), [STATUS_OK, STATUS_MISSING_PREDICTION], d[0]),
        HD95Result(np.array([3.0, 2.0]), [STATUS_OK, STATUS_OK], d[1]),
        HD95Result(np.array([8.0, np.nan]), [STATUS_OK, STATUS_ABSENT], d[2]),
        HD95Result(np.array([np.nan, np.nan]), [STATUS_MISSING_LABEL, STATUS_MISSING_PREDICTION], d[3]),
    ]
    s = summarise_hd95(results)
    # class 1: three ok volumes and one miss (diagonal 40); class 2: the absent volume is left out
    assert s["mean_all"] == pytest.approx([(1 + 3 + 8 + 40) / 4, (10 + 2 + 40) / 3])
    assert s["mean_all_over_classes"] == pytest.approx(((1 + 3 + 8 + 40) / 4 + (10 + 2 + 40) / 3) / 2)
    np.testing.assert_allclose(s["mean"], [4.0, 2.0])  # the mean over ok volumes is kept
    # missing the worst-segmented volume instead improves the "ok" mean, but not mean_all
    worse = summarise_hd95(results[:2] + [results[2]._replace(values=np.array([np.nan, np.nan]),
                                                              status=[STATUS_MISSING_PREDICTION, STATUS_ABSENT])]
                           + results[3:])
    assert worse["mean"][0] == pytest.approx(2.0) and s["mean"][0] > 2.0
    assert worse["mean_all"][0] == pytest.approx((1 + 3 + 30 + 40) / 4) and s["mean_all"][0] < 18.5


def test_hd95_rejects_bad_spacing_and_shapes():
    vol = np.zeros((4, 4, 4), dtype=int)
    vol[1, 1, 1] = 1
    with pytest.raises(ValueError):
        hd95_per_class(vol, vol, (1.0, 1.0), 2)
    with pytest.raises(ValueError):
        hd95_per_class(vol, vol, (1.0, 0.0, 1.0), 2)
    with pytest.raises(ValueError):
        hd95_per_class(vol, vol[:3], SPACING, 2)
    with pytest.raises(ValueError):
        hd95_per_class(vol, vol + 1, SPACING, 2)
