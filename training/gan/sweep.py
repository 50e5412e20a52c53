"""Hyperparameter sweeps of GAN training: Ray Tune around Ray Train, one MLflow parent run.

Ray's current Tune + Train pattern (Train V2): each Tune trial is a plain function that builds
and fits its own ``TorchTrainer`` (here: :func:`training.gan.trainer.train_gan`), and a
``TuneReportCallback`` forwards every epoch's report (FID included, with the checkpoint path)
from the Train workers to Tune, where ASHA stops the trials whose FID lags.

MLflow: the sweep opens one parent run (search space, scheduler, trial table, best trial);
every trial's training run is a child of it (``mlflow.parentRunId``), because Ray's own MLflow
callback does not nest. Trials ASHA stopped are closed as KILLED afterwards.

Every trial keeps its best-FID checkpoint: Train's ``CheckpointConfig`` keeps the top-k by FID,
and the per-epoch ``checkpoint_path`` in Tune's history says which one was best.

PBT (``scheduler="pbt"``) needs to hand a checkpoint from one trial to another, which
``TuneReportCallback`` does not forward; its trials therefore report through
:class:`PointerReport`, which adds a tiny Tune checkpoint holding the Train checkpoint's URI.
An exploited trial warm-starts G and D from the donor's checkpoint with its new
hyperparameters and trains for the epochs left (optimizer moments start fresh).
"""

from __future__ import annotations

from infra.errors import BadInput

import json
import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from ray.train.v2.api.callback import UserCallback

from infra.ray_runtime import connect, storage
from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from training.gan.config import GanTrainConfig
from training.registry import tags as tag
from infra.progress import Progress

DEFAULT_SPACE = Path(__file__).with_name("sweep_space.yaml")
# Search-space key → GanTrainConfig field.
SWEEPABLE = {"lr_g": "lr", "lr_d": "lr_d", "critic_steps": "critic_steps", "gp_lambda": "gp_lambda",
             "batch_size": "batch_size", "latent_dim": "latent_dim"}
INTEGER_KEYS = {"critic_steps", "batch_size", "latent_dim"}
POINTER_FILE = "train_checkpoint.json"
TRIAL_TAG = tag.SWEEP_TRIAL_ID  # joins a child run to its Tune trial
TRAIN_CHECKPOINT = "train_checkpoint"  # PBT trials' metric naming their Train checkpoint
TRIAL_DRIVER_MEMORY = 512 * 2**20  # bytes; Ray's logical memory resource


class Distribution(BaseModel):
    """One hyperparameter's distribution: ``{loguniform|uniform|randint: [low, high]}`` or ``{choice: [...]}``."""

    kind: Literal["loguniform", "uniform", "randint", "choice"]
    values: list[float | int] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.kind != "choice":
            if len(self.values) != 2 or not self.values[0] < self.values[1]:
                raise BadInput(f"{self.kind} needs [low, high] with low < high, got {self.values}")
            if self.kind == "loguniform" and self.values[0] <= 0:
                raise BadInput(f"loguniform needs low > 0, got {self.values[0]}")
        return self

    @classmethod
    def from_yaml(cls, obj: Any) -> Distribution:
        """``{kind: [values]}`` (YAML) or a bare constant (a one-value choice)."""
        if isinstance(obj, dict) and len(obj) == 1:
            ((kind, values),) = obj.items()
            return cls(kind=kind, values=values if isinstance(values, list) else [values])
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return cls(kind="choice", values=[obj])
        raise BadInput(f"expected {{kind: [values]}} or a number, got {obj!r}")

    @classmethod
    def parse(cls, text: str) -> Distribution:
        """Flag form ``KIND:V1,V2,…`` (e.g. ``loguniform:1e-5,1e-3``, ``choice:16,32``)."""
        kind, sep, values = text.partition(":")
        if not sep:
            return cls.from_yaml(yaml.safe_load(text))
        return cls(kind=kind, values=[yaml.safe_load(v) for v in values.split(",")])

    def to_tune(self):
        from ray import tune

        low, high = (self.values + [None])[:2]
        return {"loguniform": lambda: tune.loguniform(low, high), "uniform": lambda: tune.uniform(low, high),
                "randint": lambda: tune.randint(int(low), int(high)),
                "choice": lambda: tune.choice(list(self.values))}[self.kind]()

    def largest(self) -> float:
        return max(self.values) if self.kind == "choice" else self.values[1]

    def describe(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.values))})"


