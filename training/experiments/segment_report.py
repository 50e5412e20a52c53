"""The results table of a segmentation experiment (knee-MRI paper, downstream U-Net Dice).

One row per cell, scored on the real test pairs at the selected (highest validation Dice)
epoch of each run:

- ``Dice`` / ``IoU``: mean over foreground classes and test images, then the mean over the
  cell's seeds, with a percentile bootstrap CI over seeds (:func:`mean_ci`, training variance,
  as the augmentation table).
- per class ``Dice {class}`` / ``IoU {class}``: the mean over seeds and test images, with a
  95 % percentile bootstrap CI over test images (:func:`bootstrap_ci`, the images are the
  sampling unit; each image's score is first averaged over the seeds). Empty-class convention:
  :data:`training.evaluate.segmentation.EMPTY_CLASS_CONVENTION`.
- ``Δ Dice vs Real (p)``: paired permutation test (:func:`paired_score_test`) of the per-image
  mean Dice against the real-only cell, pairs = (seed, test image): seed r of every cell
  starts from the same weights, so Δ is exactly the difference of the table's Dice means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from infra.errors import BadInput
from training.evaluate.compare import MeanCI, PairedTest, mean_ci, paired_score_test
from training.evaluate.segmentation import bootstrap_ci
from training.experiments.segment_config import SegmentCell, SegmentExperimentConfig
from training.segment.loop import SegmenterResult

METRICS = ("dice", "iou")


@dataclass
class SegmentRow:
    cell: SegmentCell
    n_real: int
    n_synthetic: int
    values: dict[str, MeanCI]  # dice, iou, val_dice: over seeds
    per_class: dict[str, tuple[float, float, float]]  # "dice/femur" → (mean, ci low, ci high) over images
    paired: PairedTest | None
    runs: list[str] = field(default_factory=list)


def build_segment_rows(cfg: SegmentExperimentConfig, cells: list[SegmentCell], results: dict[str, SegmenterResult],
                       classes: list[str], n_real_pool: int) -> list[SegmentRow]:
    """The table; the first cell is the baseline every other row is compared with.

    Args:
        results: every job's result (``test_dice`` / ``test_iou``: (N_test, K-1) per image and class).
        classes: mask classes, background first (not scored).
        n_real_pool: real training pairs of the full pool (the cells' counts are relative to it).
    """
    by_cell: dict[str, list[SegmenterResult]] = {}
    for result in results.values():
        by_cell.setdefault(result.cell, []).append(result)
    ci = dict(confidence=cfg.confidence, n_resamples=cfg.bootstrap, seed=cfg.seed)
    base_runs = sorted(by_cell[cells[0].name], key=lambda r: r.seed)
    rows = []
    for cell in cells:
        runs = sorted(by_cell[cell.name], key=lambda r: r.seed)
        values = {m: mean_ci([getattr(r, f"test_{m}").mean() for r in runs], **ci) for m in METRICS}
        values["val_dice"] = mean_ci([r.val_dice for r in runs], **ci)
        per_class = {}
        for m in METRICS:
            stacked = np.stack([getattr(r, f"test_{m}") for r in runs])  # (R, N, K-1)
            per_image = stacked.mean(axis=0)
            for c, name in enumerate(classes[1:]):
                low, high = bootstrap_ci(per_image[:, c], cfg.seed, cfg.confidence)
                per_class[f"{m}/{name}"] = (float(stacked[..., c].mean()), low, high)
        paired = None
        if cell is not cells[0]:
            if [r.seed for r in runs] != [r.seed for r in base_runs]:
                raise BadInput(f"cell {cell.name!r} ran seeds {[r.seed for r in runs]}, the baseline "
                               f"{[r.seed for r in base_runs]}: they must pair up")
            paired = paired_score_test(np.concatenate([r.test_dice.mean(axis=1) for r in runs]),
                                       np.concatenate([r.test_dice.mean(axis=1) for r in base_runs]),
                                       n_resamples=cfg.permutations, seed=cfg.seed, metric="dice")
        n_real, n_syn = cell.counts(n_real_pool)
        rows.append(SegmentRow(cell, n_real, n_syn, values, per_class, paired, [r.run_id for r in runs]))
    return rows


def _fmt(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if low == high else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def segment_table_markdown(rows: list[SegmentRow], cfg: SegmentExperimentConfig, classes: list[str]) -> str:
    """Markdown table: mean [CI]; see the module docstring for which CI is which."""
    conf = f"{100 * cfg.confidence:g} %"
    names = classes[1:]
    head = (["Set", "real", "synthetic", "Dice", "IoU"] + [f"Dice {c}" for c in names] + [f"IoU {c}" for c in names]
            + ["Best val Dice", f"Δ Dice vs {rows[0].cell.name} (p)"])
    lines = [f"Test set (real only). Dice, IoU, best val Dice: mean [{conf} bootstrap CI] over {cfg.repeats} seed(s); "
             f"per class: mean [{conf} bootstrap CI over test images]; Δ and p: paired permutation test "
             f"({cfg.permutations} resamples), pairs = (seed, image).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        v = row.values
        delta = "–" if row.paired is None else f"{row.paired.statistic:+.4f} (p = {row.paired.p_value:.3f})"
        cells = ([row.cell.name, str(row.n_real), str(row.n_synthetic)]
                 + [_fmt(v[m].mean, v[m].low, v[m].high) for m in METRICS]
                 + [_fmt(*row.per_class[f"{m}/{c}"]) for m in METRICS for c in names]
                 + [_fmt(v["val_dice"].mean, v["val_dice"].low, v["val_dice"].high), delta])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def segment_table_frame(rows: list[SegmentRow]):
    """The same table with numbers in separate columns (CSV)."""
    import pandas as pd

    records = []
    for row in rows:
        rec = {"set": row.cell.name, "generator_set": row.cell.generators or "", "n_real": row.n_real,
               "n_synthetic": row.n_synthetic}
        for key, ci in row.values.items():
            rec |= {f"{key}_mean": ci.mean, f"{key}_ci_low": ci.low, f"{key}_ci_high": ci.high}
        for key, (mean, low, high) in row.per_class.items():
            rec |= {f"{key}_mean": mean, f"{key}_ci_low": low, f"{key}_ci_high": high}
        rec |= {"seeds": len(row.runs), "delta_dice_vs_baseline": row.paired.statistic if row.paired else np.nan,
                "p_value": row.paired.p_value if row.paired else np.nan, "runs": " ".join(row.runs)}
        records.append(rec)
    return pd.DataFrame(records)
