"""Segmenter training on Ray Train (the driver side): a list of runs in one worker group.

:func:`fit_segmenters` puts images and masks in the object store once, launches one
``TorchTrainer`` (gloo on CPU, NCCL with ``use_gpu``; checkpoints in S3) that works through
the jobs (:mod:`training.segment.loop`), and returns every job's result plus the model with
the highest validation Dice, ready to register. :func:`train_segmenter` is the single-run case
behind ``synthray train segmenter``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from infra.errors import BadInput
from infra.progress import Progress
from infra.ray_runtime import connect, require_workers, storage
from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from infra.train_failures import fit_or_input_error, torch_trainer
from training.registry import tags as tag
from training.registry.segmenters import segmenter_name
from training.segment.config import SegmenterTrainConfig
from training.segment.loop import SegmenterData, SegmenterJob, SegmenterResult, build_segmenter, load_results, train_loop


@dataclass(frozen=True)
class FitResult:
    results: dict[str, SegmenterResult]
    best_key: str
    best_state: dict


def mask_data(manifest, splits: tuple[str, str, str] = ("train", "val", "test"), settings: Settings | None = None
              ) -> SegmenterData:
    """Images and masks of a dataset's three splits; every record of them must carry a mask.

    Raises:
        BadInput: the dataset has no mask classes, a split is empty, or a record has no mask.
    """
    from training.catalog.selection import catalog

    pools = [manifest.select(split=s) for s in splits]
    check_masks(manifest, dict(zip(splits, pools, strict=True)))
    cat = catalog(settings)
    arrays = [(cat.read_pixels(records), cat.read_masks(records)) for records in pools]
    return SegmenterData(arrays[0][0], arrays[0][1], arrays[1][0], arrays[1][1], arrays[2][0], arrays[2][1])


def check_masks(manifest, splits: dict) -> None:
    """Every split (name → records of ``manifest``) has images, and every image has a mask.

    Raises:
        BadInput: naming the dataset, the split and an example image.
    """
    if not manifest.mask_classes:
        raise BadInput(f"dataset {manifest.ref} has no masks (ingest it with masks, e.g. "
                       f"`synthray catalog phantom --masks`)", field="dataset")
    for split, records in splits.items():
        if not records:
            raise BadInput(f"dataset {manifest.ref} has no images in split {split!r}", field="dataset")
        if missing := [r.source_path for r in records if r.mask_sha256 is None]:
            raise BadInput(f"dataset {manifest.ref}: {len(missing)} image(s) of split {split!r} have no mask "
                           f"(e.g. {missing[0]})", field="dataset")


def fit_segmenters(
    cfg: SegmenterTrainConfig,
    classes: list[str],
    data: SegmenterData,
    jobs: list[SegmenterJob],
    *,
    parent_run_id: str,
    experiment_id: str,
    settings: Settings | None = None,
    tags: dict[str, str] | None = None,
    progress: Progress = print,
) -> FitResult:
    """Train every job on Ray Train; child MLflow runs of ``parent_run_id``.

    Args:
        cfg: architecture, optimisation, workers.
        classes: mask class names, index = label value, 0 = background.
        data: the training pool and the real validation/test sets, with masks.
        jobs: runs to train; their ``train_index`` points into ``data.pool_images``.
        parent_run_id, experiment_id: where the child runs go.
        settings: where Ray, MLflow and the object store are.
        tags: extra tags of every child run.
        progress: receives progress lines (workers log epochs too).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig

    settings = settings or get_settings()
    if len({j.key for j in jobs}) != len(jobs):
        raise BadInput("job keys must be unique")
    if len(classes) < 2:
        raise BadInput("a segmenter needs the background and at least one class")
    for job in jobs:
        if len(job.train_index) < cfg.workers:
            raise BadInput(f"run {job.key!r} has {len(job.train_index)} training images, fewer than "
                           f"{cfg.workers} worker(s)")
    connect(settings)
    require_workers(cfg.workers, cfg.use_gpu)
    path, fs = storage(settings)
    trainer = torch_trainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(), "classes": list(classes), "data": ray.put(data),
                           "jobs": [asdict(j) for j in jobs], "parent_run_id": parent_run_id,
                           "experiment_id": experiment_id, "tags": tags or {}},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=ray.train.RunConfig(
            name=f"segmenters-{parent_run_id}", storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    started = time.perf_counter()
    progress(f"segmenter: {len(jobs)} run(s) of {cfg.arch} on {cfg.workers} worker(s)")
    result = fit_or_input_error(trainer)
    progress(f"segmenter: {len(jobs)} run(s) in {time.perf_counter() - started:.0f} s")
    with result.checkpoint.as_directory() as ckpt:
        results, best = load_results(ckpt)
    missing = [j.key for j in jobs if j.key not in results]
    if missing or best is None:
        raise RuntimeError(f"segmenter training ended without results for {missing or 'any run'}")
    return FitResult(results=results, best_key=best["key"], best_state=best["state"])


def register_segmenter(cfg: SegmenterTrainConfig, classes: list[str], fit: FitResult, name: str, *,
                       settings: Settings | None = None, tags: dict[str, str] | None = None,
                       alias: str = "champion", description: str = ""):
    """Register the highest-validation-Dice model of ``fit`` in the run that trained it."""
    from training.registry.segmenters import log_segmenter

    model = build_segmenter(cfg, classes, 0)
    model.load_state_dict(fit.best_state)
    best = fit.results[fit.best_key]
    metric_tags = {f"test.{k}": f"{v:.6f}" for k, v in best.test_metrics.items() if np.isfinite(v)}
    return log_segmenter(model, name, alias=alias, settings=settings, run_id=best.run_id, description=description,
                         tags={"run_id": best.run_id, "cell": best.cell, "seed": str(best.seed),
                               "best_epoch": str(best.best_epoch), "val_dice": f"{best.val_dice:.6f}",
                               **metric_tags, **(tags or {})})


def train_segmenter(
    cfg: SegmenterTrainConfig,
    dataset: str,
    *,
    splits: tuple[str, str, str] = ("train", "val", "test"),
    seed: int = 0,
    register: bool = True,
    settings: Settings | None = None,
    progress: Progress = print,
):
    """Train one segmenter on a dataset's real image + mask splits; register it as ``champion`` when asked.

    Returns ``(FitResult, RegisteredSegmenter | None, parent run URL)``.
    """
    from training.catalog.selection import catalog

    settings = settings or get_settings()
    manifest = catalog(settings).manifest(dataset)
    data = mask_data(manifest, splits, settings)
    classes = list(manifest.mask_classes)
    job = SegmenterJob(key=f"real/seed {seed}", cell="real", seed=seed, train_index=np.arange(len(data.pool_images)),
                       params={"dataset": str(manifest.ref), "n_real": len(data.pool_images), "n_synthetic": 0,
                               "classes": ",".join(classes), **cfg.hyperparameters()})
    tags = {tag.DATASET: str(manifest.ref)}
    mlflow = configure(settings)
    experiment = mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name=f"segmenter-{cfg.arch}-{manifest.ref}",
                          tags={tag.KIND: tag.SEGMENTER_KIND, **tags}) as parent:
        url = run_url(settings, experiment.experiment_id, parent.info.run_id)
        progress(f"segmenter: MLflow run {url}")
        fit = fit_segmenters(cfg, classes, data, [job], parent_run_id=parent.info.run_id,
                             experiment_id=experiment.experiment_id, settings=settings, tags=tags, progress=progress)
    reg = None
    if register:
        reg = register_segmenter(cfg, classes, fit, segmenter_name(str(manifest.ref), cfg.arch), settings=settings,
                                 tags={"dataset": str(manifest.ref), **tags})
        progress(f"segmenter: registered {reg.uri} (alias champion)")
    return fit, reg, url
