"""``synthray experiment federated``: federated K × n vs centralised K·n vs one site's n (chest paper, seed 003).

:func:`plan_federated` does everything that can fail fast, without training: the config is
already valid (:mod:`.federated_config`); here the dataset must carry exactly ``sites`` site
subsets that cover its train split, and the single site must fill one batch.
:func:`run_federated_experiment` then, for every seed, trains

- the federated arm with :func:`training.federated.server.train_federated` (Flower's FedAvg;
  the global model is checkpointed in S3 after every round), and
- the centralised arms with :func:`training.gan.trainer.train_gan` (Ray Train, one worker,
  a checkpoint after every round-equivalent epoch, collected with :class:`PointerReport`),

scores every arm's raw generator after every ``fid_every`` rounds against the pooled reference
(:mod:`.federated_report`), and writes the table (Markdown + CSV), the FID curves (CSV) and the
plot of FID against rounds (PNG) to the output folder and to one MLflow parent run in the
``synthray-federated`` experiment; the arms' runs are its children.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from infra.errors import BadInput, Unavailable
from infra.progress import Progress
from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from training.experiments.federated_config import FederatedExperimentConfig
from training.experiments.federated_report import (
    LABELS, FedRow, SeedScore, build_row, curve_frame, plot, table_frame, table_markdown)
from training.registry import tags as tag

ARM_TAG = "synthray.federated.arm"
PLOT = "fid_vs_rounds.png"


@dataclass(frozen=True)
class ArmPlan:
    arm: str
    data: str  # what it trains on, for the table
    n_train: int


@dataclass(frozen=True)
class FederatedPlan:
    cfg: FederatedExperimentConfig
    dataset: str
    site_sizes: list[int]
    arms: list[ArmPlan]

    def describe(self) -> list[str]:
        cfg = self.cfg
        lines = [f"experiment {cfg.name}: {self.dataset}, {cfg.sites} sites of {', '.join(map(str, self.site_sizes))} "
                 f"train images ({sum(self.site_sizes)} pooled: the FID reference)",
                 f"{cfg.rounds} round(s), {cfg.sampled_per_round()} of {cfg.sites} sites per round "
                 f"(C = {cfg.fraction:g}), E = {cfg.local_iters}, {cfg.gan.arch}, batch "
                 f"{cfg.gan.hyperparameters()['batch_size']}; {cfg.repeats} seed(s); FID after rounds "
                 f"{', '.join(map(str, cfg.eval_rounds()))} ({cfg.fid_dims}-d)"]
        for a in self.arms:
            per = cfg.updates_per_round(a.arm)
            lines.append(f"  {LABELS[a.arm]} ({a.data}): {a.n_train} images, {per} generator updates per round, "
                         f"{cfg.rounds * per} in all")
        return lines


@dataclass(frozen=True)
class FederatedExperimentResult:
    parent_run_id: str
    run_url: str
    rows: list[FedRow]
    table: str
    output: Path  # the folder with results.md, results.csv, curves.csv, config.yaml and the plot
    plot: Path


def plan_federated(cfg: FederatedExperimentConfig, settings: Settings | None = None) -> FederatedPlan:
    """Check the dataset's sites against the config; raises BadInput naming the field."""
    from training.catalog.selection import catalog
    from training.federated.sites import check_sites, site_name

    settings = settings or get_settings()
    manifest = catalog(settings).manifest(cfg.dataset)
    found = check_sites(manifest, cfg.sites)
    train = {r.sha256 for r in manifest.select(split="train")}
    members = [set(manifest.subset(s)) for s in found]
    if set().union(*members) != train or sum(map(len, members)) != len(train):
        raise BadInput(f"dataset {manifest.ref}: the sites must divide its train split exactly (the pooled "
                       "reference and the centralised arm are the train split); split with --within split=train",
                       field="dataset")
    sizes = [len(m) for m in members]
    batch = cfg.gan.hyperparameters()["batch_size"]
    if "single-site" in cfg.arms and sizes[cfg.single_site] < batch:
        raise BadInput(f"{site_name(cfg.single_site)} has {sizes[cfg.single_site]} images, fewer than one batch "
                       f"of {batch} for the single-site arm", field="gan.batch_size")
    data = {"federated": (f"{cfg.sites} sites × {round(np.mean(sizes))}", len(train)),
            "centralised": (f"{len(train)} pooled", len(train)),
            "single-site": (f"{sizes[cfg.single_site]}, {site_name(cfg.single_site)}", sizes[cfg.single_site])}
    return FederatedPlan(cfg, str(manifest.ref), sizes, [ArmPlan(a, *data[a]) for a in cfg.arms])


