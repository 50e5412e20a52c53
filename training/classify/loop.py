"""The Ray Train worker loop of classifier training: a list of runs, one worker group, DDP.

An augmentation experiment is dozens of small runs (cells × seeds). Starting a worker group
per run would cost more than the runs on CPU, so one ``TorchTrainer`` works through the whole
list: for each run every worker builds the same seeded model, trains on its slice of the run's
training indices (DDP averages gradients), and after every epoch scores the full validation
set; the epoch with the lowest validation loss is the model (knee paper). Rank 0 alone talks
to MLflow (one child run per job) and writes a checkpoint after each finished run holding all
results so far and the best model by validation loss, so a restarted group skips finished runs.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from infra.seeds import torch_seed
from infra.settings import get_settings
from infra.tracking import configure
from training.classify.config import ClassifierTrainConfig
from training.nets.classifier import ImageClassifier
from training.registry import tags as tag

RESULTS_FILE, MODEL_FILE = "results.pt", "best_model.pt"
EVAL_CHUNK = 256  # images per forward pass when scoring (bounded memory)
log = logging.getLogger("synthray.classifier")


@dataclass(frozen=True)
class ClassifierJob:
    """One training run: which images of the pool it trains on, and how it is labelled in MLflow.

    Args:
        key: unique within the list (the checkpoint and the results are keyed by it).
        cell: the experiment cell (e.g. ``+50 %``).
        seed: seeds weights, data order and dropout.
        train_index: indices into the training pool.
        params, tags: logged on the job's MLflow run.
        synthetic_eval: also score the synthetic test sets (train-on-real/test-on-synthetic).
    """

    key: str
    cell: str
    seed: int
    train_index: np.ndarray
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    synthetic_eval: bool = False


@dataclass
class JobResult:
    """What a finished run leaves behind; probabilities are of the best-validation-loss epoch."""

    key: str
    cell: str
    seed: int
    run_id: str
    best_epoch: int
    val_loss: float
    val_proba: np.ndarray
    test_proba: np.ndarray
    test_metrics: dict
    synthetic_proba: dict = field(default_factory=dict)  # synthetic test set name → probabilities


@dataclass(frozen=True)
class ClassifierData:
    """uint8 images ``(N, H, W)`` and labels: the training pool, real val/test, synthetic tests.

    Labels are int class indices ``(N,)``, or float multi-hot targets ``(N, K)`` of a multi-label
    dataset (-1 marks an uncertain finding masked out of the loss).
    """

    pool_images: np.ndarray
    pool_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    synthetic_tests: dict = field(default_factory=dict)  # name → (images, labels)


def build_classifier(cfg: ClassifierTrainConfig, classes: list[str], seed: int) -> ImageClassifier:
    """A fresh seeded classifier of the preset (pretrained weights loaded when configured)."""
    preset = cfg.preset()
    torch.manual_seed(seed)
    backbone = preset.build(len(classes), multilabel=cfg.multilabel)
    if cfg.pretrained:
        from training.classify.pretrained import load_pretrained

        load_pretrained(backbone, cfg.pretrained, cfg.pretrained_sha256, get_settings())
    return ImageClassifier(backbone, classes, image_size=preset.image_size, in_channels=preset.in_channels,
                           head=preset.head_for(len(classes), cfg.multilabel))


def _batches(n: int, size: int):
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


@torch.no_grad()
def score(model: ImageClassifier, images: np.ndarray, labels: np.ndarray, device) -> tuple[float, np.ndarray]:
    """(mean loss, class probabilities) of ``images`` in eval mode."""
    model.eval()
    total, probas = 0.0, []
    for part in _batches(len(images), EVAL_CHUNK):
        x = model.preprocess(images[part]).to(device)
        y = torch.as_tensor(labels[part], device=device)
        logits = model(x)
        total += float(model.loss(logits, y, reduction="sum"))
        proba = model.probabilities(logits)
        if model.head == "multilabel" and y.ndim == 1:  # single-label metrics need a distribution over the classes
            proba = proba / proba.sum(1, keepdim=True)
        probas.append(proba.cpu().numpy())
    return total / max(len(images), 1), np.concatenate(probas)


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This worker's positions for one epoch: one seeded shuffle shared by all, then a strided slice.

    The slice is cut to the same length on every worker so DDP's collective calls line up.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_worker = n // world
    return order[rank::world][:per_worker]


def train_job(model, job: ClassifierJob, data: ClassifierData, hp: dict, device, rank: int, world: int,
              on_epoch=None) -> tuple[dict, int, float]:
    """Train one job; returns (best state dict, best epoch, best validation loss)."""
    bare = getattr(model, "module", model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    batch = max(1, hp["batch_size"] // world)
    best = (copy.deepcopy(bare.state_dict()), 0, math.inf)
    for epoch in range(hp["epochs"]):
        torch.manual_seed(torch_seed(job.seed, epoch, rank))  # all bits of seed, epoch and rank
        model.train()
        order = job.train_index[epoch_order(len(job.train_index), job.seed, epoch, rank, world)]
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        for part in _batches(len(order), batch):
            idx = np.sort(order[part])
            x = bare.preprocess(data.pool_images[idx]).to(device)
            y = torch.as_tensor(data.pool_labels[idx], device=device)
            loss = bare.loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        val_loss, val_proba = score(bare, data.val_images, data.val_labels, device)
        if val_loss < best[2]:
            best = (copy.deepcopy(bare.state_dict()), epoch + 1, val_loss)
        if on_epoch:
            val_acc = _accuracy(data.val_labels, val_proba)
            on_epoch(epoch + 1, {"train_loss": loss_sum / max(seen, 1), "val_loss": val_loss, "val_accuracy": val_acc,
                                 "images_per_s": world * seen / max(time.perf_counter() - started, 1e-9)})
    return best


def _accuracy(labels: np.ndarray, proba: np.ndarray) -> float:
    """Share right: argmax for class indices; per known (image, finding) at p ≥ 0.5 for multi-hot."""
    if labels.ndim == 2:
        known = labels >= 0
        return float(((proba >= 0.5) == (labels == 1))[known].mean()) if known.any() else float("nan")
    return float((proba.argmax(1) == labels).mean())


def score_test(labels: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Single-label metrics, or per-finding AUROC for multi-hot targets (``multilabel_metrics``)."""
    from training.evaluate.classification import classification_metrics, multilabel_metrics

    if labels.ndim == 2:
        return multilabel_metrics(labels, proba, classes)
    return classification_metrics(labels, proba, classes)


