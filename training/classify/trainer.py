"""Classifier training on Ray Train (the driver side): a list of runs in one worker group.

:func:`fit_classifiers` puts the images in the object store once, launches one ``TorchTrainer``
(gloo on CPU, NCCL with ``use_gpu``) that works through the jobs (:mod:`training.classify.loop`),
and returns every job's result plus the model with the lowest validation loss, ready to register.
:func:`train_classifier` is the single-run case behind ``synthray train classifier``.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

import numpy as np

from infra.ray_runtime import connect, storage
from infra.worker_progress import WorkerProgress
from infra.train_failures import fit_or_input_error, torch_trainer
from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from training.classify.config import ClassifierTrainConfig
from training.classify.loop import (
    ClassifierData,
    ClassifierJob,
    JobResult,
    build_classifier,
    load_results,
    train_loop,
)
from infra.errors import BadInput
from training.registry import tags as tag
from infra.progress import Progress

CLASSIFIER_EXPERIMENT = "synthray-classifier"


@dataclass(frozen=True)
class FitResult:
    results: dict[str, JobResult]
    best_key: str
    best_state: dict


def classifier_name(dataset: str, arch: str) -> str:
    """Registry name of a dataset's classifier: ``classifier-{dataset name}-{arch}``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"classifier-{dataset.split('@')[0]}-{arch}")


def pretrained_tags(cfg: ClassifierTrainConfig) -> dict[str, str]:
    """Where the starting weights came from; "from scratch" is said explicitly."""
    from training.classify.pretrained import FROM_SCRATCH_TAGS

    if not cfg.pretrained:
        return dict(FROM_SCRATCH_TAGS)
    return {tag.PRETRAINED: cfg.pretrained, tag.PRETRAINED_SHA256: str(cfg.pretrained_sha256)}


def check_inputs(cfg: ClassifierTrainConfig, classes: list[str], settings: Settings | None = None) -> None:
    """Driver-side: build the model the workers will build, pretrained weights included
    (exists, sha256, fits the architecture), so a bad input is one line before any worker starts."""
    if not classes:
        raise BadInput("the dataset has no classes to train on")
    if cfg.pretrained:
        from training.classify.pretrained import load_pretrained

        load_pretrained(cfg.preset().build(len(classes), multilabel=cfg.multilabel), cfg.pretrained,
                        str(cfg.pretrained_sha256), settings)


def _check_cluster(cfg: ClassifierTrainConfig) -> None:
    import ray

    kind = "GPU" if cfg.use_gpu else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if cfg.workers > have:
        raise BadInput(f"--workers {cfg.workers} needs {cfg.workers} {kind}s but the Ray cluster has {have}")


