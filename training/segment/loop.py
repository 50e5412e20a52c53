"""The Ray Train worker loop of segmenter training: a list of runs, one worker group, DDP.

It follows :mod:`training.classify.loop`: one ``TorchTrainer`` works through every run of a
list (an experiment is cells × seeds); for each run every worker builds the same seeded
MONAI U-Net and trains on its slice of the run's training indices (DDP averages gradients);
after every epoch the full validation set is scored with MONAI's ``DiceMetric`` and the epoch
with the highest mean foreground Dice is the model. Rank 0 alone talks to MLflow (one child
run per job: epoch curves, per-class test Dice/IoU with 95 % bootstrap CIs, an overlay of
prediction vs truth on test images) and writes a checkpoint (S3) after each finished run
holding all results so far and the best model by validation Dice, so a restarted group skips
finished runs.
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
from training.classify.loop import epoch_order
from training.nets.segmenter import ImageSegmenter
from training.registry import tags as tag
from training.segment.config import SegmenterTrainConfig

RESULTS_FILE, MODEL_FILE = "results.pt", "best_model.pt"
EVAL_CHUNK = 64
OVERLAY_IMAGES = 8
log = logging.getLogger("synthray.segmenter")


@dataclass(frozen=True)
class SegmenterJob:
    """One training run: which images of the pool it trains on, and how it is labelled in MLflow."""

    key: str
    cell: str
    seed: int
    train_index: np.ndarray
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


@dataclass
class SegmenterResult:
    """What a finished run leaves: its best epoch, validation Dice and test scores (per image, for paired tests)."""

    key: str
    cell: str
    seed: int
    run_id: str
    best_epoch: int
    val_dice: float
    test_metrics: dict
    test_dice: np.ndarray  # (N_test, K-1) per image and foreground class
    test_iou: np.ndarray


@dataclass(frozen=True)
class SegmenterData:
    """uint8 images ``(N, H, W)`` and uint8 masks ``(N, H, W)``: the training pool, real val and test."""

    pool_images: np.ndarray
    pool_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    test_images: np.ndarray
    test_masks: np.ndarray


def build_segmenter(cfg: SegmenterTrainConfig, classes: list[str], seed: int) -> ImageSegmenter:
    """A fresh seeded segmenter of the preset."""
    torch.manual_seed(seed)
    return cfg.preset().build(classes)


@torch.no_grad()
def predict_labels(model: ImageSegmenter, images: np.ndarray, device) -> np.ndarray:
    """Label maps ``(N, S, S)`` at the network's size (the masks are compared at that size too)."""
    model.eval()
    out = [model(model.preprocess(images[i : i + EVAL_CHUNK]).to(device)).argmax(1).cpu().numpy()
           for i in range(0, len(images), EVAL_CHUNK)]
    return np.concatenate(out).astype(np.uint8) if out else np.empty((0,), np.uint8)


def evaluate(model: ImageSegmenter, images: np.ndarray, masks: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, truth) at the network's size, truth resized by nearest neighbour."""
    return predict_labels(model, images, device), model.targets(masks).numpy().astype(np.uint8)


def train_job(model, job: SegmenterJob, data: SegmenterData, hp: dict, device, rank: int, world: int,
              on_epoch=None) -> tuple[dict, int, float]:
    """Train one job; returns (best state dict, best epoch, best mean validation Dice)."""
    from training.evaluate.segmentation import per_image_scores

    bare = getattr(model, "module", model)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    batch = max(1, hp["batch_size"] // world)
    best = (copy.deepcopy(bare.state_dict()), 0, -math.inf)
    for epoch in range(hp["epochs"]):
        torch.manual_seed(torch_seed(job.seed, epoch, rank))
        model.train()
        order = job.train_index[epoch_order(len(job.train_index), job.seed, epoch, rank, world)]
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        for start in range(0, len(order), batch):
            idx = np.sort(order[start : start + batch])
            x = bare.preprocess(data.pool_images[idx]).to(device)
            y = bare.targets(data.pool_masks[idx]).to(device)
            loss = bare.loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        pred, truth = evaluate(bare, data.val_images, data.val_masks, device)
        val_dice = float(per_image_scores(pred, truth, len(bare.class_names))["dice"].mean())
        if val_dice > best[2]:
            best = (copy.deepcopy(bare.state_dict()), epoch + 1, val_dice)
        if on_epoch:
            on_epoch(epoch + 1, {"train_loss": loss_sum / max(seen, 1), "val_dice": val_dice,
                                 "images_per_s": world * seen / max(time.perf_counter() - started, 1e-9)})
    return best


def _mlflow_run(tracker, experiment_id: str, parent_run_id: str, job: SegmenterJob, base_tags: dict) -> str:
    from mlflow.entities import Param

    tags = {"mlflow.parentRunId": parent_run_id, "mlflow.runName": job.key, tag.KIND: tag.SEGMENTER_TRAINING_KIND,
            tag.EXPERIMENT_CELL: job.cell, tag.EXPERIMENT_SEED: str(job.seed), **base_tags, **job.tags}
    run = tracker.create_run(experiment_id, tags=tags)
    tracker.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in job.params.items()])
    return run.info.run_id


