"""The experiment grid's report: a Markdown table laid out like the paper's Table 1, a CSV
of every cell, a plot of Dice against labeled fraction per method, a paired comparison of
every method with random init on the same test volumes, and each claim of the paper checked
with such paired comparisons."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from tfsemiseg.errors import TfSemisegError
from tfsemiseg.io_utils import atomic_path, atomic_write_text
from tfsemiseg.layout import RESULT, RunLayout
from tfsemiseg.training.plans import METHODS

# Hu et al. 2021, Table 1: pooled Dice on Hippocampus, mean of 4 folds.
PAPER_HIPPOCAMPUS: dict[str, dict[float, float]] = {
    "random": {0.05: 0.788, 0.1: 0.833, 0.2: 0.852},
    "global": {0.05: 0.817, 0.1: 0.834, 0.2: 0.861},
    "global+local-self": {0.05: 0.808, 0.1: 0.843, 0.2: 0.858},
    "mixup": {0.05: 0.818, 0.1: 0.847, 0.2: 0.861},
    "tcsm": {0.05: 0.796, 0.1: 0.838, 0.2: 0.855},
    "local-stride": {0.05: 0.818, 0.1: 0.845, 0.2: 0.860},
    "local-block": {0.05: 0.817, 0.1: 0.843, 0.2: 0.862},
    "global+local-stride": {0.05: 0.822, 0.1: 0.851, 0.2: 0.863},
    "global+local-block": {0.05: 0.824, 0.1: 0.849, 0.2: 0.866},
}
METHOD_ORDER = list(METHODS)


class Claim(NamedTuple):
    """A claim of the paper as a paired comparison: `method` against `reference`, either
    "above" (the method scores higher) or "on par" (within ON_PAR_MARGIN either way)."""

    method: str
    reference: str
    kind: str
    text: str


ON_PAR_MARGIN = 0.01  # per-volume Dice: "on par" holds when the whole 95% interval lies within +-0.01

_SUPERVISED = ("global+local-stride", "global+local-block")
CLAIMS: tuple[Claim, ...] = (
    *(Claim(m, "random", "above", "each method beats random init")
      for m in PAPER_HIPPOCAMPUS if m != "random"),
    *(Claim(m, m.replace("global+", ""), "above", "global contrast adds to supervised local contrast")
      for m in _SUPERVISED),
    *(Claim(m, "global", "above", "supervised local contrast adds to global contrast") for m in _SUPERVISED),
    *(Claim(m, "global+local-self", "above", "supervised local contrast beats the self-supervised one")
      for m in _SUPERVISED),
    Claim("global+local-block", "global+local-stride", "on par", "block division works as well as downsampling"),
    Claim("local-block", "local-stride", "on par", "block division works as well as downsampling"),
)


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every test-set result file under `results_dir`."""
    paths = list(RunLayout(results_dir).results())
    if not paths:
        raise TfSemisegError(f"{results_dir}: no {RESULT} found (run `experiment` or `run` first)")
    results = []
    for p in paths:
        try:
            results.append(json.loads(p.read_text()))
        except json.JSONDecodeError as exc:
            raise TfSemisegError(f"{p}: not valid JSON ({exc.msg})") from None
    return results


def evaluation_of(result: dict[str, Any], mirror: bool) -> Optional[dict[str, Any]]:
    """The test evaluation of a result with test-time mirroring on or off (None if not run).

    A result holds the configured evaluation in "metrics" and, since both are computed,
    the other setting in "extra_metrics"; older results name the setting only in their config.
    """
    default = bool(result.get("config", {}).get("evaluation", {}).get("mirror", False))
    for m in [result["metrics"], *result.get("extra_metrics", [])]:
        if bool(m.get("mirror", default)) == mirror:
            return m
    return None


METRICS = ("pooled_dice", "pooled_dice_mirrored", "volume_dice", "hd95_mm", "hd95_all_mm", "missed")