def fit_classifiers(
    cfg: ClassifierTrainConfig,
    classes: list[str],
    data: ClassifierData,
    jobs: list[ClassifierJob],
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
        classes: class names in label order.
        data: the training pool and the real validation/test sets (and synthetic test sets).
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
    for job in jobs:
        if len(job.train_index) < cfg.workers:
            raise BadInput(f"run {job.key!r} has {len(job.train_index)} training images, fewer than "
                             f"{cfg.workers} worker(s)")
    check_inputs(cfg, list(classes), settings)
    connect(settings)
    _check_cluster(cfg)
    path, fs = storage(settings)
    # rank 0 sends its epochs to a bar drawn here (workers' own output stays in Ray's logs)
    with WorkerProgress("classifier: runs x epochs", unit="epoch") as relay:
        trainer = torch_trainer(  # a worker's input error is final, not retried
            train_loop,
            train_loop_config={"config": cfg.model_dump(), "classes": list(classes), "data": ray.put(data),
                               "jobs": [asdict(j) for j in jobs], "parent_run_id": parent_run_id,
                               "experiment_id": experiment_id, "tags": tags or {}, "progress": relay.sink},
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
            run_config=ray.train.RunConfig(
                name=f"classifiers-{parent_run_id}", storage_path=path, storage_filesystem=fs,
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            ),
        )
        started = time.perf_counter()
        progress(f"classifier: {len(jobs)} run(s) of {cfg.arch} on {cfg.workers} worker(s)")
        result = fit_or_input_error(trainer)
    progress(f"classifier: {len(jobs)} run(s) in {time.perf_counter() - started:.0f} s")
    with result.checkpoint.as_directory() as ckpt:
        results, best = load_results(ckpt)
    missing = [j.key for j in jobs if j.key not in results]
    if missing or best is None:
        raise RuntimeError(f"classifier training ended without results for {missing or 'any run'}")
    return FitResult(results=results, best_key=best["key"], best_state=best["state"])


def register_classifier(cfg: ClassifierTrainConfig, classes: list[str], fit: FitResult, name: str, *,
                        settings: Settings | None = None, tags: dict[str, str] | None = None,
                        alias: str = "champion", description: str = ""):
    """Register the lowest-validation-loss model of ``fit`` in the run that trained it."""
    from training.registry.classifiers import log_classifier

    model = build_classifier(cfg.model_copy(update={"pretrained": None, "pretrained_sha256": None}), classes, 0)
    model.load_state_dict(fit.best_state)
    best = fit.results[fit.best_key]
    metric_tags = {f"test.{k}": f"{v:.6f}" for k, v in best.test_metrics.items() if np.isfinite(v)}
    return log_classifier(model, name, alias=alias, settings=settings, run_id=best.run_id, description=description,
                          tags={"run_id": best.run_id, "cell": best.cell, "seed": str(best.seed),
                                "best_epoch": str(best.best_epoch), "val_loss": f"{best.val_loss:.6f}",
                                **metric_tags, **(tags or {})})


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """Stored pixels as the uint8 the classifiers take: 16-bit images (NIfTI slices, 16-bit DICOM)
    are mapped v → round(v / 257), the same [0, 1] scale the GANs train on (v / 65535) and
    render at (× 255), so a domain classifier trained on real 16-bit slices scores 8-bit fakes
    on the scale it learned."""
    if pixels.dtype == np.uint16:
        return np.round(pixels / 257.0).astype(np.uint8)
    return pixels


def training_targets(manifest, pools, label_from: str | None = None) -> tuple[list[str], list[np.ndarray]]:
    """(class or finding names, one target array per pool) of a training request.

    Class indices of ``record.label`` by default; float multi-hot (N, K) of a multi-label
    version (-1 where ``--uncertain ignore`` masked a finding); or, with ``attribute=NAME``,
    the indices of the attribute's values among all the version's values (sorted, numerically
    when they are all integers, so slice 2 precedes slice 10).

    Raises:
        BadInput: a malformed ``label_from``, an attribute a record lacks, or fewer than 2 values.
    """
    if label_from is None:
        if manifest.multilabel:
            targets = []
            for records in pools:
                multi_hot, mask = manifest.multi_hot(records)
                targets.append(np.where(mask > 0, multi_hot, -1.0).astype(np.float32))
            return list(manifest.findings), targets
        return list(manifest.classes), [np.array([r.label for r in records], dtype=np.int64) for records in pools]
    kind, _, key = label_from.partition("=")
    if kind != "attribute" or not key:
        raise BadInput(f"--label-from {label_from!r}: use attribute=NAME, e.g. attribute=slice_index",
                       field="label_from")
    missing = next((r for r in manifest.records if key not in r.attributes), None)
    if missing is not None:
        known = sorted({k for r in manifest.records for k in r.attributes})
        raise BadInput(f"--label-from {label_from}: record {missing.source_path} of {manifest.ref} has no attribute "
                       f"{key!r} (attributes: {', '.join(known)})", field="label_from")
    values = {r.attributes[key] for r in manifest.records}
    classes = sorted(values, key=lambda v: (0, int(v), v) if v.isdigit() else (1, 0, v))
    if len(classes) < 2:
        raise BadInput(f"--label-from {label_from}: {manifest.ref} has one value ({classes}); a classifier needs two",
                       field="label_from")
    index = {v: i for i, v in enumerate(classes)}
    return classes, [np.array([index[r.attributes[key]] for r in records], dtype=np.int64) for records in pools]


def train_classifier(
    cfg: ClassifierTrainConfig,
    dataset: str,
    *,
    splits: tuple[str, str, str] = ("train", "val", "test"),
    seed: int = 0,
    register: bool = True,
    settings: Settings | None = None,
    progress: Progress = print,
    label_from: str | None = None,
):
    """Train one classifier on a dataset's real splits; register it as ``champion`` when asked.

    The targets are the records' classes; a multi-label version's multi-hot findings (the
    multi-label head then trains with BCE, uncertain findings masked); or, with
    ``label_from="attribute=NAME"``, the values of a record attribute (the knee-MRI paper's
    domain classifier for AM/Mode scores learns ``attribute=slice_index`` of NIfTI slices).

    Returns ``(FitResult, RegisteredClassifier | None, parent run URL)``.
    """
    from training.catalog.selection import catalog

    settings = settings or get_settings()
    manifest = catalog(settings).manifest(dataset)
    pools = [manifest.select(split=s) for s in splits]
    for split, records in zip(splits, pools, strict=True):
        if not records:
            raise BadInput(f"dataset {manifest.ref} has no images in split {split!r}")
    classes, labels = training_targets(manifest, pools, label_from)
    if labels[0].ndim == 2 and not cfg.multilabel:
        cfg = cfg.model_copy(update={"multilabel": True})  # multi-hot targets need the multi-label head
    check_inputs(cfg, classes, settings)  # before pixels are read or a run is opened
    cat = catalog(settings)
    arrays = [to_8bit(cat.read_pixels(records)) for records in pools]
    data = ClassifierData(arrays[0], labels[0], arrays[1], labels[1], arrays[2], labels[2])
    job = ClassifierJob(key=f"real/seed {seed}", cell="real", seed=seed, train_index=np.arange(len(arrays[0])),
                        params={"dataset": str(manifest.ref), "n_real": len(arrays[0]), "n_synthetic": 0,
                                **cfg.hyperparameters()})
    tags = {tag.DATASET: str(manifest.ref), **pretrained_tags(cfg)}
    mlflow = configure(settings)
    experiment = mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name=f"classifier-{cfg.arch}-{manifest.ref}",
                          tags={tag.KIND: tag.CLASSIFIER_KIND, **tags}) as parent:
        url = run_url(settings, experiment.experiment_id, parent.info.run_id)
        progress(f"classifier: MLflow run {url}")
        fit = fit_classifiers(cfg, classes, data, [job], parent_run_id=parent.info.run_id,
                              experiment_id=experiment.experiment_id, settings=settings, tags=tags, progress=progress)
    reg = None
    if register:
        name = classifier_name(str(manifest.ref), cfg.arch) + (f"-{label_from.partition('=')[2]}" if label_from else "")
        reg = register_classifier(cfg, classes, fit, name, settings=settings,
                                  tags={"dataset": str(manifest.ref), **tags,
                                        **({"label_from": label_from} if label_from else {})})
        progress(f"classifier: registered {reg.uri} (alias champion)")
    return fit, reg, url