class SearchSpace(BaseModel, extra="forbid"):
    """What a sweep varies; unset keys keep the preset's value."""

    lr_g: Distribution | None = None
    lr_d: Distribution | None = None
    critic_steps: Distribution | None = None
    gp_lambda: Distribution | None = None
    batch_size: Distribution | None = None
    latent_dim: Distribution | None = None

    @field_validator(*SWEEPABLE, mode="before")
    @classmethod
    def _distribution(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, Distribution) else Distribution.from_yaml(value)

    @model_validator(mode="after")
    def _integers(self) -> SearchSpace:
        for key in INTEGER_KEYS:
            dist = getattr(self, key)
            if dist and (dist.kind in ("loguniform", "uniform") or any(int(v) != v or v < 1 for v in dist.values)):
                raise BadInput(f"{key} takes positive integers: use choice or randint, got {dist.describe()}")
        return self

    @classmethod
    def load(cls, path: Path | None = None, overrides: dict[str, str] | None = None) -> SearchSpace:
        """The YAML file (default: ``sweep_space.yaml``) with ``KEY=SPEC`` flag overrides applied."""
        path = Path(path or DEFAULT_SPACE)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BadInput(f"search space {path}: {exc}") from None
        try:
            for key, spec in (overrides or {}).items():
                if key not in SWEEPABLE:
                    raise BadInput(f"--space {key}: not sweepable; choose from {', '.join(SWEEPABLE)}")
                data[key] = Distribution.parse(spec)
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise BadInput(f"search space {path}: {where}: {err['msg']}") from None

    def items(self) -> dict[str, Distribution]:
        return {k: v for k in SWEEPABLE if (v := getattr(self, k)) is not None}

    def to_tune(self) -> dict:
        """Tune's ``param_space``, keyed by GanTrainConfig field."""
        return {SWEEPABLE[k]: d.to_tune() for k, d in self.items().items()}

    def describe(self) -> dict[str, str]:
        return {k: d.describe() for k, d in self.items().items()}


class SweepConfig(BaseModel):
    """A sweep: the base training run, the space, the budget and the scheduler."""

    base: GanTrainConfig
    space: SearchSpace = Field(default_factory=SearchSpace.load)
    trials: int = Field(8, ge=1, le=10_000)
    scheduler: Literal["asha", "pbt"] = "asha"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/η of the trials at each rung")
    perturbation_interval: int = Field(1, ge=1, description="PBT: epochs between exploit/explore steps")
    max_concurrent: int | None = Field(None, ge=1, description="default: cluster CPUs (GPUs) // workers per trial")

    @model_validator(mode="after")
    def _fid_every_epoch(self) -> SweepConfig:
        # Both schedulers compare trials on FID at every epoch.
        if self.base.fid_every != 1:
            self.base = self.base.model_copy(update={"fid_every": 1})
        return self