def _cell_values(result: dict[str, Any]) -> dict[str, Optional[float]]:
    """The single-pass figures of a result (the paper's protocol), and mirrored pooled Dice."""
    m = evaluation_of(result, False)
    mirrored = evaluation_of(result, True)
    hd = m["hd95_mm"] if m else {}
    return {
        "pooled_dice": m["pooled_dice"]["mean"] if m else None,
        "pooled_dice_mirrored": mirrored["pooled_dice"]["mean"] if mirrored else None,
        "volume_dice": m["volume_dice"]["mean_over_classes"] if m else None,
        "hd95_mm": hd.get("mean_over_classes"),
        "hd95_all_mm": hd.get("mean_all_over_classes"),
        "missed": float(sum(c.get("missing_prediction", 0) for c in hd["status_counts"])) if "status_counts" in hd else None,
    }


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """(method, fraction) -> mean, std and folds of each metric over folds."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        cells[(r["method"], float(r["fraction"]))].append(r)
    out = {}
    for key, rs in cells.items():
        stats: dict[str, Any] = {"folds": sorted(r["fold"] for r in rs)}
        for metric in METRICS:
            vals = np.array([v for r in rs if (v := _cell_values(r)[metric]) is not None], float)
            stats[metric] = (float(vals.mean()), float(vals.std()) if len(vals) > 1 else float("nan")) if len(vals) else None
        out[key] = stats
    return out


def _fmt(stat: Optional[tuple[float, float]], digits: int = 3) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _ordered_methods(keys) -> list[str]:
    """The methods of (method, fraction) keys: Table 1's order, then any others sorted."""
    present = {m for m, _ in keys}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def markdown_table(agg: dict[tuple[str, float], dict[str, Any]], paper: Optional[dict] = None) -> str:
    """Table 1: single-pass pooled Dice with the paper's number, and with test-time mirroring."""
    def cells(s, m, f):
        ref = (paper or {}).get(m, {}).get(f)
        ref_txt = f" ({ref:.3f})" if ref is not None else ""
        return [(_fmt(s["pooled_dice"]) if s else "-") + ref_txt, _fmt(s["pooled_dice_mirrored"]) if s else "-"]

    return _table(agg, "pooled Dice (paper) | mirrored", 2, cells)


def detail_table(agg: dict[tuple[str, float], dict[str, Any]]) -> str:
    """Per-volume Dice, HD95 over the volumes where both masks exist, HD95 over every
    volume (a miss counted as the volume's diagonal) and the classes missed, single pass."""
    def cells(s, m, f):
        if not s:
            return ["-"] * 4
        return [_fmt(s["volume_dice"]), _fmt(s["hd95_mm"], 2), _fmt(s["hd95_all_mm"], 2), _fmt(s["missed"], 1)]

    return _table(agg, "per-volume Dice | HD95 mm | HD95 mm, all volumes | classes missed", 4, cells)


def _table(agg, heading: str, width: int, cells) -> str:
    fractions = sorted({f for _, f in agg})
    methods = _ordered_methods(agg)
    head = "| method | " + " | ".join(f"{100 * f:g}%: {heading}" for f in fractions) + " | folds |"
    lines = [head, "|---|" + "---|" * (width * len(fractions)) + "---|"]
    for m in methods:
        row, folds = [], {}
        for f in fractions:
            s = agg.get((m, f))
            row += cells(s, m, f)
            if s:
                folds[f] = ",".join(map(str, s["folds"]))
        lines.append(f"| {m} | " + " | ".join(row) + f" | {_folds_text(folds)} |")
    return "\n".join(lines)


def _folds_text(folds: dict[float, str]) -> str:
    """'0,1' when every fraction of a row has the same folds, else '5%: 0,1; 10%: 0'."""
    if len(set(folds.values())) <= 1:
        return next(iter(folds.values()), "")
    return "; ".join(f"{100 * f:g}%: {v}" for f, v in sorted(folds.items()))


def results_csv(results: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "fraction", "fold", "labeled_volumes", *METRICS, "split_digest"])
    for r in sorted(results, key=lambda r: (r["method"], r["fraction"], r["fold"])):
        v = _cell_values(r)
        w.writerow([r["method"], r["fraction"], r["fold"], r["num_labeled_volumes"],
                    *("" if v[k] is None else f"{v[k]:.5f}" for k in METRICS), r["split_digest"]])
    return buf.getvalue()