def _mlflow_run(tracker, experiment_id: str, parent_run_id: str, job: ClassifierJob, base_tags: dict) -> str:
    tags = {"mlflow.parentRunId": parent_run_id, "mlflow.runName": job.key, tag.KIND: tag.CLASSIFIER_TRAINING_KIND,
            tag.EXPERIMENT_CELL: job.cell, tag.EXPERIMENT_SEED: str(job.seed), **base_tags, **job.tags}
    run = tracker.create_run(experiment_id, tags=tags)
    from mlflow.entities import Param

    tracker.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in job.params.items()])
    return run.info.run_id


def _log_test(tracker, run_id: str, result: JobResult, classes: list[str], test_labels: np.ndarray) -> None:
    from mlflow.entities import Metric

    from training.evaluate.classification import confusion_figure

    now = int(time.time() * 1000)
    rows = [Metric(f"test/{k}", float(v), now, 0) for k, v in result.test_metrics.items() if math.isfinite(v)]
    rows += [Metric("best_epoch", result.best_epoch, now, 0), Metric("best_val_loss", result.val_loss, now, 0)]
    tracker.log_batch(run_id, metrics=rows)
    if test_labels.ndim == 2:  # multi-label: per-finding AUROC, no confusion matrix
        return
    import matplotlib.pyplot as plt

    fig = confusion_figure(test_labels, result.test_proba, classes, title=f"{result.key}: test (real)")
    tracker.log_figure(run_id, fig, "plots/confusion_test.png")
    plt.close(fig)


def _state_file(results: dict, best: tuple | None, tmp: str) -> None:
    torch.save({k: vars(v) for k, v in results.items()}, Path(tmp) / RESULTS_FILE)
    if best is not None:
        torch.save({"key": best[0], "val_loss": best[1], "state": best[2]}, Path(tmp) / MODEL_FILE)