# -- training the arms ----------------------------------------------------------------------------
def _load(data: bytes) -> dict:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _train_federated(p: FederatedPlan, seed: int, parent: str, settings: Settings, progress: Progress
                     ) -> tuple[str, Callable[[int], dict]]:
    from mlflow import MlflowClient

    from infra.object_store import ObjectStore
    from training.federated.server import checkpoint_key, train_federated

    result = train_federated(p.cfg.federated(seed), settings=settings, progress=progress)
    client = MlflowClient()
    client.set_tag(result.run_id, "mlflow.parentRunId", parent)  # the arm's run, nested under the experiment
    client.set_tag(result.run_id, ARM_TAG, "federated")
    if result.rounds != p.cfg.rounds:
        raise Unavailable(f"the federated arm finished {result.rounds} of {p.cfg.rounds} rounds")
    dropped = {r: s for r, s in result.dropped.items() if s}
    if dropped:
        progress(f"experiment: federated seed {seed}: sites dropped in rounds {dropped}; fewer updates than planned")
    store = ObjectStore(settings)
    return result.run_id, lambda rnd: _load(store.get_bytes(checkpoint_key(result.run_id, rnd)))


def _train_centralised(p: FederatedPlan, arm: str, seed: int, parent: str, settings: Settings, progress: Progress
                       ) -> tuple[str, Callable[[int], dict]]:
    from ray.util.queue import Queue

    from infra.ray_runtime import connect
    from training.gan.loop import checkpoint_state
    from training.gan.sweep import TRAIN_CHECKPOINT, PointerReport
    from training.gan.trainer import train_gan

    connect(settings)  # Flower's run shut this process's Ray connection down; the queue needs one
    queue = Queue(actor_options={"num_cpus": 0})
    result = train_gan(p.cfg.centralised(arm, p.dataset, seed), settings, progress, parent_run_id=parent,
                       run_name=f"{arm}-seed{seed}", tags={ARM_TAG: arm, tag.EXPERIMENT_NAME: p.cfg.name},
                       callbacks=[PointerReport(queue)])
    # train_gan has returned: every checkpointed epoch's report is in the queue.
    epochs = {int(r["epoch"]): r[TRAIN_CHECKPOINT] for r in queue.get_nowait_batch(queue.qsize())}
    queue.shutdown()
    missing = sorted(set(p.cfg.eval_rounds()) - set(epochs))
    if missing:
        raise Unavailable(f"the {arm} arm reported no checkpoint after epoch(s) {missing}")
    return result.run_id, lambda rnd: checkpoint_state(epochs[rnd])


def _score(state: dict, ref, cfg: FederatedExperimentConfig, settings: Settings, bootstrap: int):
    """FID of a checkpoint's raw generator against ``ref`` (n_fake = n_real, one sampling seed for all)."""
    from training.evaluate import fake_features
    from training.evaluate.generator import fakes_like
    from training.evaluate.reference import fid_from_reference_features
    from training.gan.trainer import sampler_from_state

    sampler = sampler_from_state(state, raw=True)
    fake, _ = fakes_like(sampler, ref, seed=cfg.seed + 1, settings=settings)
    feats = fake_features(fake, ref, settings)
    return fid_from_reference_features(feats, ref, bootstrap=bootstrap, confidence=cfg.confidence, seed=cfg.seed)


# -- the whole experiment -----------------------------------------------------------------------
def _write_report(client, parent: str, rows: list[FedRow], p: FederatedPlan, n_ref: int, out: Path) -> str:
    import matplotlib.pyplot as plt

    table = table_markdown(rows, p.cfg, n_ref)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    table_frame(rows).to_csv(out / "results.csv", index=False)
    curve_frame(rows).to_csv(out / "curves.csv", index=False)
    (out / "config.yaml").write_text(yaml.safe_dump(p.cfg.model_dump(mode="json"), sort_keys=False))
    fig = plot(rows, p.cfg)
    fig.savefig(out / PLOT)
    plt.close(fig)
    with tempfile.TemporaryDirectory() as tmp:  # the output folder may hold other files: log ours only
        for name in ("results.md", "results.csv", "curves.csv", "config.yaml", PLOT):
            (Path(tmp) / name).write_bytes((out / name).read_bytes())
        client.log_artifacts(parent, tmp, "results")
    return table


