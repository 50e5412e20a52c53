"""``synthray experiment augment``: does adding (or substituting) synthetic images help a classifier?

:func:`plan` does everything that can fail fast, without training: it reads the real splits,
expands the grid, resolves the generators and runs the leakage guard. :func:`run_experiment`
then synthesizes the pools, trains every cell × seed on Ray Train under one MLflow parent run,
writes the table (CSV + Markdown), the plot and the statistics, registers the classifier with
the lowest validation loss as ``champion``, and records TSTR/TRTS on each generator version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from training.experiments.config import Cell, ExperimentConfig, expand_cells
from training.experiments.data import RealPools, assemble, real_pools, resolve_sources, synthesize
from training.experiments.guard import check_disjoint, lineage
from training.experiments.report import Row, build_rows, plot, table_frame, table_markdown
from training.registry import tags as tag
from infra.progress import Progress

CAS_PREFIX = "cas."  # generator version tags: classification accuracy score of the latest experiment


@dataclass(frozen=True)
class Plan:
    cfg: ExperimentConfig
    dataset: str
    pools: RealPools
    cells: list[Cell]
    sources: dict
    versions: dict
    guard: list[str]

    def describe(self) -> list[str]:
        counts = ", ".join(f"{c} {n}" for c, n in self.pools.counts().items())
        lines = [f"experiment {self.cfg.name}: {self.dataset}, real train {len(self.pools.train)} ({counts}), "
                 f"val {len(self.pools.val)}, test {len(self.pools.test)} (real only)",
                 f"grid {self.cfg.grid}: {len(self.cells)} cell(s) x {self.cfg.repeats} seed(s) = "
                 f"{len(self.cells) * self.cfg.repeats} classifier run(s) of {self.cfg.classifier.arch}"]
        for cell in self.cells:
            syn = ", ".join(f"{c} {n}" for c, n in cell.synthetic.items() if n) or "none"
            lines.append(f"  {cell.name}: real {cell.real:.0%}, synthetic {syn}"
                         + (f" from {cell.generators}" if cell.generators else ""))
        return lines + self.guard


@dataclass(frozen=True)
class ExperimentResult:
    parent_run_id: str
    run_url: str
    rows: list[Row]
    table: str
    classifier: object | None  # RegisteredClassifier
    best_run: str


def plan(cfg: ExperimentConfig, settings: Settings | None = None) -> Plan:
    """Validate against the catalog and the registry; raises with one clear line on bad input or leakage."""
    from training.catalog.selection import catalog

    settings = settings or get_settings()
    cat = catalog(settings)
    manifest = cat.manifest(cfg.dataset)
    pools = real_pools(cfg, manifest)
    cells = expand_cells(cfg, pools.counts())
    client = configure(settings).MlflowClient()
    sources, versions = resolve_sources(cfg, cells, pools.classes, client)
    lineages = [lineage(v, cat) for v in {f"{v.name}/{v.version}": v for v in versions.values()}.values()]
    guard = check_disjoint(lineages, {"test": pools.test, "val": pools.val})
    from training.classify.trainer import check_inputs

    check_inputs(cfg.classifier, list(pools.classes), settings)  # pretrained weights, before any run
    return Plan(cfg, str(manifest.ref), pools, cells, sources, versions, guard)


def _log_report(client, run_id: str, rows: list[Row], cfg: ExperimentConfig, p: Plan) -> str:
    import matplotlib.pyplot as plt

    table = table_markdown(rows, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "results.md").write_text(table)
        table_frame(rows).to_csv(out / "results.csv", index=False)
        (out / "guard.txt").write_text("\n".join(p.guard) + "\n")
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        client.log_artifacts(run_id, tmp, "results")
    fig = plot(rows, cfg)
    client.log_figure(run_id, fig, f"results/{cfg.metric}_vs_synthetic_fraction.png")
    plt.close(fig)
    import math
    import time

    from mlflow.entities import Metric

    # Cell names hold characters metric keys may not ("+50 %"): rows go by position, as in the table.
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"cell{i:02d}.{col}_mean", ci.mean, now, 0) for i, row in enumerate(rows)
                                      for col, ci in row.values.items() if not math.isnan(ci.mean)])
    return table


def _record_cas(client, p: Plan, rows: list[Row], parent_run_id: str) -> None:
    """TSTR/TRTS on each generator version of a set, so its model card can show them."""
    for row in rows:
        if row.tstr is None and row.trts is None:
            continue
        tags = {"tstr_accuracy": row.tstr.mean if row.tstr else None,
                "trts_accuracy": row.trts.mean if row.trts else None}
        models = {s.model for (set_name, _), s in p.sources.items() if set_name == row.cell.generators}
        for model in models:
            name, _, version = model.removeprefix("models:/").partition("/")
            for key, value in tags.items():
                if value is not None:
                    client.set_model_version_tag(name, version, f"{CAS_PREFIX}{key}", f"{value:.6f}")
            client.set_model_version_tag(name, version, f"{CAS_PREFIX}experiment", f"{p.cfg.name} ({parent_run_id})")
            client.set_model_version_tag(name, version, f"{CAS_PREFIX}test_set", f"{p.dataset} {p.cfg.real.test_split} "
                                         f"({len(p.pools.test)} real images)")


def run_experiment(cfg: ExperimentConfig, settings: Settings | None = None, progress: Progress = print) -> ExperimentResult:
    """Run the whole grid; see the module docstring."""
    from training.catalog.selection import catalog
    from training.classify.trainer import classifier_name, fit_classifiers, pretrained_tags, register_classifier

    settings = settings or get_settings()
    p = plan(cfg, settings)
    for line in p.describe():
        progress(line)
    cat = catalog(settings)
    real = {s: cat.read_pixels(getattr(p.pools, s)) for s in ("train", "val", "test")}
    size = tuple(real["train"].shape[1:3])
    synthetic = synthesize(cfg, p.cells, p.sources, p.pools, size, settings, progress)
    base_params = {"dataset": p.dataset, "arch": cfg.classifier.arch, **cfg.classifier.hyperparameters()}
    data, jobs = assemble(cfg, p.cells, p.pools, real, synthetic, p.sources, base_params)

    mlflow = configure(settings)
    client = mlflow.MlflowClient()
    experiment = mlflow.set_experiment(cfg.experiment)
    tags = {tag.DATASET: p.dataset, tag.EXPERIMENT_NAME: cfg.name, **pretrained_tags(cfg.classifier)}
    with mlflow.start_run(run_name=f"augment-{cfg.name}", tags={tag.KIND: tag.AUGMENTATION_EXPERIMENT_KIND, **tags}) as run:
        parent = run.info.run_id
        url = run_url(settings, experiment.experiment_id, parent)
        progress(f"experiment: MLflow parent run {url}")
        mlflow.log_params({"grid": cfg.grid, "repeats": cfg.repeats, "cells": len(p.cells), "metric": cfg.metric,
                           "n_real_train": len(p.pools.train), "n_val": len(p.pools.val), "n_test": len(p.pools.test),
                           **{f"classifier/{k}": v for k, v in cfg.classifier.hyperparameters().items()},
                           "generators": json.dumps({f"{k[0]}/{k[1]}": s.model for k, s in p.sources.items()})[:6000]})
        fit = fit_classifiers(cfg.classifier, p.pools.classes, data, jobs, parent_run_id=parent,
                              experiment_id=experiment.experiment_id, settings=settings, tags=tags, progress=progress)
        rows = build_rows(cfg, p.cells, fit.results, p.pools.classes, data.val_labels, data.test_labels,
                          data.synthetic_tests, len(p.pools.train))
        table = _log_report(client, parent, rows, cfg, p)
        progress(table)
        _record_cas(client, p, rows, parent)
        best = fit.results[fit.best_key]
        mlflow.set_tags({tag.EXPERIMENT_BEST_RUN: best.run_id, tag.EXPERIMENT_BEST_CELL: best.cell})
    reg = None
    if cfg.register_best:
        name = cfg.register_name or classifier_name(p.dataset, cfg.classifier.arch)
        reg = register_classifier(cfg.classifier, p.pools.classes, fit, name, settings=settings,
                                  tags={"dataset": p.dataset, "experiment": cfg.name, "experiment_run": parent, **tags},
                                  description=f"Lowest validation loss of augmentation experiment {cfg.name} "
                                              f"(cell {best.cell}, seed {best.seed}).")
        progress(f"experiment: registered {reg.uri} as {reg.alias_uri} (cell {best.cell}, seed {best.seed}, "
                 f"val loss {best.val_loss:.3f})")
    return ExperimentResult(parent, url, rows, table, reg, best.run_id)
