"""``synthray experiment segment``: do synthetic image + mask pairs help a U-Net? (knee-MRI paper, seed 001)

:func:`plan_segment` does everything that can fail fast, without training: it reads the real
splits (every pair must carry a mask), expands the grid, resolves the paired generators (mask
classes must be the dataset's) and runs the leakage guard of the augmentation experiments.
:func:`run_segment_experiment` then synthesizes one pool of pairs per generator set, trains
every cell × seed on Ray Train (:func:`training.segment.trainer.fit_segmenters`) under one
MLflow parent run, writes the table (CSV + Markdown, :mod:`.segment_report`) and registers
the segmenter with the highest validation Dice as ``champion``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.progress import Progress
from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from training.experiments.data import RealPools, real_pools
from training.experiments.guard import check_disjoint
from training.experiments.segment_config import SegmentCell, SegmentExperimentConfig, expand_segment_cells
from training.experiments.segment_data import PairSource, assemble_pairs, resolve_pair_sources, synthesize_pairs
from training.experiments.segment_report import SegmentRow, build_segment_rows, segment_table_frame, segment_table_markdown
from training.registry import tags as tag


@dataclass(frozen=True)
class SegmentPlan:
    cfg: SegmentExperimentConfig
    dataset: str
    classes: list[str]  # mask classes, background first
    pools: RealPools
    cells: list[SegmentCell]
    sources: dict[str, PairSource]
    guard: list[str]

    def describe(self) -> list[str]:
        n = len(self.pools.train)
        lines = [f"experiment {self.cfg.name}: {self.dataset}, real train {n} pairs, val {len(self.pools.val)}, "
                 f"test {len(self.pools.test)} (real only); mask classes {', '.join(self.classes[1:])}",
                 f"grid {self.cfg.grid}: {len(self.cells)} cell(s) x {self.cfg.repeats} seed(s) = "
                 f"{len(self.cells) * self.cfg.repeats} segmenter run(s) of {self.cfg.segmenter.arch}"]
        for cell in self.cells:
            n_real, n_syn = cell.counts(n)
            lines.append(f"  {cell.name}: real {n_real}, synthetic {n_syn}"
                         + (f" from {cell.generators} ({self.sources[cell.generators].model})" if n_syn else ""))
        return lines + self.guard


@dataclass(frozen=True)
class SegmentExperimentResult:
    parent_run_id: str
    run_url: str
    rows: list[SegmentRow]
    table: str
    segmenter: object | None  # RegisteredSegmenter
    best_run: str


def plan_segment(cfg: SegmentExperimentConfig, settings: Settings | None = None) -> SegmentPlan:
    """Validate against the catalog and the registry; raises with one clear line on bad input or leakage."""
    from training.catalog.selection import catalog
    from training.segment.trainer import check_masks

    settings = settings or get_settings()
    cat = catalog(settings)
    manifest = cat.manifest(cfg.dataset)
    pools = real_pools(cfg, manifest)
    check_masks(manifest, {"train": pools.train, "val": pools.val, "test": pools.test})
    classes = list(manifest.mask_classes)
    cells = expand_segment_cells(cfg)
    sources = resolve_pair_sources(cfg, cells, classes, configure(settings).MlflowClient(), cat)
    guard = check_disjoint([s.lineage for s in sources.values()], {"test": pools.test, "val": pools.val})
    return SegmentPlan(cfg, str(manifest.ref), classes, pools, cells, sources, guard)


def _log_report(client, run_id: str, rows: list[SegmentRow], p: SegmentPlan) -> str:
    from mlflow.entities import Metric

    table = segment_table_markdown(rows, p.cfg, p.classes)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "results.md").write_text(table)
        segment_table_frame(rows).to_csv(out / "results.csv", index=False)
        (out / "guard.txt").write_text("\n".join(p.guard) + "\n")
        (out / "config.yaml").write_text(yaml.safe_dump(p.cfg.model_dump(mode="json"), sort_keys=False))
        client.log_artifacts(run_id, tmp, "results")
    # Cell names hold characters metric keys may not ("1:1"): rows go by position, as in the table.
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"cell{i:02d}.{key}_mean", ci.mean, now, 0)
                                      for i, row in enumerate(rows) for key, ci in row.values.items()
                                      if not math.isnan(ci.mean)])
    return table


def run_segment_experiment(cfg: SegmentExperimentConfig, settings: Settings | None = None,
                           progress: Progress = print) -> SegmentExperimentResult:
    """Run the whole grid; see the module docstring."""
    from training.catalog.selection import catalog
    from training.segment.trainer import fit_segmenters, register_segmenter, segmenter_name

    settings = settings or get_settings()
    p = plan_segment(cfg, settings)
    for line in p.describe():
        progress(line)
    cat = catalog(settings)
    real = {s: (cat.read_pixels(getattr(p.pools, s)), cat.read_masks(getattr(p.pools, s)))
            for s in ("train", "val", "test")}
    size = tuple(real["train"][0].shape[1:3])
    synthetic = synthesize_pairs(cfg, p.cells, p.sources, len(p.pools.train), size, settings, progress)
    base_params = {"dataset": p.dataset, "arch": cfg.segmenter.arch, "classes": ",".join(p.classes),
                   **cfg.segmenter.hyperparameters()}
    data, jobs = assemble_pairs(cfg, p.cells, p.pools, real, synthetic, p.sources, base_params)

    mlflow = configure(settings)
    client = mlflow.MlflowClient()
    experiment = mlflow.set_experiment(cfg.experiment)
    tags = {tag.DATASET: p.dataset, tag.EXPERIMENT_NAME: cfg.name}
    with mlflow.start_run(run_name=f"segment-{cfg.name}",
                          tags={tag.KIND: tag.SEGMENTATION_EXPERIMENT_KIND, **tags}) as run:
        parent = run.info.run_id
        url = run_url(settings, experiment.experiment_id, parent)
        progress(f"experiment: MLflow parent run {url}")
        mlflow.log_params({"grid": cfg.grid, "ratio": cfg.ratio, "repeats": cfg.repeats, "cells": len(p.cells),
                           "n_real_train": len(p.pools.train), "n_val": len(p.pools.val), "n_test": len(p.pools.test),
                           **{f"segmenter/{k}": v for k, v in cfg.segmenter.hyperparameters().items()},
                           "generators": json.dumps({k: s.model for k, s in p.sources.items()})[:6000]})
        fit = fit_segmenters(cfg.segmenter, p.classes, data, jobs, parent_run_id=parent,
                             experiment_id=experiment.experiment_id, settings=settings, tags=tags, progress=progress)
        rows = build_segment_rows(cfg, p.cells, fit.results, p.classes, len(p.pools.train))
        table = _log_report(client, parent, rows, p)
        progress(table)
        best = fit.results[fit.best_key]
        mlflow.set_tags({tag.EXPERIMENT_BEST_RUN: best.run_id, tag.EXPERIMENT_BEST_CELL: best.cell})
    reg = None
    if cfg.register_best:
        name = cfg.register_name or segmenter_name(p.dataset, cfg.segmenter.arch)
        reg = register_segmenter(cfg.segmenter, p.classes, fit, name, settings=settings,
                                 tags={"dataset": p.dataset, "experiment": cfg.name, "experiment_run": parent, **tags},
                                 description=f"Highest validation Dice of segmentation experiment {cfg.name} "
                                             f"(cell {best.cell}, seed {best.seed}).")
        progress(f"experiment: registered {reg.uri} as champion (cell {best.cell}, seed {best.seed}, "
                 f"val Dice {best.val_dice:.3f})")
    return SegmentExperimentResult(parent, url, rows, table, reg, best.run_id)