def run_federated_experiment(cfg: FederatedExperimentConfig, settings: Settings | None = None,
                             progress: Progress = print) -> FederatedExperimentResult:
    """Train every arm × seed, score them on the pooled reference, write the table and the plot."""
    from mlflow import MlflowClient

    from training.evaluate.reference import reference_statistics
    from training.federated.server import EXPERIMENT

    settings = settings or get_settings()
    p = plan_federated(cfg, settings)
    for line in p.describe():
        progress(line)
    ref = reference_statistics(p.dataset, split="train", dims=cfg.fid_dims, settings=settings)
    progress(f"experiment: pooled reference {ref.key}: {ref.n} images ({'cached' if ref.cached else 'computed'})")

    mlflow = configure(settings)
    client = MlflowClient()
    experiment = mlflow.set_experiment(EXPERIMENT)
    parent = client.create_run(experiment.experiment_id, run_name=f"experiment-{cfg.name}", tags={
        tag.KIND: tag.FEDERATED_EXPERIMENT_KIND, tag.DATASET: p.dataset, tag.EXPERIMENT_NAME: cfg.name}).info.run_id
    url = run_url(settings, experiment.experiment_id, parent)
    progress(f"experiment: MLflow parent run {url}")
    params = {"dataset": p.dataset, "sites": cfg.sites, "fraction": cfg.fraction, "rounds": cfg.rounds,
              "local_iters": cfg.local_iters, "average": cfg.average, "sampled_per_round": cfg.sampled_per_round(),
              "arms": ",".join(cfg.arms), "single_site": cfg.single_site, "equal_work": cfg.equal_work,
              "repeats": cfg.repeats, "seed": cfg.seed, "fid_dims": cfg.fid_dims, "bootstrap": cfg.bootstrap,
              "n_reference": ref.n, "arch": cfg.gan.arch,
              **{f"gan/{k}": v for k, v in cfg.gan.hyperparameters().items()}}
    for key, value in params.items():
        client.log_param(parent, key, value)

    status = "FAILED"
    try:
        curves = {a.arm: {r: [] for r in cfg.eval_rounds()} for a in p.arms}
        scores: dict[str, list[SeedScore]] = {a.arm: [] for a in p.arms}
        runs: dict[str, list[str]] = {a.arm: [] for a in p.arms}
        for seed in cfg.seeds():
            for a in p.arms:
                progress(f"experiment: seed {seed}, {LABELS[a.arm]} ({a.data})")
                run_id, state = (_train_federated(p, seed, parent, settings, progress) if a.arm == "federated"
                                 else _train_centralised(p, a.arm, seed, parent, settings, progress))
                runs[a.arm].append(run_id)
                for rnd in cfg.eval_rounds():
                    last = rnd == cfg.rounds
                    fid = _score(state(rnd), ref, cfg, settings, cfg.bootstrap if last else 0)
                    curves[a.arm][rnd].append(fid.fid)
                    client.log_metric(parent, f"fid.{a.arm}.seed{seed}", fid.fid, step=rnd)
                    ci = f" [{fid.ci_low:.1f}, {fid.ci_high:.1f}]" if fid.ci_low is not None else ""
                    progress(f"experiment: {LABELS[a.arm]} seed {seed} round {rnd}: FID {fid.fid:.1f}{ci}")
                scores[a.arm].append(SeedScore(seed, fid.fid, math.nan if fid.ci_low is None else fid.ci_low,
                                               math.nan if fid.ci_high is None else fid.ci_high))
        rows = [build_row(cfg, a.arm, a.data, a.n_train, scores[a.arm], curves[a.arm], runs[a.arm]) for a in p.arms]
        for row in rows:
            client.log_metric(parent, f"fid.{row.arm}", row.fid.mean, step=cfg.rounds)
        out = cfg.output_dir()
        table = _write_report(client, parent, rows, p, ref.n, out)
        progress(table)
        status = "FINISHED"
    finally:
        client.set_terminated(parent, status)
    return FederatedExperimentResult(parent, url, rows, table, out, out / PLOT)
