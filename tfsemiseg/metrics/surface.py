"""95th-percentile symmetric Hausdorff distance (HD95) in millimetres.

Conventions (the same as MONAI ``compute_hausdorff_distance(percentile=95)``):

* **Surface**: the surface of a binary mask is ``mask & ~binary_erosion(mask)``
  with scipy's default structuring element, i.e. *face connectivity*
  (``generate_binary_structure(ndim, 1)``: 6-neighbourhood in 3D) and voxels
  outside the array counted as background (so mask voxels on the array border
  are surface voxels). ``connectivity=ndim`` (full, 26-neighbourhood in 3D) can
  be asked for; every default here is face connectivity.
* **Distances**: for every surface voxel of P, the Euclidean distance in mm to
  the nearest surface voxel of G, computed as
  ``distance_transform_edt(~surface_G, sampling=spacing)`` read at P's surface
  voxels; and the same from G to P. ``spacing`` is the voxel size in mm along
  each array axis, in array-axis order.
* **Percentile**: HD95 is the *maximum of the two directed 95th percentiles*,
  ``max(p95(d(P→G)), p95(d(G→P)))``, with ``np.percentile``'s default
  (linear interpolation) method. This is MONAI's definition. (medpy's ``hd95``
  instead takes the 95th percentile of the union of both distance sets; the two
  generally differ, and this module does not use medpy's.)

Empty-mask rules, per foreground class of one volume:

* class absent from both prediction and label: value NaN, status ``"absent"``;
  it is excluded from every summary and not counted as a failure;
* class present in the label but absent from the prediction: HD95 undefined,
  value NaN, status ``"missing_prediction"``;
* class present in the prediction but absent from the label: value NaN, status
  ``"missing_label"``;
* both present: the distance, status ``"ok"``.

Undefined values are never replaced by 0: :func:`summarise_hd95` averages over
``"ok"`` volumes only (``mean``) and counts each status separately, so missed
structures stay visible in the report. Because that mean improves when a model
misses more, it also gives ``mean_all``: the mean over every volume where the class
is in the label or the prediction, a miss (``"missing_prediction"`` or
``"missing_label"``) counting as the volume's diagonal in mm, the largest distance
two voxels of the volume can have (:data:`MISS_CONVENTION`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from tfsemiseg.metrics._checks import check_label_maps

__all__ = [
    "STATUSES",
    "STATUS_ABSENT",
    "STATUS_MISSING_LABEL",
    "STATUS_MISSING_PREDICTION",
    "STATUS_OK",
    "HD95Result",
    "hausdorff_distance",
    "hd95_per_class",
    "summarise_hd95",
    "surface_distances",
    "surface_voxels",
]

STATUS_OK = "ok"
STATUS_ABSENT = "absent"
STATUS_MISSING_PREDICTION = "missing_prediction"
STATUS_MISSING_LABEL = "missing_label"
STATUSES: tuple[str, ...] = (STATUS_OK, STATUS_ABSENT, STATUS_MISSING_PREDICTION, STATUS_MISSING_LABEL)
MISS_CONVENTION = "a missed class (in label or prediction only) counts as the volume's diagonal in mm"


class HD95Result(NamedTuple):
    """HD95 of each foreground class of one volume.

    Attributes:
        values: float64 array [K-1], HD95 in mm of classes 1..K-1; NaN unless the
            status is ``"ok"``.
        status: list of K-1 strings, one of :data:`STATUSES` per class.
        diagonal: the volume's diagonal in mm, ``sqrt(sum((n_i * s_i)^2))`` over its
            axes' sizes n_i and spacings s_i: the distance a miss counts as in
            ``mean_all`` (NaN when unknown).
    """

    values: np.ndarray
    status: list[str]
    diagonal: float = float("nan")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(sp)} entries for a {ndim}D array")
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be finite and positive, got {tuple(spacing)}")
    return sp


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be in [1, {ndim}] for a {ndim}D array, got {connectivity}")
    return generate_binary_structure(ndim, connectivity)


def surface_voxels(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Surface voxels of a binary mask: the mask minus its binary erosion.

    Args:
        mask: binary mask, any shape [D1, ..., Dn] (nonzero = inside).
        connectivity: 1 = face connectivity (scipy's default structure), up to
            ``n`` = full connectivity.

    Returns:
        bool array [D1, ..., Dn], True on surface voxels. Voxels outside the array
        count as background.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim == 0:
        raise ValueError("mask must have at least one axis")
    eroded = binary_erosion(mask, structure=_structure(mask.ndim, connectivity), border_value=0)
    return mask & ~eroded


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``a | b`` (a speed-up only).

    Exact: outside the box both masks are background, as the erosion's
    ``border_value=0`` assumes, and every surface voxel lies inside the box.
    """
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hits = np.flatnonzero(union.any(axis=other))
        slices.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return a[tuple(slices)], b[tuple(slices)]


