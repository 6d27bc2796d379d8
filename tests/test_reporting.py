"""The grid report: its table and CSV match the result files they are built from."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.reporting import PAPER_HIPPOCAMPUS, Claim, claims_table, paired_differences, verdict, write_report


def evaluation(pooled, volume, hd, mirror, hd_all=None, missed=0):
    return {"mirror": mirror, "pooled_dice": {"per_class": [pooled, pooled], "mean": pooled},
            "volume_dice": {"mean_over_classes": volume},
            "hd95_mm": {"mean_over_classes": hd, "mean_all_over_classes": hd if hd_all is None else hd_all,
                        "status_counts": [{"ok": 1, "missing_prediction": missed}, {"ok": 1}]}}


def fake_result(method, fraction, fold, pooled, volume, hd, dataset="Hippocampus", mirrored=None, hd_all=None,
                missed=0):
    """A result.json as `evaluate_method` writes it: the configured evaluation (mirrored, as
    configs/hippocampus.yaml has it) in "metrics", the single pass in "extra_metrics"."""
    single = evaluation(pooled, volume, hd, False, hd_all, missed)
    if mirrored is None:
        return {"method": method, "fraction": fraction, "fold": fold, "dataset": dataset, "num_labeled_volumes": 7,
                "split_digest": f"split{fold}", "metrics": single}
    return {"method": method, "fraction": fraction, "fold": fold, "dataset": dataset, "num_labeled_volumes": 7,
            "split_digest": f"split{fold}", "metrics": evaluation(mirrored, volume + 0.01, hd - 0.1, True),
            "extra_metrics": [single]}


@pytest.fixture
def results_dir(tmp_path):
    rng = np.random.default_rng(0)
    values = {}
    for method in ("random", "global+local-block"):
        for fraction in (0.05, 0.2):
            for fold in (0, 1, 2):
                pooled, volume, hd = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9), rng.uniform(1, 5)
                mirrored, hd_all, missed = pooled + rng.uniform(0, 0.02), hd + rng.uniform(0, 3), int(rng.integers(3))
                values[(method, fraction, fold)] = (pooled, volume, hd, mirrored, hd_all, missed)
                d = tmp_path / f"fold{fold}" / f"frac{fraction:g}" / method
                d.mkdir(parents=True)
                (d / "result.json").write_text(json.dumps(fake_result(method, fraction, fold, pooled, volume, hd,
                                                                      mirrored=mirrored, hd_all=hd_all,
                                                                      missed=missed)))
    return tmp_path, values


def test_table_matches_the_result_files(results_dir):
    root, values = results_dir
    paths = write_report(root)
    md = paths["markdown"].read_text().split("## Fold ")[0]  # the mean over folds; per-fold tables follow
    headline, detail = md.split("Single pass:")

    def rows(text):
        return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                for line in text.splitlines() if line.startswith("| random") or line.startswith("| global+local-block")}

    def stat(k, method, fraction, digits=3):
        v = np.array([values[(method, fraction, fold)][k] for fold in range(3)], float)
        return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"

    top, low = rows(headline), rows(detail)
    for method in ("random", "global+local-block"):
        for i, fraction in enumerate((0.05, 0.2)):
            cell, mcell = top[method][2 * i : 2 * i + 2]
            assert cell.startswith(stat(0, method, fraction))  # the single pass: the paper's protocol
            assert f"({PAPER_HIPPOCAMPUS[method][fraction]:.3f})" in cell  # the paper's number beside ours
            assert mcell == stat(3, method, fraction)
            vcell, hcell, hall, missed = low[method][4 * i : 4 * i + 4]
            assert vcell == stat(1, method, fraction)
            assert hcell == stat(2, method, fraction, 2) and hall == stat(4, method, fraction, 2)
            assert missed == stat(5, method, fraction, 1)
        assert top[method][-1] == low[method][-1] == "0,1,2"
    # Table 1's order: random before the proposed method
    assert md.index("| random") < md.index("| global+local-block")


def test_csv_and_plot(results_dir):
    root, values = results_dir
    paths = write_report(root, root / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(values)
    for r in rows:
        pooled, volume, hd, mirrored, hd_all, missed = values[(r["method"], float(r["fraction"]), int(r["fold"]))]
        assert float(r["pooled_dice"]) == pytest.approx(pooled, abs=1e-5)
        assert float(r["pooled_dice_mirrored"]) == pytest.approx(mirrored, abs=1e-5)
        assert float(r["hd95_mm"]) == pytest.approx(hd, abs=1e-5)
        assert float(r["hd95_all_mm"]) == pytest.approx(hd_all, abs=1e-5)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_paper_numbers_for_other_datasets(tmp_path):
    d = tmp_path / "fold0" / "frac0.1" / "random"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(fake_result("random", 0.1, 0, 0.5, 0.5, 2.0, dataset="Phantom")))
    md = write_report(tmp_path)["markdown"].read_text()
    assert re.search(r"\| random \| 0\.500 \| - \| 0 \|", md)  # no paper number, no mirrored evaluation
    assert re.search(r"\| random \| 0\.500 \| 2\.00 \| 2\.00 \| 0\.0 \| 0 \|", md)


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


def with_cases(result, case_dice):
    """`result` with per-case metrics: case_dice maps case id -> [Dice per class]."""
    result["metrics"]["cases"] = [{"case": c, "dice": d, "hd95": [1.0] * len(d)} for c, d in case_dice.items()]
    if result.get("extra_metrics"):  # a mirrored evaluation beside: pairs come from the single pass
        result["extra_metrics"][0]["cases"] = result["metrics"].pop("cases")
        result["metrics"]["cases"] = [{"case": c, "dice": [0.0] * len(d)} for c, d in case_dice.items()]
    return result


def test_paired_differences_against_numpy():
    rng = np.random.default_rng(1)
    results, expected = [], []
    for fold in (0, 1):
        cases = [f"case_{fold}_{i:03d}" for i in range(100)]
        ref = {c: rng.uniform(0.5, 0.9, size=2).tolist() for c in cases}
        shift = rng.normal(0.02, 0.05, size=(100, 2))
        other = {c: (np.array(ref[c]) + shift[i]).tolist() for i, c in enumerate(cases)}
        other[cases[0]] = [None, other[cases[0]][1]]  # a class absent from one volume: scored on the other
        ours = {c: float(np.mean([v for v in other[c] if v is not None])) for c in cases}
        expected += [ours[c] - float(np.mean(ref[c])) for c in cases]
        results.append(with_cases(fake_result("random", 0.1, fold, 0.7, 0.7, 2.0), ref))
        # one volume the reference lacks (e.g. an interrupted evaluation) is left out of the pairs
        results.append(with_cases(fake_result("global", 0.1, fold, 0.7, 0.7, 2.0), {**other, "extra": [0.1, 0.1]}))
    d = paired_differences(results)[("global", 0.1)]
    expected = np.array(expected)
    assert d["pairs"] == 200 and d["folds"] == [0, 1]
    assert d["mean"] == pytest.approx(expected.mean(), abs=1e-12)
    assert d["wins"] == int((expected > 0).sum())
    # the bootstrap interval agrees with the normal approximation of the mean's spread
    se = expected.std(ddof=1) / np.sqrt(len(expected))
    lo, hi = d["ci95"]
    assert lo < expected.mean() < hi
    assert lo == pytest.approx(expected.mean() - 1.96 * se, abs=0.15 * se)
    assert hi == pytest.approx(expected.mean() + 1.96 * se, abs=0.15 * se)


def test_paired_section_in_report(tmp_path):
    for method, offset in (("random", 0.0), ("global+local-block", 0.05)):
        d = tmp_path / "fold0" / "frac0.05" / method
        d.mkdir(parents=True)
        cases = {f"c{i}": [0.6 + 0.01 * i + offset, 0.7 + offset] for i in range(10)}
        (d / "result.json").write_text(json.dumps(with_cases(fake_result(method, 0.05, 0, 0.7, 0.7, 2.0,
                                                                          mirrored=0.71), cases)))
    md = write_report(tmp_path)["markdown"].read_text()
    assert "## Against random init" in md
    assert re.search(r"\| global\+local-block \| \+0\.050 \[\+0\.050, \+0\.050\] \| 10/10 \|", md)
    claims = md.split("## The paper's claims")[1]
    assert "| global+local-block - random | 5% | +0.036 | +0.050 [+0.050, +0.050] | 10 (0) | holds |" in claims
    assert "Not run yet for any fraction: global - random;" in claims


def test_paired_differences_refuse_different_splits():
    ref = with_cases(fake_result("random", 0.05, 2, 0.7, 0.7, 2.0), {"a": [0.5, 0.5]})
    other = with_cases(fake_result("global", 0.05, 2, 0.7, 0.7, 2.0), {"a": [0.6, 0.6]})
    other["split_digest"] = "another"
    with pytest.raises(TfSemisegError, match="fold 2, 5%: global and random were evaluated on different splits"):
        paired_differences([ref, other])


@pytest.mark.parametrize("kind,ci,expected", [
    ("above", (0.001, 0.02), "holds"), ("above", (-0.02, -0.001), "reversed"), ("above", (-0.001, 0.02), "not shown"),
    ("on par", (-0.009, 0.009), "holds"), ("on par", (0.001, 0.004), "holds"),
    ("on par", (0.002, 0.02), "differs (higher)"),
    ("on par", (-0.02, -0.011), "differs (lower)"), ("on par", (-0.02, 0.005), "not shown"),
])
def test_verdict(kind, ci, expected):
    assert verdict(kind, ci) == expected


def test_claims_compare_each_method_with_its_own_reference():
    """A claim's row is the paired difference against the claim's reference (not random
    init), with the paper's Table 1 difference beside it; claims without both cells are
    listed as not run."""
    rng = np.random.default_rng(2)
    cases = [f"c{i}" for i in range(30)]
    scores = {m: {c: rng.uniform(0.6, 0.9, size=2).tolist() for c in cases}
              for m in ("random", "global", "global+local-block")}
    scores["global+local-block"] = {c: [v + 0.05 for v in scores["global"][c]] for c in cases}  # 0.05 above global
    results = [with_cases(fake_result(m, 0.2, 0, 0.7, 0.7, 2.0), s) for m, s in scores.items()]
    claims = (Claim("global+local-block", "global", "above", "local adds to global"),
              Claim("global+local-block", "random", "above", "beats random"),
              Claim("local-block", "random", "above", "beats random"))
    table, missing = claims_table(results, PAPER_HIPPOCAMPUS, claims)
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in table.splitlines()[2:]}
    assert rows["global+local-block - global"] == ["20%", "+0.005", "+0.050 [+0.050, +0.050]", "30 (0)", "holds"]
    expected = np.mean([np.mean(scores["global+local-block"][c]) - np.mean(scores["random"][c]) for c in cases])
    assert rows["global+local-block - random"][1] == f"{0.866 - 0.852:+.3f}"
    assert rows["global+local-block - random"][2].startswith(f"{expected:+.3f} [")
    assert missing == [claims[2]]


def test_claims_section_without_random_init(tmp_path):
    """Claims against other references are reported when no random init cell exists."""
    for method, offset in (("global", 0.0), ("global+local-block", 0.02)):
        d = tmp_path / "fold0" / "frac0.1" / method
        d.mkdir(parents=True)
        cases = {f"c{i}": [0.6 + 0.01 * i + offset, 0.7 + offset] for i in range(10)}
        (d / "result.json").write_text(json.dumps(with_cases(fake_result(method, 0.1, 0, 0.7, 0.7, 2.0), cases)))
    md = write_report(tmp_path)["markdown"].read_text()
    assert "## Against random init" not in md
    assert "| global+local-block - global | 10% | +0.015 | +0.020 [+0.020, +0.020] | 10 (0) | holds |" in md
