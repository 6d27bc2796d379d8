"""The text summary `prepare` prints: volumes, slices and label distribution per split part."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tfsemiseg.config import Config
from tfsemiseg.data.prepared import PreparedData, label_distribution, prepare_dataset
from tfsemiseg.layout import RunLayout


def summarise(data: PreparedData, run_root: Path, fractions: Sequence[float]) -> str:
    names = data.class_names
    lines = [
        f"dataset {data.index.name}: {len(data.index.labeled)} labeled volumes, "
        f"{len(data.index.unlabeled)} unlabeled; classes {', '.join(f'{i}={n}' for i, n in enumerate(names))}",
        f"cache: {data.built} volumes preprocessed now, {len(data.volumes) - data.built} reused ({data.seconds:.1f} s)",
        f"splits: {RunLayout(run_root).splits} ({len(data.folds)} folds)",
        "",
    ]
    header = f"{'fold':>4} {'part':<16} {'volumes':>7} {'slices':>7}  " + " ".join(f"{n[:10]:>10}" for n in names)
    lines.append(header)
    lines.append("-" * len(header))
    for split in data.folds:
        parts = [("train", split.train), ("val", split.val), ("test", split.test)]
        parts += [(f"labeled {f:g}", split.labeled(f)) for f in fractions]
        if split.extra_unlabeled:
            parts.append(("extra unlabeled", split.extra_unlabeled))
        for part, ids in parts:
            vols = [data.volumes[c] for c in ids]
            dist = label_distribution(vols, len(names))
            slices = sum(v.num_slices for v in vols)
            cells = " ".join(f"{100 * p:>9.2f}%" for p in dist) if part != "extra unlabeled" else ""
            lines.append(f"{split.fold:>4} {part:<16} {len(ids):>7} {slices:>7}  {cells}")
    return "\n".join(lines)


def prepare_and_summarise(cfg: Config, data_dir: Path, run_root: Path, fractions: Sequence[float]) -> str:
    data = prepare_dataset(cfg, data_dir, run_root)
    return summarise(data, run_root, fractions)