def surface_distances(
    pred_mask: np.ndarray,
    label_mask: np.ndarray,
    spacing: Sequence[float],
    connectivity: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty binary masks.

    Args:
        pred_mask: binary mask [D1, ..., Dn], non-empty.
        label_mask: binary mask, same shape, non-empty.
        spacing: voxel size in mm along each of the n array axes.
        connectivity: structuring-element connectivity for the surfaces.

    Returns:
        ``(pred_to_label, label_to_pred)``: float64 arrays [N_P] and [N_G], the
        distance from each surface voxel of the prediction to the nearest surface
        voxel of the label, and vice versa (N_* = number of surface voxels).
    """
    p = np.asarray(pred_mask).astype(bool, copy=False)
    g = np.asarray(label_mask).astype(bool, copy=False)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != label shape {g.shape}")
    sp = _check_spacing(spacing, p.ndim)
    if not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    p, g = _crop_to_union(p, g)
    surf_p = surface_voxels(p, connectivity)
    surf_g = surface_voxels(g, connectivity)
    to_g = distance_transform_edt(~surf_g, sampling=sp)
    to_p = distance_transform_edt(~surf_p, sampling=sp)
    return np.asarray(to_g[surf_p], dtype=np.float64), np.asarray(to_p[surf_g], dtype=np.float64)


def hausdorff_distance(
    pred_mask: np.ndarray,
    label_mask: np.ndarray,
    spacing: Sequence[float],
    percentile: float = 95.0,
    connectivity: int = 1,
) -> float:
    """Symmetric percentile Hausdorff distance in mm between two binary masks.

    ``max(q(d(P→G)), q(d(G→P)))`` with ``q`` = ``np.percentile(·, percentile)``
    (linear interpolation); ``percentile=100`` gives the classic Hausdorff
    distance.

    Args:
        pred_mask: binary mask [D1, ..., Dn].
        label_mask: binary mask, same shape.
        spacing: voxel size in mm along each array axis.
        percentile: in [0, 100].
        connectivity: structuring-element connectivity for the surfaces.

    Returns:
        The distance in mm; NaN if either mask is empty (undefined).
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    p = np.asarray(pred_mask).astype(bool, copy=False)
    g = np.asarray(label_mask).astype(bool, copy=False)
    if not p.any() or not g.any():
        if p.shape != g.shape:
            raise ValueError(f"pred shape {p.shape} != label shape {g.shape}")
        _check_spacing(spacing, p.ndim)
        return float("nan")
    d_pg, d_gp = surface_distances(p, g, spacing, connectivity)
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def hd95_per_class(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    num_classes: int,
    connectivity: int = 1,
) -> HD95Result:
    """HD95 in mm of each foreground class of one volume.

    Args:
        pred: integer predicted label map of one volume, [X, Y, Z] (any number of
            axes is accepted).
        label: integer ground-truth label map, same shape as ``pred``.
        spacing: voxel size in mm along each array axis, e.g. (sx, sy, sz).
        num_classes: K, the number of classes including background (label 0).
        connectivity: structuring-element connectivity for the surfaces
            (1 = face connectivity, the default and MONAI's).

    Returns:
        :class:`HD95Result` ``(values [K-1] float64, status list[str] of K-1)``,
        see the module docstring for the empty-mask rules.
    """
    pred, label = check_label_maps(pred, label, num_classes)
    _check_spacing(spacing, pred.ndim)
    values = np.full(num_classes - 1, np.nan, dtype=np.float64)
    status: list[str] = []
    for c in range(1, num_classes):
        p = pred == c
        g = label == c
        has_p, has_g = bool(p.any()), bool(g.any())
        if not has_p and not has_g:
            status.append(STATUS_ABSENT)
        elif not has_p:
            status.append(STATUS_MISSING_PREDICTION)
        elif not has_g:
            status.append(STATUS_MISSING_LABEL)
        else:
            values[c - 1] = hausdorff_distance(p, g, spacing, 95.0, connectivity)
            status.append(STATUS_OK)
    diagonal = float(np.sqrt(sum((n * sp) ** 2 for n, sp in zip(pred.shape, spacing))))
    return HD95Result(values=values, status=status, diagonal=diagonal)


def _class_summary(results: Sequence[HD95Result], c: int) -> tuple[float, float, float, int, dict[str, int], float]:
    """(mean, std, median, count) over the ``"ok"`` volumes, the status tally and
    ``mean_all`` of class index ``c`` (see :func:`summarise_hd95`)."""
    tally = dict.fromkeys(STATUSES, 0)
    ok, every = [], []
    for r in results:
        s = r.status[c]
        if s not in tally:
            raise ValueError(f"unknown HD95 status {s!r}")
        tally[s] += 1
        if s == STATUS_OK:
            ok.append(float(r.values[c]))
        if s != STATUS_ABSENT:
            every.append(float(r.values[c]) if s == STATUS_OK else float(r.diagonal))
    mean_all = float(np.mean(every)) if every else float("nan")
    arr = np.asarray(ok, dtype=np.float64)
    if not arr.size:
        return float("nan"), float("nan"), float("nan"), 0, tally, mean_all
    return float(arr.mean()), float(arr.std()), float(np.median(arr)), int(arr.size), tally, mean_all


def summarise_hd95(results: Sequence[HD95Result]) -> dict[str, Any]:
    """Per-class HD95 statistics over volumes, with the empty-mask statuses counted.

    Only volumes whose status for the class is ``"ok"`` enter the statistics.

    Args:
        results: one :class:`HD95Result` per volume, all with K-1 classes.

    Returns:
        A dict with

        * ``mean``, ``std`` (population, ddof=0), ``median``: lists of K-1 floats
          over the ``"ok"`` volumes (NaN for a class with none);
        * ``count``: list of K-1 ints, the number of ``"ok"`` volumes per class;
        * ``status_counts``: list of K-1 dicts mapping every status in
          :data:`STATUSES` to its number of volumes;
        * ``mean_over_classes``: float, mean of ``mean`` over classes that are not
          NaN;
        * ``mean_all``: list of K-1 floats, the mean over every volume whose
          status is not ``"absent"``, a miss counted as the volume's diagonal
          (:data:`MISS_CONVENTION`); NaN for a class with no such volume;
        * ``mean_all_over_classes``: float, mean of ``mean_all`` over classes
          that are not NaN;
        * ``miss_convention``: the text of :data:`MISS_CONVENTION`;
        * ``num_volumes``: int, ``len(results)``.
    """
    if len(results) == 0:
        raise ValueError("summarise_hd95 needs at least one volume")
    k = len(results[0].status)
    if any(len(r.status) != k or np.asarray(r.values).shape != (k,) for r in results):
        raise ValueError("all results must have the same number of classes")
    per_class = [_class_summary(results, c) for c in range(k)]
    means, stds, medians, counts, status_counts, means_all = ([s[i] for s in per_class] for i in range(6))
    finite_means = [m for m in means if not np.isnan(m)]
    finite_all = [m for m in means_all if not np.isnan(m)]
    return {
        "mean": means,
        "std": stds,
        "median": medians,
        "count": counts,
        "status_counts": status_counts,
        "mean_over_classes": float(np.mean(finite_means)) if finite_means else float("nan"),
        "mean_all": means_all,
        "mean_all_over_classes": float(np.mean(finite_all)) if finite_all else float("nan"),
        "miss_convention": MISS_CONVENTION,
        "num_volumes": len(results),
    }
