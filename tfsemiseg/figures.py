"""The paper's figures for finished runs: segmentation overlays (Fig. 3) and a t-SNE of
decoder embeddings (Fig. 4), each written as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tfsemiseg.config import Config
from tfsemiseg.data.prepared import PreparedData, evaluation_volumes
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.evaluation import _PALETTE, colour_overlay
from tfsemiseg.inference import predict_probabilities
from tfsemiseg.io_utils import atomic_path
from tfsemiseg.layout import Cell, RunLayout
from tfsemiseg.models.transfer import load_segmenter
from tfsemiseg.models.unet import UNet


def _load(cfg: Config, data: PreparedData, run: RunLayout, cell: Cell) -> UNet:
    weights = run.weights(cell, "finetune")
    if not weights.is_file():
        raise TfSemisegError(f"{weights}: missing; run method {cell.method} first")
    return load_segmenter(cfg, weights, len(data.class_names))


def _same_split(cells: Sequence[Cell]) -> tuple[int, float]:
    """The fold and fraction every cell of one figure shares."""
    if not cells or len({(c.fold, c.fraction) for c in cells}) != 1:
        raise TfSemisegError("a figure compares methods on one fold and one labeled fraction")
    return cells[0].fold, cells[0].fraction


def _test_slices(data: PreparedData, fold: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n test slices with the most foreground, from different volumes where possible."""
    picks = []
    for vol in evaluation_volumes(data, data.split(fold), "test"):
        fg = (vol.label > 0).reshape(len(vol.label), -1).sum(1)
        i = int(fg.argmax())
        picks.append((fg[i], vol.image[i], vol.label[i]))
    picks.sort(key=lambda p: -p[0])
    picks = picks[:n]
    return np.stack([p[1] for p in picks]), np.stack([p[2] for p in picks])


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def overlay_figure(cfg: Config, data: PreparedData, run: RunLayout, cells: Sequence[Cell], path: Path,
                   num_slices: int = 4) -> Path:
    """Rows: test slices; columns: input, ground truth, each method's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fold, fraction = _same_split(cells)
    methods = [c.method for c in cells]
    images, labels = _test_slices(data, fold, num_slices)
    k = len(data.class_names)
    preds = {c.method: predict_probabilities(_load(cfg, data, run, c).segmenter, images).argmax(-1) for c in cells}
    cols = ["input", "ground truth"] + methods
    fig, axes = plt.subplots(len(images), len(cols), figsize=(1.9 * len(cols), 1.9 * len(images)), squeeze=False)
    for r in range(len(images)):
        panels = [np.repeat(images[r, ..., None], 3, -1).clip(0, 1), colour_overlay(images[r], labels[r], k)]
        panels += [colour_overlay(images[r], preds[m][r], k) for m in methods]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=8)
    fig.suptitle(f"test slices, fold {fold}, {100 * fraction:g}% labeled", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def tsne(x: np.ndarray, perplexity: float = 30.0, iterations: int = 500, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of x [N, D] to [N, 2], in numpy."""
    rng = np.random.default_rng(seed)
    x = (x - x.mean(0)) / (x.std() + 1e-8)
    d2 = np.square(x[:, None, :] - x[None, :, :]).sum(-1)
    n = len(x)
    p = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):  # binary search for each point's precision
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d2[i], i)
        for _ in range(50):
            w = np.exp(-(di - di.min()) * beta)
            s = w.sum()
            h = np.log(s) + beta * np.sum((di - di.min()) * w) / s
            if abs(h - target) < 1e-5:
                break
            if h > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    p = (p + p.T) / (2 * n)
    p = np.maximum(p, 1e-12)
    y = rng.normal(0, 1e-4, (n, 2))
    velocity = np.zeros_like(y)
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        num = 1.0 / (1.0 + np.square(y[:, None] - y[None]).sum(-1))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exaggeration * p - q) * num
        grad = 4.0 * (np.diag(pq.sum(1)) - pq) @ y
        momentum = 0.5 if it < 250 else 0.8
        velocity = momentum * velocity - 200.0 * grad
        y += velocity
    return y


def tsne_figure(cfg: Config, data: PreparedData, run: RunLayout, cells: Sequence[Cell], path: Path,
                points: int = 900, seed: int = 0) -> Path:
    """t-SNE of decoder features (the input of the last 1x1 conv) of test pixels, by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fold, fraction = _same_split(cells)
    images, labels = _test_slices(data, fold, 8)
    flat_labels = labels.reshape(-1)
    rng = np.random.default_rng(seed)
    k = len(data.class_names)
    per_class = points // k
    idx = np.concatenate([rng.choice(np.flatnonzero(flat_labels == c), min(per_class, int((flat_labels == c).sum())),
                                     replace=False) for c in range(k) if (flat_labels == c).any()])
    fig, axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells), 3.6), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        unet = _load(cfg, data, run, cell)
        feats = unet.decoder_features.predict(images[..., None], verbose=0)
        emb = tsne(feats.reshape(-1, feats.shape[-1])[idx], seed=seed)
        for c in range(k):
            sel = flat_labels[idx] == c
            ax.scatter(emb[sel, 0], emb[sel, 1], s=4, color=_PALETTE[c % len(_PALETTE)] if c else (0.6, 0.6, 0.6),
                       label=data.class_names[c])
        ax.set_title(cell.method, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, markerscale=3)
    fig.suptitle(f"t-SNE of decoder features, test pixels, fold {fold}, {100 * fraction:g}% labeled", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
