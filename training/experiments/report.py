"""The results table of an augmentation experiment, shaped like the papers' tables, and its plot.

One row per cell: test accuracy and loss and best-validation accuracy and loss (knee paper
Table 5's columns), then balanced accuracy, Cohen's κ and ROC AUC; each is the mean over the
cell's seeds with a bootstrap CI. "vs baseline" is the paired permutation test on the real
test set against the real-only cell, pairing each (seed, test image) of a cell with the same
seed and image of the baseline. TSTR
(train on synthetic, test on real) and TRTS (train on real, test on synthetic) accuracies of a
row's generator set form the classification accuracy score columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from training.classify.loop import JobResult
from training.experiments.config import Cell, ExperimentConfig
from training.evaluate.classification import classification_metrics, metric_value
from training.evaluate.compare import MeanCI, PairedTest, mean_ci, paired_permutation_test
from infra.errors import BadInput

# Column → (source, metric): "test"/"val" metrics of the selected epoch.
COLUMNS = {
    "test_accuracy": ("test", "accuracy"),
    "test_loss": ("test", "log_loss"),
    "val_accuracy": ("val", "accuracy"),
    "val_loss": ("val", "log_loss"),
    "test_balanced_accuracy": ("test", "balanced_accuracy"),
    "test_kappa": ("test", "kappa"),
    "test_roc_auc": ("test", "roc_auc"),
}


@dataclass
class Row:
    cell: Cell
    n_real: int
    synthetic_fraction: float  # synthetic images / real training images of the full pool
    values: dict[str, MeanCI]
    paired: PairedTest | None
    tstr: MeanCI | None = None
    trts: MeanCI | None = None
    runs: list[str] = field(default_factory=list)


def _seed_metrics(result: JobResult, classes: list[str], y_val: np.ndarray) -> dict[str, float]:
    test, val = result.test_metrics, classification_metrics(y_val, result.val_proba, classes)
    return {col: (test if src == "test" else val)[name] for col, (src, name) in COLUMNS.items()}


def build_rows(cfg: ExperimentConfig, cells: list[Cell], results: dict[str, JobResult], classes: list[str],
               y_val: np.ndarray, y_test: np.ndarray, synthetic_tests: dict, n_real_pool: int) -> list[Row]:
    """The table: the first cell is the baseline every other row is compared with."""
    by_cell: dict[str, list[JobResult]] = {}
    for result in results.values():
        by_cell.setdefault(result.cell, []).append(result)
    ci = dict(confidence=cfg.confidence, n_resamples=cfg.bootstrap, seed=cfg.seed)
    baseline = cells[0]
    base_runs = sorted(by_cell[baseline.name], key=lambda r: r.seed)
    base_proba = np.concatenate([r.test_proba for r in base_runs])
    trts = {name: mean_ci([metric_value("accuracy", labels, r.synthetic_proba[name]) for r in base_runs], **ci)
            for name, (_, labels) in synthetic_tests.items()}
    tstr = {}
    for cell in cells:
        if cell.real == 0 and cell.generators and cell.generators not in tstr:
            tstr[cell.generators] = mean_ci([r.test_metrics["accuracy"] for r in by_cell[cell.name]], **ci)
    rows = []
    for cell in cells:
        runs = sorted(by_cell[cell.name], key=lambda r: r.seed)
        per_seed = [_seed_metrics(r, classes, y_val) for r in runs]
        values = {col: mean_ci([m[col] for m in per_seed], **ci) for col in COLUMNS}
        paired = None
        if cell is not baseline:
            if [r.seed for r in runs] != [r.seed for r in base_runs]:
                raise BadInput(f"cell {cell.name!r} ran seeds {[r.seed for r in runs]}, the baseline "
                                 f"{[r.seed for r in base_runs]}: they must pair up")
            # Pairs are (seed, test image): seed r of every cell starts from the same weights, so
            # the pooled statistic is the difference of the table's means (exactly, for accuracy).
            paired = paired_permutation_test(np.tile(y_test, len(runs)), np.concatenate([r.test_proba for r in runs]),
                                             base_proba, metric=cfg.metric, n_resamples=cfg.permutations,
                                             seed=cfg.seed)
        rows.append(Row(cell=cell, n_real=round(cell.real * n_real_pool), values=values, paired=paired,
                        synthetic_fraction=cell.n_synthetic / max(n_real_pool, 1),
                        tstr=tstr.get(cell.generators), trts=trts.get(cell.generators),
                        runs=[r.run_id for r in runs]))
    return rows


def _fmt(ci: MeanCI | None, pct: bool = False) -> str:
    if ci is None or math.isnan(ci.mean):
        return "–"
    scale, unit = (100, "") if pct else (1, "")
    if ci.low == ci.high:
        return f"{scale * ci.mean:.2f}{unit}"
    return f"{scale * ci.mean:.2f} [{scale * ci.low:.2f}, {scale * ci.high:.2f}]"


def table_markdown(rows: list[Row], cfg: ExperimentConfig) -> str:
    """Markdown table; accuracies in %, mean [CI] over seeds."""
    conf = f"{100 * cfg.confidence:g} %"
    head = ["Set", "real", "synthetic", "Test acc. %", "Test loss", "Best val acc. %", "Val loss",
            "Bal. acc. %", "κ", "AUC", f"Δ {cfg.metric} vs {rows[0].cell.name} (p)", "TSTR acc. %", "TRTS acc. %"]
    lines = [f"Mean [{conf} bootstrap CI] over {cfg.repeats} seed(s); Δ and p: paired permutation test "
             f"({cfg.permutations} resamples) on the real test set, pairs = (seed, image).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        v = row.values
        delta = "–" if row.paired is None else f"{row.paired.statistic:+.4f} (p = {row.paired.p_value:.3f})"
        cells = [row.cell.name, str(row.n_real), str(row.cell.n_synthetic), _fmt(v["test_accuracy"], True),
                 _fmt(v["test_loss"]), _fmt(v["val_accuracy"], True), _fmt(v["val_loss"]),
                 _fmt(v["test_balanced_accuracy"], True), _fmt(v["test_kappa"]), _fmt(v["test_roc_auc"]), delta,
                 _fmt(row.tstr, True), _fmt(row.trts, True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_frame(rows: list[Row]):
    """The same table with numbers in separate columns (CSV)."""
    import pandas as pd

    records = []
    for row in rows:
        rec = {"set": row.cell.name, "generator_set": row.cell.generators or "", "n_real": row.n_real,
               "n_synthetic": row.cell.n_synthetic, "synthetic_fraction": row.synthetic_fraction}
        for col, ci in row.values.items():
            rec |= {f"{col}_mean": ci.mean, f"{col}_ci_low": ci.low, f"{col}_ci_high": ci.high}
        rec |= {"seeds": len(row.runs), "delta_vs_baseline": row.paired.statistic if row.paired else np.nan,
                "p_value": row.paired.p_value if row.paired else np.nan,
                "tstr_accuracy": row.tstr.mean if row.tstr else np.nan,
                "trts_accuracy": row.trts.mean if row.trts else np.nan, "runs": " ".join(row.runs)}
        records.append(rec)
    return pd.DataFrame(records)


def plot(rows: list[Row], cfg: ExperimentConfig):
    """The headline test metric against the synthetic fraction, mean with CI bars; real-free cells hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = f"test_{cfg.metric}" if f"test_{cfg.metric}" in COLUMNS else "test_accuracy"
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    xs = [r.synthetic_fraction for r in rows]
    categorical = len(set(xs)) < len(rows) - sum(r.cell.real == 0 for r in rows)
    for i, row in enumerate(rows):
        ci = row.values[column]
        x = i if categorical else row.synthetic_fraction
        err = [[ci.mean - ci.low], [ci.high - ci.mean]]
        ax.errorbar([x], [ci.mean], yerr=err, fmt="o" if row.cell.real else "s", capsize=4,
                    mfc="white" if row.cell.real == 0 else None, label=row.cell.name)
    base = rows[0].values[column].mean
    ax.axhline(base, ls="--", lw=1, color="grey")
    if categorical:
        ax.set_xticks(range(len(rows)), [r.cell.name for r in rows], rotation=30, ha="right")
    else:
        ax.set_xlabel("synthetic images / real training images")
    ax.set_ylabel(f"{column.replace('_', ' ')} (mean, {100 * cfg.confidence:g} % CI)")
    ax.set_title(f"{cfg.name}: {cfg.repeats} seed(s) per cell, real test set")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
