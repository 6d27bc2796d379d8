"""Seeded volume-level splits, labeled fractions, and splits.json reuse."""

from __future__ import annotations

import json
import random
from decimal import ROUND_HALF_UP, Decimal

import pytest

from tfsemiseg.config import SplitConfig
from tfsemiseg.data.datasets import discover
from tfsemiseg.layout import SPLITS as SPLITS_FILE
from tfsemiseg.data.splits import get_split, load_or_create_splits, make_split
from tfsemiseg.errors import DataError

IDS_220 = [f"hippocampus_{i:03d}" for i in range(1, 221)]
CFG = SplitConfig()  # 3:1:1, seed 12345, 4 folds


def expected_labeled(fraction: float, n_train: int) -> int:
    """max(1, round-half-up(f * n)), computed in exact decimal arithmetic."""
    exact = (Decimal(str(fraction)) * n_train).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return max(1, min(n_train, int(exact)))


def test_same_seed_and_fold_identical():
    a = make_split(IDS_220, [], CFG, 1)
    shuffled = IDS_220[:]
    random.Random(0).shuffle(shuffled)
    b = make_split(shuffled, [], SplitConfig(), 1)  # input order does not matter
    assert a == b and a.digest() == b.digest()


def test_different_folds_and_seeds_differ():
    folds = [make_split(IDS_220, [], CFG, k) for k in range(4)]
    assert len({tuple(f.test) for f in folds}) == 4
    assert len({tuple(f.val) for f in folds}) == 4
    other_seed = make_split(IDS_220, [], SplitConfig(seed=CFG.seed + 1), 0)
    assert other_seed.test != folds[0].test


@pytest.mark.parametrize("fold", [0, 3])
def test_parts_disjoint_cover_and_follow_ratios(fold):
    s = make_split(IDS_220, [], CFG, fold)
    assert (len(s.train), len(s.val), len(s.test)) == (132, 44, 44)
    parts = [set(s.train), set(s.val), set(s.test)]
    assert sum(len(p) for p in parts) == 220 and set.union(*parts) == set(IDS_220)
    assert sorted(s.labeling_order) == sorted(s.train)


@pytest.mark.parametrize(
    "n, ratios, sizes",
    [(20, (2.0, 1.0, 1.0), (10, 5, 5)), (10, (3.0, 1.0, 1.0), (6, 2, 2)), (7, (3.0, 1.0, 1.0), (5, 1, 1)),
     (40, (1.0, 0.0, 1.0), (20, 0, 20))],
)
def test_sizes_other_ratios(n, ratios, sizes):
    ids = [f"c{i}" for i in range(n)]
    s = make_split(ids, [], SplitConfig(ratios=ratios), 0)
    assert (len(s.train), len(s.val), len(s.test)) == sizes
    assert sorted(s.train + s.val + s.test) == sorted(ids)


def test_too_few_volumes_is_an_error():
    with pytest.raises(DataError, match=r"2 labeled volumes are too few for ratios \(3\.0, 1\.0, 1\.0\)"):
        make_split(["a", "b"], [], CFG, 0)


def test_labeled_fractions_nested_and_sized():
    s = make_split(IDS_220, [], CFG, 0)
    l5, l10, l20 = s.labeled(0.05), s.labeled(0.1), s.labeled(0.2)
    assert (len(l5), len(l10), len(l20)) == (7, 13, 26)  # 6.6, 13.2, 26.4 rounded
    assert set(l5) < set(l10) < set(l20) <= set(s.train)
    for f in (0.05, 0.1, 0.2, 0.5, 1.0):
        labeled, unlabeled = s.labeled(f), s.unlabeled(f)
        assert len(labeled) == expected_labeled(f, 132)
        assert not set(labeled) & set(unlabeled) and sorted(labeled + unlabeled) == sorted(s.train)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.15, 0.2, 0.35, 0.45, 0.7])
