"""Distributed GAN training on Ray Train, tracked in MLflow (the driver side).

:func:`train_gan` checks the request against the catalog and the cluster (fails fast with
one line), computes or loads the training selection's FID reference statistics, opens an
MLflow run, launches a ``TorchTrainer`` (DDP over gloo on CPU, NCCL with ``use_gpu``; the same
``ScalingConfig`` from 2 CPU workers to N GPUs), checkpoints to the object store keeping the
top-k by FID, and returns the selected (best-FID) generator as a :class:`GeneratorSampler`.
The worker loop is :mod:`training.gan.loop`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.catalog.store import Catalog
from infra.ray_runtime import connect, storage
from infra.worker_progress import WorkerProgress
from infra.train_failures import fit_or_input_error, torch_trainer
from infra.settings import PROJECT_ROOT, Settings, get_settings
from infra.tracking import configure, run_url
from training.gan.config import GanTrainConfig
from training.gan.loop import _load_state, train_loop
from training.nets.sampler import GeneratorSampler
from infra.errors import BadInput
from training.registry import tags as tag

__all__ = ["GanTrainConfig", "GanTrainResult", "load_sampler", "train_gan"]


@dataclass(frozen=True)
class GanTrainResult:
    run_id: str
    experiment_id: str
    run_url: str
    checkpoint_path: str  # the selected (best-FID, else latest) checkpoint
    dataset: str
    sampler: GeneratorSampler
    metrics: dict  # of the selected checkpoint
    floor: object | None = None  # RealFloor of the FID reference (None without FID)


def load_sampler(checkpoint_dir: str | Path, arch: str | None = None) -> GeneratorSampler:
    """Rebuild the generator of a checkpoint directory as a registrable sampler."""
    return sampler_from_state(_load_state(checkpoint_dir), arch)


def sampler_from_state(state: dict, arch: str | None = None, classes: list[str] | None = None,
                       raw: bool = False) -> GeneratorSampler:
    """The generator of a loaded checkpoint state; ``classes`` names the dataset's classes.

    This is the EMA generator (``generator_ema``), which every grid, FID, registration and
    served image uses; ``raw=True`` (or a checkpoint from before EMA existed) gives the raw G.
    """
    preset = GanTrainConfig(**{**state["config"], **({"arch": arch} if arch else {})}).preset()
    gen, _ = preset.build(state.get("num_classes"))
    gen.load_state_dict(state["generator"] if raw or not state.get("generator_ema") else state["generator_ema"])
    class_index = state["config"].get("class_label")
    return GeneratorSampler(gen, preset.latent_dim, class_index=class_index,
                            class_name=None if classes is None or class_index is None else classes[class_index],
                            num_classes=state.get("num_classes") if preset.conditional else None,
                            multilabel=bool(state.get("multilabel")),
                            mask_classes=state["config"].get("mask_classes") if preset.mask_channels else None)


def _git_commit() -> str:
    """The checkout's commit, found from the package (MLflow's own guess uses sys.argv[0])."""
    from mlflow.utils.git_utils import get_git_commit

    return get_git_commit(str(PROJECT_ROOT)) or "unknown"


def _check_cluster(cfg: GanTrainConfig) -> None:
    """More workers than the cluster has CPUs (or GPUs) would wait forever for resources."""
    import ray

    kind = "GPU" if cfg.use_gpu else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if cfg.workers > have:
        raise BadInput(f"--workers {cfg.workers} needs {cfg.workers} {kind}s but the Ray cluster has {have}")


def _fid_curve(client, run_id: str, floors: dict | None = None) -> None:
    """FID against epoch as a PNG artifact (from the run's own history, so resumes are included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted({m.step: m.value for m in client.get_metric_history(run_id, "fid")}.items())
    quick = sorted({m.step: m.value for m in client.get_metric_history(run_id, "fid_quick")}.items())
    if not points and not quick:
        return
    fig = fid_curve_figure(points, quick, floors or {})
    client.log_figure(run_id, fig, "plots/fid_curve.png")
    plt.close(fig)


def fid_curve_figure(points: list[tuple[int, float]], quick: list[tuple[int, float]], floors: dict):
    """FID per epoch (log scale) with each n's real-vs-real floor as a dashed line.

    ``floors`` maps ``"fid"``/``"fid_quick"`` to a :class:`~training.evaluate.floor.RealFloor`.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=120)
    for key, series, color in (("fid", points, "C0"), ("fid_quick", quick, "C1")):
        floor = floors.get(key)
        if series:
            n = f" (n = {floor.n})" if floor else ""
            ax.plot(*zip(*series), marker="o", color=color, label=("FID" if key == "fid" else "quick FID") + n)
        if floor is not None and series:
            ax.axhline(floor.fid, color=color, linestyle="--", linewidth=1,
                       label=f"real-vs-real floor {floor.fid:.1f} (n = {floor.n})")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="FID (lower is better, log)", title="FID of the EMA generator vs its floor")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _select_checkpoint(result):
    """Best finite FID among the kept checkpoints, else the latest."""
    scored = [(m.get("fid"), c, m) for c, m in (result.best_checkpoints or [])
              if m.get("fid") is not None and np.isfinite(m.get("fid"))]
    if scored:
        _, checkpoint, metrics = min(scored, key=lambda t: t[0])
        return checkpoint, metrics
    return result.checkpoint, dict(result.metrics or {})


def train_gan(
    cfg: GanTrainConfig,
    settings: Settings | None = None,
    progress: Callable[[str], None] = print,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: Sequence = (),
) -> GanTrainResult:
    """Train on Ray Train and return the run and its selected generator.

    Args:
        cfg: dataset, architecture, epochs, workers and hyperparameter overrides.
        settings: where Ray, MLflow and the object store are.
        progress: receives human-readable progress lines (workers log epochs too).
        parent_run_id: MLflow run this one is a child of (a sweep's parent run).
        run_name: MLflow run name (default: ``{arch}-{dataset}``).
        tags: extra MLflow run tags.
        callbacks: Ray Train ``UserCallback``s (a Tune trial passes ``TuneReportCallback``).
    """
    import ray.train
    from ray.train.torch import TorchConfig

    settings = settings or get_settings()
    preset = cfg.preset()
    from training.catalog.selection import catalog

    dataset = str(catalog(settings).resolve(cfg.dataset))  # pin the version for the run
    cfg = cfg.model_copy(update={"dataset": dataset})
    from training.gan.preflight import check_run

    checked = check_run(cfg, settings)  # every input, before the cluster is even joined
    manifest, records = checked.manifest, checked.records
    if checked.mask_classes:  # paired run: G emits 1 + K channels (training.nets.masks)
        cfg = cfg.model_copy(update={"mask_classes": checked.mask_classes})
        preset = cfg.preset()
    connect(settings)
    _check_cluster(cfg)
    # A multi-label version conditions on its K findings (multi-hot), not on its label sets.
    multilabel = preset.conditional and manifest.multilabel
    num_classes = (len(manifest.findings) if multilabel else len(manifest.classes)) if preset.conditional else 1
    loop_config: dict = {"config": cfg.model_dump(), "num_classes": num_classes, "multilabel": multilabel}
    if cfg.fid_every:
        loop_config |= _prepare_reference(cfg, len(records), settings, progress)

    mlflow = configure(settings)
    experiment = mlflow.set_experiment(cfg.experiment)
    storage_path, filesystem = storage(settings)
    # WorkerProgress: rank 0 sends its epochs and steps to a bar drawn here (workers' own output
    # stays in Ray's log files unless --verbose).
    with mlflow.start_run(run_name=run_name or f"{cfg.arch}-{dataset}", parent_run_id=parent_run_id,
                          tags=tags) as run, WorkerProgress("train", unit="step") as relay:
        run_id = run.info.run_id
        mlflow.log_params({**cfg.model_dump(exclude_none=True), **cfg.hyperparameters(),
                           "num_classes": num_classes, "n_train": len(records)})
        mlflow.set_tags({tag.DATASET: dataset, tag.DATASET_MANIFEST_SHA256: manifest.ref.version,
                         tag.DATASET_MANIFEST_KEY: Catalog.manifest_key(manifest.name, manifest.version),
                         tag.KIND: tag.GAN_TRAINING_KIND, "mlflow.source.git.commit": _git_commit(),
                         **({tag.FID_REFERENCE_KEY: loop_config["reference_key"]} if cfg.fid_every else {})})
        if cfg.fid_every:
            floors = loop_config["floors"]
            mlflow.log_metrics({f"{k}_floor": f.fid for k, f in floors.items()})
            mlflow.log_params({f"{k}_floor_n": f.n for k, f in floors.items()})
        url = run_url(settings, experiment.experiment_id, run_id)
        progress(f"train: MLflow run {url}")
        from training.gan import progressive_loop

        trainer = torch_trainer(  # a worker's input error is final, not retried
            progressive_loop.train_loop if preset.progressive else train_loop,
            train_loop_config=loop_config | {"run_id": run_id, "progress": relay.sink},
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
            run_config=ray.train.RunConfig(
                name=f"gan-{run_id}",
                callbacks=list(callbacks),
                storage_path=storage_path,
                storage_filesystem=filesystem,
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=cfg.keep_checkpoints,
                    checkpoint_score_attribute="fid" if cfg.fid_every else None,
                    checkpoint_score_order="min",
                ),
            ),
        )
        started = time.perf_counter()
        result = fit_or_input_error(trainer)
        progress(f"train: {cfg.epochs} epoch(s) on {cfg.workers} worker(s) in {time.perf_counter() - started:.0f} s")
        checkpoint, metrics = _select_checkpoint(result)
        checkpoint_path = f"s3://{checkpoint.path}"
        mlflow.set_tags({tag.CHECKPOINT: checkpoint_path, tag.CHECKPOINT_LATEST: f"s3://{result.checkpoint.path}",
                         tag.CHECKPOINT_EPOCH: str(metrics.get("epoch"))})
        if np.isfinite(metrics.get("fid", np.nan)):
            mlflow.log_metric("best_fid", metrics["fid"], step=int(metrics["epoch"]))
        if cfg.fid_every:
            _fid_curve(mlflow.MlflowClient(), run_id, loop_config.get("floors"))
        with checkpoint.as_directory() as ckpt_dir:
            sampler = load_sampler(ckpt_dir, cfg.arch)
    return GanTrainResult(
        run_id=run_id, experiment_id=experiment.experiment_id, run_url=url,
        checkpoint_path=checkpoint_path, dataset=dataset, sampler=sampler, metrics=metrics,
        floor=loop_config.get("floor"),
    )


def _prepare_reference(cfg: GanTrainConfig, n_train: int, settings: Settings, progress) -> dict:
    """Compute (or find cached) reference statistics once, on the driver, before the workers start."""
    from training.evaluate import reference_statistics

    from training.evaluate.floor import derive_reference, real_floor

    from training.gan.preflight import reference_request

    kwargs = reference_request(cfg, n_train)
    # One Inception pass over the first min(2n, N) images serves the reference (its first n rows),
    # the real-vs-real floor (the next n) and the quick per-epoch reference (a prefix).
    wide = reference_statistics(**{**kwargs, "n": min(2 * kwargs["n"], n_train)}, settings=settings)
    ref = derive_reference(wide, kwargs["n"], settings)
    floor = real_floor(ref, settings, superset=wide)
    said = (f"train: FID reference {ref.key} ({ref.n} real images, {'cached' if wide.cached else 'computed'}); "
            f"{floor.describe()} ({floor.method})")
    out = {"reference": kwargs, "reference_key": ref.key, "floor": floor, "floors": {"fid": floor}}
    if cfg.fid_quick_n:
        n_quick = min(cfg.fid_quick_n, kwargs["n"])
        quick = derive_reference(wide, n_quick, settings)
        quick_floor = real_floor(quick, settings, superset=wide)
        said += f"; quick FID every epoch at n = {n_quick}, {quick_floor.describe()}"
        out |= {"reference_quick": {**kwargs, "n": n_quick}, "floor_quick": quick_floor,
                "floors": {"fid": floor, "fid_quick": quick_floor}}
    progress(said)
    return out