@dataclass(frozen=True)
class TrialRow:
    """One trial in the parent run's table."""

    trial_id: str
    status: str
    run_id: str | None
    epochs: int
    best_fid: float
    last_fid: float
    checkpoint: str | None
    config: dict

    def as_dict(self) -> dict:
        return {"trial": self.trial_id, "status": self.status, "epochs": self.epochs, "best_fid": self.best_fid,
                "last_fid": self.last_fid, **{f"config/{k}": v for k, v in self.config.items()},
                "run_id": self.run_id, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    run_url: str
    trials: list[TrialRow]
    best: TrialRow


def _trial(config: dict, base: dict, parent_run_id: str, scheduler: str) -> None:
    """One Tune trial: a whole Ray Train run with the trial's hyperparameters."""
    from ray import tune

    from training.gan.trainer import train_gan

    ctx = tune.get_context()
    cfg = GanTrainConfig(**{**base, **config})
    kwargs = {"parent_run_id": parent_run_id, "run_name": ctx.get_trial_name(), "tags": {TRIAL_TAG: ctx.get_trial_id()}}
    if scheduler != "pbt":
        from ray.tune.integration.ray_train import TuneReportCallback

        train_gan(cfg, progress=print, callbacks=[TuneReportCallback()], **kwargs)
        return
    _pbt_trial(cfg, kwargs)


def _pbt_trial(cfg: GanTrainConfig, kwargs: dict) -> None:
    """PBT trial: continue from an exploited donor's checkpoint, report pointer checkpoints."""
    from queue import Empty

    from ray import tune
    from ray.util.queue import Queue

    from training.gan.trainer import train_gan

    # PBT clones a donor's *latest* checkpoint, possibly one top-k retention would delete: keep all.
    cfg = cfg.model_copy(update={"keep_checkpoints": cfg.epochs + 1})
    done = 0
    if restored := tune.get_checkpoint():
        with restored.as_directory() as path:
            pointer = json.loads((Path(path) / POINTER_FILE).read_text())
        done = pointer["epochs_done"]
        cfg = cfg.model_copy(update={"init_from": pointer["checkpoint"], "transfer_critic": True,
                                     "epochs": max(1, cfg.epochs - done)})
    queue: Queue = Queue(actor_options={"num_cpus": 0})
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            train_gan(cfg, progress=print, callbacks=[PointerReport(queue)], **kwargs)
        except BaseException as exc:  # re-raised in the trial thread, where Tune sees it
            failure.append(exc)

    worker = threading.Thread(target=fit, daemon=True)
    worker.start()
    while worker.is_alive() or not queue.empty():
        try:
            metrics = queue.get(timeout=1.0)
        except Empty:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / POINTER_FILE).write_text(json.dumps(
                {"checkpoint": metrics[TRAIN_CHECKPOINT], "epochs_done": done + int(metrics["epoch"])}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    if failure:
        raise failure[0]


class PointerReport(UserCallback):
    """Like ``TuneReportCallback``, but to a queue (``ray.util.queue.Queue``) the caller drains: each
    checkpointed report's metrics plus ``TRAIN_CHECKPOINT`` = its ``s3://`` URI (a PBT trial attaches
    them to its Tune checkpoints; the federated experiment scores every epoch's generator)."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None:
            self.queue.put({**metrics[0], TRAIN_CHECKPOINT: f"s3://{checkpoint.path}"})


def _scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    if cfg.scheduler == "asha":
        # stop_last_trials=False: a trial that reaches max_t ends by itself, after train_gan has
        # selected its checkpoint and closed its MLflow run.
        return ASHAScheduler(time_attr="training_iteration", max_t=cfg.base.epochs, stop_last_trials=False,
                             grace_period=min(cfg.grace_period, cfg.base.epochs), reduction_factor=cfg.reduction_factor)
    return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=cfg.perturbation_interval,
                                   hyperparam_mutations=cfg.space.to_tune())


def _concurrency(cfg: SweepConfig) -> int:
    import ray

    kind = "GPU" if cfg.base.use_gpu else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    return cfg.max_concurrent or max(1, have // cfg.base.workers)


def _rows(grid, client, parent_run_id: str) -> list[TrialRow]:
    """The trial table from Tune's histories, joined with the child runs by trial id."""
    children = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10_000,
    )
    by_trial = {r.data.tags.get(TRIAL_TAG): r for r in children}
    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path or "?").name
        history = result.metrics_dataframe
        scored = history[history["fid"].notna()] if history is not None and "fid" in history else None
        best = scored.loc[scored["fid"].idxmin()] if scored is not None and len(scored) else None
        child = by_trial.get(trial_id)
        config = {k: result.config[k] for k in SWEEPABLE.values() if k in (result.config or {})}
        done = int(scored["training_iteration"].max()) if best is not None else 0
        rows.append(TrialRow(
            trial_id=trial_id,
            # ASHA may stop a trial at any rung, the last (epoch == max_t) included; only a trial
            # whose train_gan returned has a FINISHED run.
            status="ERROR" if result.error else ("DONE" if child and child.info.status == "FINISHED" else "STOPPED"),
            run_id=child.info.run_id if child else None,
            epochs=done,
            best_fid=float(best["fid"]) if best is not None else math.nan,
            last_fid=float(scored["fid"].iloc[-1]) if best is not None else math.nan,
            checkpoint=checkpoint_uri(None if best is None else best.get("checkpoint_path", best.get(TRAIN_CHECKPOINT))),
            config=config,
        ))
    return rows


def _close_stopped(client, rows: list[TrialRow]) -> None:
    """Trials ASHA stopped never reached the end of train_gan (their run reads RUNNING or FAILED,
    depending on where the stop caught them): close them as KILLED, with their best checkpoint."""
    for row in rows:
        if row.status == "STOPPED" and row.run_id:
            client.set_tag(row.run_id, tag.SWEEP_STOPPED_AT_EPOCH, str(row.epochs))
            client.set_tag(row.run_id, tag.CHECKPOINT, row.checkpoint)
            client.set_terminated(row.run_id, "KILLED")


def checkpoint_uri(path: str | None) -> str | None:
    return None if path is None or path.startswith("s3://") else f"s3://{path}"


