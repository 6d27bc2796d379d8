"""MODEL_CARD.md for an exported model, written from its metadata.json."""

from __future__ import annotations

from typing import Any, Optional


def _num(v: Optional[float], fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _metrics_table(m: dict[str, Any], classes: list[str]) -> str:
    pooled, vol, hd = m.get("pooled_dice", {}), m.get("volume_dice", {}), m.get("hd95_mm", {})
    rows = []
    for i, c in enumerate(classes):
        def pick(d: dict, key: str, fmt: str = "{:.3f}") -> str:
            vals = d.get(key) or []
            return _num(vals[i] if i < len(vals) else None, fmt)
        rows.append(f"| {c} | {pick(pooled, 'per_class')} | {pick(vol, 'mean')} ± {pick(vol, 'std')} | "
                    f"{pick(hd, 'mean', '{:.2f}')} ± {pick(hd, 'std', '{:.2f}')} |")
    return "\n".join([
        "| class | pooled Dice | per-volume Dice (mean ± std) | HD95 mm (mean ± std) |",
        "|---|---|---|---|",
        *rows,
        f"| mean | {_num(pooled.get('mean'))} | {_num(vol.get('mean_over_classes'))} | "
        f"{_num(hd.get('mean_over_classes'), '{:.2f}')} |",
    ])


def _metrics_section(meta: dict[str, Any], classes: list[str]) -> str:
    parts = []
    for key, what in (("val_metrics", "validation"), ("test_metrics", "test")):
        m = meta.get(key)
        if m:
            parts.append(f"### {what.capitalize()} part ({m.get('num_volumes', 'n/a')} volumes of the split's "
                         f"{what} part)\n\n{_metrics_table(m, classes)}\n")
    if parts:
        return "\n".join(parts)
    if meta.get("fold") is None:
        return "No held-out part is shared by every run of this model; see each member's test metrics below.\n"
    return "Not evaluated as one model (export with --data to do so); see each member's test metrics below.\n"


def _labeled_cases(meta: dict[str, Any]) -> str:
    cases = meta.get("labeled_cases")
    return f"\n- Labeled cases (their labels are the only ones used): {', '.join(cases)}." if cases else ""


def _members_section(meta: dict[str, Any]) -> str:
    members = meta.get("members")
    if not members:
        return ""

    def own(m: dict[str, Any]) -> str:  # the member's own evaluation: test, else validation while choosing
        for part, tag in (("test", ""), ("val", " (validation)")):
            if m.get(f"{part}_metrics"):
                return _num(m[f"{part}_metrics"].get("pooled_dice", {}).get("mean")) + tag
        return "n/a"

    axes = meta.get("member_slice_axes")
    axis = (lambda i: f" {axes[i]} |") if axes else (lambda i: "")
    rows = [f"| `{m['method']}` | {m['fold']} | {m['labeled_fraction']:g} | {m.get('seed')} |{axis(i)} {own(m)} | "
            f"`{m['run']}` |" for i, m in enumerate(members)]
    return ("\n## Members\nThe model averages the softmax of these runs inside the graph:\n\n"
            f"| method | fold | labeled fraction | seed |{' slicing axis |' if axes else ''} its own pooled Dice "
            f"(test, else validation) | run folder |\n|---|---|---|---|{'---|' if axes else ''}---|---|\n"
            + "\n".join(rows) + "\n")


def model_card(meta: dict[str, Any], name: str, notes: str = "") -> str:
    """Markdown: data and licence, split and fraction, config, validation and test metrics,
    members of an ensemble, use and limits."""
    cfg = meta["training_config"]
    classes = meta["class_names"][1:]
    model = cfg["model"]
    licence = ("CC-BY-SA 4.0 (Medical Segmentation Decathlon, Task04 Hippocampus, Vanderbilt University Medical "
               "Center); cite Simpson et al. 2019 (arXiv:1902.09063) and Antonelli et al. 2022 (Nat. Commun. 13, 4128)"
               if (meta.get("dataset") or "").lower() == "hippocampus" else "see the training data's own licence")
    mirror = ("\n- Test-time mirroring (inside the model, and in the metrics below): the softmax is averaged over"
              "\n  each slice and its flips along either in-plane axis and both."
              if meta.get("test_time_mirroring") else "")
    axes = meta.get("member_slice_axes")
    views = (f"\n- Views (inside the model): the members slice the volume along axes {', '.join(map(str, axes))}; each"
             "\n  member's probabilities are resized to its own slices, put back in the input's slicing order and"
             "\n  averaged in 3D (each member weighs the same)." if axes else "")
    mirror += views + ("\n- Pooled Dice below is at the first member's model resolution (the others' probabilities"
                       "\n  resized to it); per-volume Dice and HD95 do not depend on the order of the members."
                       if axes else "")
    fold = "several folds" if meta.get("fold") is None else f"fold {meta['fold']}"
    fraction = ("labeled fractions as listed below" if meta.get("labeled_fraction") is None
                else f"labeled fraction {meta['labeled_fraction']:g}")
    ensemble = f" (an ensemble of {len(meta['members'])} runs)" if meta.get("members") else ""
    first = ", the first member's; each member's run folder holds its own" if meta.get("members") else ""
    codes = ("\n- Label values: the signature's `labels` are class indices; `predict` writes the dataset's codes ("
             + ", ".join(f"{n} {c}" for n, c in zip(meta["class_names"], meta["label_codes"])) + ")."
             if meta.get("label_codes") else "")
    return f"""# {name}

2D U-Net ({model['depth']} levels, base width {model['base_width']}, {model['norm']} normalisation){ensemble} segmenting
{', '.join(classes)} slice by slice at {meta['image_size']}x{meta['image_size']}, exported by tfsemiseg
{meta.get('tfsemiseg_version', '')} as a TensorFlow SavedModel (signature `serving_default`: `slices` float32
[N, H, W] -> `labels` int32 [N, H, W], `probabilities` float32 [N, H, W, K]; slicing axis {meta['slice_axis']}).

## Training data and licence
- Data: {meta.get('dataset')}; licence: {licence}.
- Split: {fold} of the seeded volume-level splits (ratios {cfg['split']['ratios']}, seed
  {cfg['split']['seed']}); {fraction} of the train volumes
  ({meta['labeled_volumes']} volumes with labels); method `{meta['method']}`.{_labeled_cases(meta)}
- Preprocessing (inside the model): per-volume min-max to [0, 1], bilinear resize to the model size;
  probabilities resized back bilinearly.{mirror}{codes}

## Metrics
Pooled Dice is the paper's metric (intersections and sums pooled over all slices at model
resolution); per-volume Dice and HD95 are at native resolution (HD95 over volumes where both
prediction and label hold the class).

{_metrics_section(meta, classes)}{_members_section(meta)}
## Training configuration
Stages and settings are in `metadata.json` (`training_config`{first}); fine-tuning: {cfg['train']['finetune_stage']['epochs']}
epochs, batch {cfg['train']['finetune_stage']['batch_size']}, Adam lr {cfg['train']['finetune_stage']['learning_rate']}
({cfg['train']['finetune_stage']['schedule']}).
{notes}
## Intended use
Research on label-efficient segmentation and a starting point for fine-tuning on similar T1-weighted
hippocampus crops. Not a medical device; not for clinical decisions.

## Limits
- Trained on the MSD Hippocampus crops (small volumes around the hippocampus, 1 mm isotropic); whole-brain
  scans, other contrasts or resolutions are out of distribution.
- {"2D slice-wise models, averaged in 3D over their slicing axes" if axes else "2D slice-wise model: no 3D context"}; slices are resized to {meta['image_size']}x{meta['image_size']}, which
  distorts anisotropic slices.
- Metrics come from one split's held-out parts, not from an external cohort.
"""
