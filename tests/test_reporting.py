"""The grid report: its table and CSV match the result files they are built from."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.reporting import PAPER_HIPPOCAMPUS, write_report


def fake_result(method, fraction, fold, pooled, volume, hd, dataset="Hippocampus"):
    return {
        "method": method, "fraction": fraction, "fold": fold, "dataset": dataset, "num_labeled_volumes": 7,
        "split_digest": f"split{fold}",
        "metrics": {"pooled_dice": {"per_class": [pooled, pooled], "mean": pooled},
                    "volume_dice": {"mean_over_classes": volume}, "hd95_mm": {"mean_over_classes": hd}},
    }


@pytest.fixture
def results_dir(tmp_path):
    rng = np.random.default_rng(0)
    values = {}
    for method in ("random", "global+local-block"):
        for fraction in (0.05, 0.2):
            for fold in (0, 1, 2):
                pooled, volume, hd = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9), rng.uniform(1, 5)
                values[(method, fraction, fold)] = (pooled, volume, hd)
                d = tmp_path / f"fold{fold}" / f"frac{fraction:g}" / method
                d.mkdir(parents=True)
                (d / "result.json").write_text(json.dumps(fake_result(method, fraction, fold, pooled, volume, hd)))
    return tmp_path, values


def test_table_matches_the_result_files(results_dir):
    root, values = results_dir
    paths = write_report(root)
    md = paths["markdown"].read_text().split("## Fold ")[0]  # the mean over folds; per-fold tables follow
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| random") or line.startswith("| global+local-block")}
    for method in ("random", "global+local-block"):
        for i, fraction in enumerate((0.05, 0.2)):
            pooled = np.array([values[(method, fraction, k)][0] for k in range(3)])
            volume = np.array([values[(method, fraction, k)][1] for k in range(3)])
            hd = np.array([values[(method, fraction, k)][2] for k in range(3)])
            cell, vcell, hcell = rows[method][3 * i : 3 * i + 3]
            assert hcell == f"{hd.mean():.2f} ± {hd.std():.2f}"
            assert cell.startswith(f"{pooled.mean():.3f} ± {pooled.std():.3f}")
            assert f"({PAPER_HIPPOCAMPUS[method][fraction]:.3f})" in cell  # the paper's number beside ours
            assert vcell == f"{volume.mean():.3f} ± {volume.std():.3f}"
        assert rows[method][-1] == "0,1,2"
    # Table 1's order: random before the proposed method
    assert md.index("| random") < md.index("| global+local-block")


def test_csv_and_plot(results_dir):
    root, values = results_dir
    paths = write_report(root, root / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(values)
    for r in rows:
        pooled, volume, hd = values[(r["method"], float(r["fraction"]), int(r["fold"]))]
        assert float(r["pooled_dice"]) == pytest.approx(pooled, abs=1e-5)
        assert float(r["hd95_mm"]) == pytest.approx(hd, abs=1e-5)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_paper_numbers_for_other_datasets(tmp_path):
    d = tmp_path / "fold0" / "frac0.1" / "random"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(fake_result("random", 0.1, 0, 0.5, 0.5, 2.0, dataset="Phantom")))
    md = write_report(tmp_path)["markdown"].read_text()
    assert re.search(r"\| random \| 0\.500 \| 0\.500 \| 2\.00 \| 0 \|", md)


def test_empty_results_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TfSemisegError, match="no result.json found"):
        write_report(tmp_path)


def test_partial_folds_are_named_per_fraction_and_each_fold_has_its_table(tmp_path):
    # fold 1 finished 5% only: the mean row must say which folds each fraction averages
    cells = {("random", 0.05, 0): 0.70, ("random", 0.05, 1): 0.80, ("random", 0.1, 0): 0.75}
    for (method, fraction, fold), pooled in cells.items():
        d = tmp_path / f"fold{fold}" / f"frac{fraction:g}" / method
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(fake_result(method, fraction, fold, pooled, pooled, 2.0)))
    md = write_report(tmp_path)["markdown"].read_text()
    tables = md.split("## Fold ")
    assert [t.split("\n", 1)[0] for t in tables[1:]] == ["0", "1"]
    mean_row = next(line for line in tables[0].splitlines() if line.startswith("| random"))
    assert mean_row.split("|")[2].strip().startswith(f"{0.75:.3f} ± {0.05:.3f}")
    assert mean_row.split("|")[-2].strip() == "5%: 0,1; 10%: 0"
    fold1_row = next(line for line in tables[2].splitlines() if line.startswith("| random"))
    assert fold1_row.split("|")[2].strip().startswith("0.800") and fold1_row.split("|")[-2].strip() == "1"