def _log_test(tracker, run_id: str, result: SegmenterResult, images: np.ndarray, truth: np.ndarray,
              pred: np.ndarray) -> None:
    from mlflow.entities import Metric

    from training.evaluate.segmentation import overlay_grid

    now = int(time.time() * 1000)
    rows = [Metric(f"test/{k}", float(v), now, 0) for k, v in result.test_metrics.items() if math.isfinite(v)]
    rows += [Metric("best_epoch", result.best_epoch, now, 0), Metric("best_val_dice", result.val_dice, now, 0)]
    tracker.log_batch(run_id, metrics=rows)
    n = min(OVERLAY_IMAGES, len(images))
    tracker.log_image(run_id, overlay_grid(images[:n], truth[:n], pred[:n]), "plots/overlay_test.png")


def _state_file(results: dict, best: tuple | None, tmp: str) -> None:
    torch.save({k: vars(v) for k, v in results.items()}, Path(tmp) / RESULTS_FILE)
    if best is not None:
        torch.save({"key": best[0], "val_dice": best[1], "state": best[2]}, Path(tmp) / MODEL_FILE)


def load_results(path: str | Path) -> tuple[dict[str, SegmenterResult], dict | None]:
    """Results and the best model (``{"key", "val_dice", "state"}``) of a checkpoint directory."""
    path = Path(path)
    results = {k: SegmenterResult(**v) for k, v in torch.load(path / RESULTS_FILE, weights_only=False).items()}
    model = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=False) if (path / MODEL_FILE).exists() else None
    return results, model


def train_loop(loop_config: dict) -> None:
    """Ray Train worker function: every job of the list that the checkpoint has not finished."""
    import ray
    import ray.train
    import ray.train.torch

    from training.evaluate.segmentation import segmentation_metrics

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg = SegmenterTrainConfig(**loop_config["config"])
    hp = cfg.hyperparameters()
    classes: list[str] = loop_config["classes"]
    data: SegmenterData = ray.get(loop_config["data"])
    jobs = [SegmenterJob(**j) for j in loop_config["jobs"]]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    results: dict[str, SegmenterResult] = {}
    best_model: tuple | None = None  # (key, val_dice, state dict)
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as ckpt:
            results, saved = load_results(ckpt)
        best_model = (saved["key"], saved["val_dice"], saved["state"]) if saved else None
    tracker = None
    if rank == 0:
        configure(get_settings())
        from mlflow import MlflowClient

        tracker = MlflowClient()
        log.info(f"[segmenter] {len(jobs)} run(s), {len(results)} already done; {world} worker(s), "
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
            log.info(f"[segmenter] run {number}/{len(jobs)} {job.key}: epoch {epoch}/{hp['epochs']}  "
                     f"loss {metrics['train_loss']:.3f}  val_dice {metrics['val_dice']:.3f}  "
                     f"{metrics['images_per_s']:.0f} img/s")

        model = build_segmenter(cfg, classes, job.seed).to(device)
        wrapped = ray.train.torch.prepare_model(model) if world > 1 else model
        state, best_epoch, val_dice = train_job(wrapped, job, data, hp, device, rank, world, on_epoch)
        model.load_state_dict(state)
        if rank != 0:
            ray.train.report({"runs_done": len(results) + 1})
            results[job.key] = None  # placeholder: only rank 0's results are kept
            continue
        from training.evaluate.segmentation import per_image_scores

        pred, truth = evaluate(model, data.test_images, data.test_masks, device)
        scores = per_image_scores(pred, truth, len(classes))
        result = SegmenterResult(key=job.key, cell=job.cell, seed=job.seed, run_id=run_id, best_epoch=best_epoch,
                                 val_dice=val_dice, test_metrics=segmentation_metrics(pred, truth, classes, job.seed),
                                 test_dice=scores["dice"], test_iou=scores["iou"])
        results[job.key] = result
        small = model.preprocess(data.test_images[:OVERLAY_IMAGES])
        _log_test(tracker, run_id, result, np.clip(np.rint((small[:, 0].numpy() + 1) * 127.5), 0, 255).astype(np.uint8),
                  truth, pred)
        tracker.set_terminated(run_id)
        if best_model is None or val_dice > best_model[1]:
            best_model = (job.key, val_dice, {k: v.detach().cpu().clone() for k, v in state.items()})
        log.info(f"[segmenter] run {number}/{len(jobs)} {job.key}: best epoch {best_epoch}, val Dice {val_dice:.3f}, "
                 f"test Dice {result.test_metrics['dice']:.3f}")
        with tempfile.TemporaryDirectory() as tmp:
            _state_file(results, best_model, tmp)
            ray.train.report({"runs_done": len(results)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