def test_num_labeled_is_round_half_up(fraction):
    """Exact halves round up (e.g. 0.35 * 90 = 31.5 -> 32, although 0.35 * 90 < 31.5 in floats)."""
    for n_train in range(1, 400):
        ids = [f"c{i:03d}" for i in range(n_train)]
        s = make_split(ids, [], SplitConfig(ratios=(1.0, 0.0, 0.0)), 0)
        assert s.num_labeled(fraction) == expected_labeled(fraction, n_train), (fraction, n_train)


def test_at_least_one_labeled_for_tiny_fraction():
    s = make_split([f"c{i}" for i in range(10)], [], CFG, 0)
    assert len(s.train) == 6
    assert s.labeled(0.001) == s.labeling_order[:1]
    assert s.labeled(1.0) == s.labeling_order


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_fraction_is_an_error(bad):
    s = make_split(IDS_220, [], CFG, 0)
    with pytest.raises(DataError, match=rf"labeled fraction must be in \(0, 1\], got {bad}"):
        s.labeled(bad)


def test_splits_json_written_and_reused(tmp_path):
    folds = load_or_create_splits(tmp_path, IDS_220, ["x_1", "x_0"], CFG)
    path = tmp_path / SPLITS_FILE
    data = json.loads(path.read_text())
    assert data["seed"] == CFG.seed and data["cases"] == IDS_220 and len(data["folds"]) == CFG.num_folds
    assert folds == [make_split(IDS_220, ["x_0", "x_1"], CFG, k) for k in range(4)]
    assert all(f.extra_unlabeled == ["x_0", "x_1"] for f in folds)
    mtime = path.stat().st_mtime_ns
    again = load_or_create_splits(tmp_path, list(reversed(IDS_220)), ["x_0", "x_1"], CFG)
    assert again == folds and path.stat().st_mtime_ns == mtime
    # the file is what is reused: an edited (still consistent) file is returned as is
    data["folds"][0]["labeling_order"] = list(reversed(data["folds"][0]["labeling_order"]))
    path.write_text(json.dumps(data))
    edited = load_or_create_splits(tmp_path, IDS_220, ["x_0", "x_1"], CFG)
    assert edited[0].labeling_order == list(reversed(folds[0].labeling_order))
    assert [p.name for p in tmp_path.iterdir()] == [SPLITS_FILE]  # no temp files left


def test_splits_json_with_changed_seed_is_an_error(tmp_path):
    load_or_create_splits(tmp_path, IDS_220, [], CFG)
    with pytest.raises(DataError) as info:
        load_or_create_splits(tmp_path, IDS_220, [], SplitConfig(seed=7))
    msg = str(info.value)
    assert str(tmp_path / SPLITS_FILE) in msg and "was written for different seed" in msg
    with pytest.raises(DataError, match="different cases"):
        load_or_create_splits(tmp_path, IDS_220[:-1], [], CFG)


def test_get_split_bad_fold():
    folds = [make_split(IDS_220, [], CFG, k) for k in range(2)]
    assert get_split(folds, 1) is folds[1]
    with pytest.raises(DataError, match=r"fold 2 does not exist: the splits have folds 0..1"):
        get_split(folds, 2)


def test_real_dataset_split_sizes(real_data_dir, make_cfg, tmp_path):
    index = discover(real_data_dir, make_cfg().data)
    folds = load_or_create_splits(tmp_path, [c.case_id for c in index.labeled], [], CFG)
    for s in folds:
        assert (len(s.train), len(s.val), len(s.test)) == (132, 44, 44)
        assert set(s.train + s.val + s.test) == {c.case_id for c in index.labeled}
        assert set(s.labeled(0.05)) < set(s.labeled(0.1)) < set(s.labeled(0.2))


def test_labels_digest_ignores_only_the_extra_unlabeled_images():
    ids = [f"c{i:03d}" for i in range(40)]
    plain = make_split(ids, [], SplitConfig(), 0)
    extra = make_split(ids, ["t1", "t2"], SplitConfig(), 0)
    assert extra.digest() != plain.digest() and extra.labels_digest() == plain.labels_digest() == plain.digest()
    assert make_split(ids, [], SplitConfig(), 1).labels_digest() != plain.labels_digest()