def load_results(path: str | Path) -> tuple[dict[str, JobResult], dict | None]:
    """Results and the best model (``{"key", "val_loss", "state"}``) of a checkpoint directory."""
    path = Path(path)
    results = {k: JobResult(**v) for k, v in torch.load(path / RESULTS_FILE, weights_only=False).items()}
    model = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=False) if (path / MODEL_FILE).exists() else None
    return results, model


def train_loop(loop_config: dict) -> None:
    """Ray Train worker function: every job of the list that the checkpoint has not finished."""
    import ray
    import ray.train
    import ray.train.torch

    from infra.worker_progress import Sender

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg = ClassifierTrainConfig(**loop_config["config"])
    hp = cfg.hyperparameters()
    classes: list[str] = loop_config["classes"]
    data: ClassifierData = ray.get(loop_config["data"])
    jobs = [ClassifierJob(**j) for j in loop_config["jobs"]]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    results: dict[str, JobResult] = {}
    best_model: tuple | None = None  # (key, val_loss, state dict)
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as ckpt:
            results, saved = load_results(ckpt)
        best_model = (saved["key"], saved["val_loss"], saved["state"]) if saved else None
    tracker = None
    if rank == 0:
        configure(get_settings())
        from mlflow import MlflowClient

        tracker = MlflowClient()
    send = Sender(loop_config.get("progress") if rank == 0 else None)  # the driver's bar (runs x epochs)
    if rank == 0:
        log.info(f"[classifier] {len(jobs)} run(s), {len(results)} already done; {world} worker(s), "
                 f"{cfg.arch}, {hp['epochs']} epoch(s), batch {hp['batch_size']}, device {device}")

    for number, job in enumerate(jobs, 1):
        if job.key in results:
            continue
        run_id = _mlflow_run(tracker, loop_config["experiment_id"], loop_config["parent_run_id"], job,
                             loop_config.get("tags", {})) if rank == 0 else ""

        def on_epoch(epoch: int, metrics: dict, job=job, number=number, run_id=run_id) -> None:
            if rank != 0:
                return
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            tracker.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()])
            send((number - 1) * hp["epochs"] + epoch, len(jobs) * hp["epochs"],
                 f"run {number}/{len(jobs)} {job.key} · val_acc {metrics['val_accuracy']:.3f} · "
                 f"{metrics['images_per_s']:.0f} img/s", force=True)
            log.info(f"[classifier] run {number}/{len(jobs)} {job.key}: epoch {epoch}/{hp['epochs']}  "
                     f"loss {metrics['train_loss']:.3f}  val_loss {metrics['val_loss']:.3f}  "
                     f"val_acc {metrics['val_accuracy']:.3f}  {metrics['images_per_s']:.0f} img/s")

        model = build_classifier(cfg, classes, job.seed).to(device)
        wrapped = ray.train.torch.prepare_model(model) if world > 1 else model
        state, best_epoch, val_loss = train_job(wrapped, job, data, hp, device, rank, world, on_epoch)
        model.load_state_dict(state)
        if rank != 0:
            ray.train.report({"runs_done": len(results) + 1})
            results[job.key] = None  # placeholder: only rank 0's results are kept
            continue
        _, val_proba = score(model, data.val_images, data.val_labels, device)
        _, test_proba = score(model, data.test_images, data.test_labels, device)
        synthetic = {name: score(model, images, labels, device)[1]
                     for name, (images, labels) in data.synthetic_tests.items()} if job.synthetic_eval else {}
        result = JobResult(key=job.key, cell=job.cell, seed=job.seed, run_id=run_id, best_epoch=best_epoch,
                           val_loss=val_loss, val_proba=val_proba, test_proba=test_proba,
                           test_metrics=score_test(data.test_labels, test_proba, classes),
                           synthetic_proba=synthetic)
        results[job.key] = result
        _log_test(tracker, run_id, result, classes, data.test_labels)
        tracker.set_terminated(run_id)
        if best_model is None or val_loss < best_model[1]:
            best_model = (job.key, val_loss, {k: v.detach().cpu().clone() for k, v in state.items()})
        log.info(f"[classifier] run {number}/{len(jobs)} {job.key}: best epoch {best_epoch}, val_loss {val_loss:.3f}, "
                 f"test accuracy {result.test_metrics['accuracy']:.3f}")
        with tempfile.TemporaryDirectory() as tmp:
            _state_file(results, best_model, tmp)
            ray.train.report({"runs_done": len(results)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