def plot(agg: dict[tuple[str, float], dict[str, Any]], path: Path, paper: Optional[dict] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in agg)]
    for i, m in enumerate(methods):
        colour = plt.cm.tab10(i % 10)
        fs = sorted(f for mm, f in agg if mm == m and agg[(mm, f)]["pooled_dice"])
        means = [agg[(m, f)]["pooled_dice"][0] for f in fs]
        stds = [np.nan_to_num(agg[(m, f)]["pooled_dice"][1]) for f in fs]
        ax.errorbar([100 * f for f in fs], means, yerr=stds, marker="o", color=colour, label=m, capsize=3)
        if paper and m in paper:
            pf = sorted(paper[m])
            ax.plot([100 * f for f in pf], [paper[m][f] for f in pf], ls="--", color=colour, alpha=0.5)
    ax.set_xlabel("labeled train volumes (%)")
    ax.set_ylabel("pooled test Dice")
    ax.set_title("Dice against labeled fraction (dashed: paper)" if paper else "Dice against labeled fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _case_dice(result: dict[str, Any]) -> dict[str, float]:
    """case id -> Dice averaged over the classes scored in that volume."""
    out = {}
    for case in (evaluation_of(result, False) or {}).get("cases", []):
        vals = [v for v in case.get("dice", []) if v is not None]
        if vals:
            out[case["case"]] = float(np.mean(vals))
    return out


def bootstrap_ci(diffs: np.ndarray, level: float = 0.95, resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (shape [n]), resampling its entries."""
    diffs = np.asarray(diffs, float)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_differences(results: list[dict[str, Any]], reference: str = "random",
                       methods: Optional[set[str]] = None) -> dict[tuple[str, float], dict[str, Any]]:
    """(method, fraction) -> per-volume Dice of `method` minus `reference` on the same test
    volumes, for every method (or those of `methods`).

    Volumes are paired by (fold, case): both runs of a fold must share its split (same
    split_digest), else the pairing would be meaningless and this raises. Returns the mean
    difference, its 95% bootstrap interval over the pairs, the number of pairs, how many the
    method wins, and the folds used. Results without per-case metrics are left out.
    """
    by_cell = {(r["method"], float(r["fraction"]), int(r["fold"])): r for r in results}
    diffs: dict[tuple[str, float], list[float]] = defaultdict(list)
    folds: dict[tuple[str, float], set[int]] = defaultdict(set)
    for (method, fraction, fold), r in sorted(by_cell.items()):
        ref = by_cell.get((reference, fraction, fold))
        if method == reference or ref is None or (methods is not None and method not in methods):
            continue
        if r.get("split_digest") != ref.get("split_digest"):
            raise TfSemisegError(
                f"fold {fold}, {100 * fraction:g}%: {method} and {reference} were evaluated on different splits "
                f"(split_digest {r.get('split_digest')} vs {ref.get('split_digest')}); re-run one of them on the same splits")
        a, b = _case_dice(r), _case_dice(ref)
        common = sorted(a.keys() & b.keys())
        if common:
            diffs[(method, fraction)] += [a[c] - b[c] for c in common]
            folds[(method, fraction)].add(fold)
    out = {}
    for key, values in diffs.items():
        d = np.array(values)
        out[key] = {"mean": float(d.mean()), "ci95": bootstrap_ci(d), "pairs": len(d),
                    "wins": int((d > 0).sum()), "folds": sorted(folds[key])}
    return out


def verdict(kind: str, ci95: tuple[float, float], margin: float = ON_PAR_MARGIN) -> str:
    """Whether a claim holds given the 95% interval of the paired difference (method minus
    reference): "above" holds when the interval is above 0 and is "reversed" when below it;
    "on par" holds when the interval lies within +-margin and "differs (higher)" or "differs
    (lower)" when it lies outside it on one side of 0; otherwise "not shown"."""
    lo, hi = ci95
    if kind == "above":
        return "holds" if lo > 0 else "reversed" if hi < 0 else "not shown"
    if kind == "on par":
        if -margin <= lo and hi <= margin:
            return "holds"
        return "differs (higher)" if lo > 0 else "differs (lower)" if hi < 0 else "not shown"
    raise ValueError(f"kind must be 'above' or 'on par', got {kind!r}")


def claims_table(results: list[dict[str, Any]], paper: Optional[dict] = None,
                 claims: tuple[Claim, ...] = CLAIMS) -> tuple[str, list[Claim]]:
    """(Markdown table of each claim at each fraction both cells have run, claims with no
    such fraction yet). A row: the paper's difference of pooled Dice (Table 1), ours as a
    paired per-volume difference with its 95% interval, and the verdict."""
    by_reference = {ref: paired_differences(results, ref, {c.method for c in claims if c.reference == ref})
                    for ref in {c.reference for c in claims}}
    lines = ["| claim | method - reference | fraction | paper: pooled Dice difference | "
             "ours: per-volume difference [95% CI] | pairs (folds) | verdict |",
             "|---|---|---|---|---|---|---|"]
    missing = []
    for claim in claims:
        rows = sorted((f, d) for (m, f), d in by_reference[claim.reference].items() if m == claim.method)
        if not rows:
            missing.append(claim)
        for f, d in rows:
            ours, theirs = (paper or {}).get(claim.method, {}).get(f), (paper or {}).get(claim.reference, {}).get(f)
            paper_cell = f"{ours - theirs:+.3f}" if ours is not None and theirs is not None else "-"
            lo, hi = d["ci95"]
            folds = ",".join(map(str, d["folds"]))
            lines.append(f"| {claim.text} | {claim.method} - {claim.reference} | {100 * f:g}% | {paper_cell} | "
                         f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {d['pairs']} ({folds}) | "
                         f"{verdict(claim.kind, d['ci95'])} |")
    return "\n".join(lines), missing


def paired_table(diffs: dict[tuple[str, float], dict[str, Any]]) -> str:
    fractions = sorted({f for _, f in diffs})
    methods = _ordered_methods(diffs)
    lines = ["| method | " + " | ".join(f"{100 * f:g}%: difference [95% CI] | wins" for f in fractions) + " |",
             "|---|" + "---|---|" * len(fractions)]
    for m in methods:
        cells = []
        for f in fractions:
            d = diffs.get((m, f))
            if d is None:
                cells += ["-", "-"]
                continue
            lo, hi = d["ci95"]
            cells += [f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]", f"{d['wins']}/{d['pairs']}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results_dir: Path, out_dir: Optional[Path] = None) -> dict[str, Path]:
    """report.md, results.csv and dice_vs_fraction.png in `out_dir` (default: results_dir)."""
    results = load_results(results_dir)
    out_dir = Path(out_dir or results_dir)
    paper = PAPER_HIPPOCAMPUS if all(r.get("dataset", "").lower() == "hippocampus" for r in results) else None
    agg = aggregate(results)
    md = ["# Results", "", f"{len(results)} result files under `{results_dir}`. Cells: mean ± std over folds "
          "of the test-set pooled Dice in a single pass (the paper's metric; the paper's number in brackets) "
          "and with test-time mirroring. The last column says which folds each cell averages.", "",
          markdown_table(agg, paper), "",
          "Single pass: mean per-volume Dice at native resolution; mean HD95 over the volumes where "
          "both prediction and label hold the class; mean HD95 over every volume holding the class in "
          "either, a missed class counted as the volume's diagonal in mm; classes missed (present in the "
          "label, absent from the prediction) per fold, summed over classes.", "", detail_table(agg), ""]
    diffs = paired_differences(results)
    if diffs:
        md += ["## Against random init, volume by volume", "",
               "Per-volume Dice (mean over classes) minus random init's on the same test volume of the "
               "same fold, over every fold both have run; 95% percentile bootstrap interval over the "
               "volume pairs (10,000 resamples); wins: volumes where the method scores higher. The "
               "interval covers only which volumes were tested, not the run-to-run spread of training "
               "(the fold tables show that one is often larger), and a volume can sit in the test set "
               "of more than one fold.", "", paired_table(diffs), ""]
    table, missing = claims_table(results, paper)
    if len(missing) < len(CLAIMS):
        md += ["## The paper's claims", "",
               "Each claim as a paired comparison on the same test volumes, computed as the comparison "
               "with random init is, with the claim's reference in its place. \"beats\" and \"adds to\" "
               "claims hold when the whole 95% interval is above 0 and are reversed when it is below 0. "
               f"\"works as well as\" holds when the interval lies within ±{ON_PAR_MARGIN:g}, and differs "
               "(higher or lower: the method against its reference) when it lies outside that on one side "
               "of 0. Otherwise the claim is not shown by these folds. The paper's column is the difference "
               "of its Table 1 means (pooled Dice over 4 folds), not a paired one.", "", table, ""]
        if missing:
            md += ["Not run yet for any fraction: " + "; ".join(f"{c.method} - {c.reference}" for c in missing)
                   + ".", ""]
    folds = sorted({r["fold"] for r in results})
    if len(folds) > 1:  # nnU-Net style: each fold on its own as well
        for k in folds:
            md += [f"## Fold {k}", "", markdown_table(aggregate([r for r in results if r["fold"] == k]), paper), ""]
    paths = {"markdown": out_dir / "report.md", "csv": out_dir / "results.csv", "plot": out_dir / "dice_vs_fraction.png"}
    atomic_write_text(paths["markdown"], "\n".join(md))
    atomic_write_text(paths["csv"], results_csv(results))
    plot(agg, paths["plot"], paper)
    return paths