def table_markdown(rows: list[TrialRow]) -> str:
    """The trial table as Markdown, best FID first."""
    keys = sorted({k for r in rows for k in r.config})
    head = ["trial", "status", "epochs", "best FID", "last FID", *keys, "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (math.isnan(r.best_fid), r.best_fid)):
        cells = [r.trial_id, r.status, str(r.epochs), f"{r.best_fid:.3f}", f"{r.last_fid:.3f}",
                 *(_fmt(r.config.get(k)) for k in keys), r.run_id or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_sweep(cfg: SweepConfig, settings: Settings | None = None, progress: Progress = print) -> SweepResult:
    """Run the sweep and return its trial table and best trial (also written to the parent run)."""
    import pandas as pd
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from training.catalog.selection import catalog
    from training.gan.trainer import _prepare_reference

    settings = settings or get_settings()
    dataset = str(catalog(settings).resolve(cfg.base.dataset))
    cfg = cfg.model_copy(update={"base": cfg.base.model_copy(update={"dataset": dataset})})
    _, records = _check_selection_and_cluster(cfg, settings)
    _prepare_reference(cfg.base, len(records), settings, progress)  # once, before trials race for it

    mlflow = configure(settings)
    experiment = mlflow.set_experiment(cfg.base.experiment)
    client = mlflow.MlflowClient()
    path, fs = storage(settings)
    with mlflow.start_run(run_name=f"sweep-{cfg.base.arch}-{dataset}",
                          tags={tag.KIND: tag.GAN_SWEEP_KIND, tag.DATASET: dataset}) as parent:
        parent_id = parent.info.run_id
        url = run_url(settings, experiment.experiment_id, parent_id)
        progress(f"sweep: MLflow parent run {url}")
        mlflow.log_params({"trials": cfg.trials, "scheduler": cfg.scheduler, "workers_per_trial": cfg.base.workers,
                           **{f"space/{k}": v for k, v in cfg.space.describe().items()},
                           **{f"base/{k}": v for k, v in cfg.base.model_dump(exclude_none=True).items()}})
        mlflow.log_dict(cfg.space.model_dump(exclude_none=True), "sweep/search_space.json")
        concurrent = _concurrency(cfg)
        progress(f"sweep: {cfg.trials} trials, {cfg.scheduler.upper()} on FID, {concurrent} at a time, "
                 f"{cfg.base.workers} worker(s) each")
        trainable = tune.with_parameters(_trial, base=cfg.base.model_dump(), parent_run_id=parent_id,
                                         scheduler=cfg.scheduler)
        tuner = tune.Tuner(
            # The trial function only drives Train, whose workers reserve the CPUs/GPUs; a bundle
            # cannot be empty, so the driver asks for (logical) memory instead of a CPU.
            tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}),
            param_space=cfg.space.to_tune(),
            tune_config=tune.TuneConfig(metric="fid", mode="min", scheduler=_scheduler(cfg), num_samples=cfg.trials,
                                        # The run's seed also seeds the draws, so a sweep can be repeated. The
                                        # generator carries the concurrency limit (Tune ignores
                                        # max_concurrent_trials next to a SearchGenerator).
                                        search_alg=BasicVariantGenerator(random_state=cfg.base.seed,
                                                                         max_concurrent=concurrent)),
            run_config=tune.RunConfig(name=f"sweep-{parent_id}", storage_path=path, storage_filesystem=fs,
                                      verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        grid = tuner.fit()
        rows = _rows(grid, client, parent_id)
        _close_stopped(client, rows)
        scored = [r for r in rows if not math.isnan(r.best_fid)]
        if not scored:
            errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error)
            raise RuntimeError(f"sweep {parent_id}: no trial reported a FID ({errors or 'no errors recorded'})")
        best = min(scored, key=lambda r: r.best_fid)
        frame = pd.DataFrame([r.as_dict() for r in rows])
        mlflow.log_text(frame.to_csv(index=False), "sweep/trials.csv")
        mlflow.log_text(table_markdown(rows), "sweep/trials.md")
        mlflow.log_metric("best_fid", best.best_fid)
        mlflow.set_tags({tag.SWEEP_BEST_TRIAL: best.trial_id, tag.SWEEP_BEST_RUN_ID: best.run_id or "",
                         tag.CHECKPOINT: best.checkpoint or "",
                         **{f"synthray.sweep.best.{k}": str(v) for k, v in best.config.items()}})
    return SweepResult(parent_run_id=parent_id, run_url=url, trials=rows, best=best)


def _check_selection_and_cluster(cfg: SweepConfig, settings: Settings):
    from training.gan.preflight import check_run
    from training.gan.trainer import _check_cluster

    batch = cfg.space.batch_size.largest() if cfg.space.batch_size else None
    # dataset, selection, stored size, largest batch, FID reference and --init-from: before any trial
    checked = check_run(cfg.base.model_copy(update={"batch_size": int(batch) if batch else None}), settings)
    selection = checked.manifest, checked.records
    connect(settings)
    _check_cluster(cfg.base)
    return selection
