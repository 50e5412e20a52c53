"""Distributed WGAN-GP training on Ray Train, tracked in MLflow.

Driver (:func:`train_gan`): opens an MLflow run, launches a ``TorchTrainer`` with N workers
(gloo on CPU, NCCL with ``use_gpu``), checkpoints to the object store and returns the
trained generator wrapped as a :class:`GeneratorSampler`.

Workers (:func:`train_loop`): each reads its shard of the catalog dataset, runs the knee
paper's WGAN-GP loop and averages gradients across workers after every backward pass. The
gradient penalty needs a double backward through the critic, which DDP's reducer does not
support for ``autograd.grad(create_graph=True)`` on repeated forwards, so gradients are
averaged with one all-reduce per parameter instead of wrapping the models in DDP. Rank 0
logs metrics and a fixed-latent sample grid to MLflow, and reports checkpoints to Ray.

Epoch semantics (the paper is silent; this follows the Keras WGAN-GP example the paper's
code base builds on): one pass over the training shard in real batches; for each real batch
``critic_steps`` critic updates on fresh noise, then one generator update.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from infra.ray_runtime import connect, storage
from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from training.models.registry import get_preset
from training.models.sampler import GeneratorSampler, to_uint8
from training.models.wgan_gp import gradient_penalty

CHECKPOINT_FILE = "gan.pt"
# Worker progress goes through logging: Ray Train forwards the worker's INFO records to the
# driver console once (its patched print() would emit each line twice here).
log = logging.getLogger("synthray.train")


class GanTrainConfig(BaseModel):
    """What to train and how; unset hyperparameters come from the architecture preset."""

    dataset: str = Field(description="catalog dataset, name@version or name (latest)")
    arch: str = "wgan-gp-knee-small"
    epochs: int = Field(5, ge=1)
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    split: str = "train"
    class_label: int | None = Field(None, ge=0, description="train on one class only")
    limit: int | None = Field(None, ge=1, description="use only the first N images")
    seed: int = Field(0, ge=0)
    batch_size: int | None = Field(None, ge=1, description="global batch size")
    lr: float | None = Field(None, gt=0)
    critic_steps: int | None = Field(None, ge=1)
    gp_lambda: float | None = Field(None, ge=0)
    lr_decay: float | None = Field(None, ge=0)
    decay_form: Literal["inverse-time", "none"] = "inverse-time"
    grid_size: int = Field(36, ge=1, le=256, description="images in the logged sample grid")
    experiment: str = "synthray-gan"

    def hyperparameters(self) -> dict:
        """Effective hyperparameters: preset values overridden by the set fields."""
        preset = get_preset(self.arch)
        hp = {
            "image_size": preset.image_size,
            "latent_dim": preset.latent_dim,
            "batch_size": preset.batch_size,
            "lr": preset.lr,
            "betas": preset.betas,
            "critic_steps": preset.critic_steps,
            "gp_lambda": preset.gp_lambda,
            "lr_decay": preset.lr_decay,
        }
        for key in ("batch_size", "lr", "critic_steps", "gp_lambda", "lr_decay"):
            if getattr(self, key) is not None:
                hp[key] = getattr(self, key)
        if self.decay_form == "none":
            hp["lr_decay"] = 0.0
        return hp


# -- worker side ----------------------------------------------------------------------------

def _inverse_time(decay: float) -> Callable[[int], float]:
    """Keras' legacy ``decay``: lr_t = lr / (1 + decay · t), t = optimizer updates so far."""
    return lambda step: 1.0 / (1.0 + decay * step)


def _average_gradients(module: torch.nn.Module, world: int) -> None:
    import torch.distributed as dist

    if world == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def _mean_across_workers(values: dict[str, float], world: int) -> dict[str, float]:
    import torch.distributed as dist

    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(values, (t / world).tolist()))


def _min_across_workers(value: int, world: int) -> int:
    import torch.distributed as dist

    if world == 1:
        return value
    t = torch.tensor([value])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def sample_grid(generator: torch.nn.Module, z: torch.Tensor) -> np.ndarray:
    """uint8 (H, W, 3) grid of ``generator(z)`` in eval mode (torchvision's make_grid)."""
    from infra.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.utils import make_grid

    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        images = generator(z).cpu()
    generator.train(was_training)
    grid = make_grid(images, nrow=int(np.ceil(np.sqrt(len(z)))), padding=2, pad_value=1.0)
    return to_uint8(grid.unsqueeze(0))[0]


def train_loop(loop_config: dict) -> None:
    """Ray Train worker function (one per worker)."""
    import ray.train
    import ray.train.torch
    from mlflow import MlflowClient

    from training.datasets import load_tensors

    cfg = GanTrainConfig(**loop_config["config"])
    run_id: str = loop_config["run_id"]
    hp = cfg.hyperparameters()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(cfg.seed)  # identical initial weights on every worker
    gen, critic = get_preset(cfg.arch).build()
    gen, critic = gen.to(device), critic.to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=hp["lr"], betas=tuple(hp["betas"]))
    opt_d = torch.optim.Adam(critic.parameters(), lr=hp["lr"], betas=tuple(hp["betas"]))
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _inverse_time(hp["lr_decay"]))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, _inverse_time(hp["lr_decay"]))

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume after a worker failure or from a previous run
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location=device, weights_only=False)
        for obj, key in ((gen, "generator"), (critic, "critic"), (opt_g, "opt_g"), (opt_d, "opt_d"),
                         (sched_g, "sched_g"), (sched_d, "sched_d")):
            obj.load_state_dict(state[key])
        start_epoch = state["epoch"]

    torch.manual_seed(cfg.seed * 7919 + rank + 1)  # different noise per worker
    labels = [cfg.class_label] if cfg.class_label is not None else None
    data = load_tensors(cfg.dataset, split=cfg.split, labels=labels, image_size=hp["image_size"],
                        shard=(rank, world), limit=cfg.limit).images.to(device)
    batch = max(1, hp["batch_size"] // world)
    steps = _min_across_workers(len(data) // batch, world)
    if steps == 0:
        raise ValueError(
            f"dataset {cfg.dataset} shard {rank} has {len(data)} images, fewer than one batch of {batch}"
        )
    fixed_z = torch.randn(cfg.grid_size, hp["latent_dim"], generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    configure(get_settings())  # workers get SYNTHRAY_* through the job's runtime env
    tracker = MlflowClient() if rank == 0 else None
    if rank == 0:
        log.info(f"[train] {world} worker(s) x {batch} images/batch, {steps} steps/epoch, "
                 f"{len(data)} images in shard 0, device {device}")

    for epoch in range(start_epoch, cfg.epochs):
        gen.train(), critic.train()
        started = time.perf_counter()
        order = torch.randperm(len(data), device=device)
        sums = {"loss_d": 0.0, "loss_g": 0.0, "gp": 0.0, "wasserstein": 0.0}
        for step in range(steps):
            real = data[order[step * batch : (step + 1) * batch]]
            for _ in range(hp["critic_steps"]):
                fake = gen(torch.randn(batch, hp["latent_dim"], device=device)).detach()
                w_gap = critic(real).mean() - critic(fake).mean()
                gp = gradient_penalty(critic, real, fake)
                loss_d = -w_gap + hp["gp_lambda"] * gp
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                _average_gradients(critic, world)
                opt_d.step()
                sched_d.step()
            loss_g = -critic(gen(torch.randn(batch, hp["latent_dim"], device=device))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            _average_gradients(gen, world)
            opt_g.step()
            sched_g.step()
            for key, value in (("loss_d", loss_d), ("loss_g", loss_g), ("gp", gp), ("wasserstein", w_gap)):
                sums[key] += value.item()
        elapsed = time.perf_counter() - started
        metrics = _mean_across_workers({k: v / steps for k, v in sums.items()}, world)
        metrics |= {
            "epoch": epoch + 1,
            "images_per_s": world * steps * batch / elapsed,
            "lr_g": sched_g.get_last_lr()[0],
        }
        if rank == 0:
            log.info(f"[train] epoch {epoch + 1}/{cfg.epochs}  loss_d {metrics['loss_d']:+.3f}  "
                     f"loss_g {metrics['loss_g']:+.3f}  W {metrics['wasserstein']:.3f}  "
                     f"{metrics['images_per_s']:.0f} real img/s  ({elapsed:.1f} s)")
            for key, value in metrics.items():
                tracker.log_metric(run_id, key, float(value), step=epoch + 1)
            tracker.log_image(run_id, sample_grid(gen, fixed_z), key="samples", step=epoch + 1)
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {"generator": gen.state_dict(), "critic": critic.state_dict(),
                     "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                     "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(),
                     "epoch": epoch + 1, "config": cfg.model_dump(), "hyperparameters": hp},
                    Path(tmp) / CHECKPOINT_FILE,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


# -- driver side ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GanTrainResult:
    run_id: str
    experiment_id: str
    run_url: str
    checkpoint_path: str
    dataset: str
    sampler: GeneratorSampler
    metrics: dict


def load_sampler(checkpoint_dir: str | Path, arch: str) -> GeneratorSampler:
    """Rebuild the generator of a checkpoint as a registrable sampler."""
    state = torch.load(Path(checkpoint_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    preset = get_preset(arch)
    gen, _ = preset.build()
    gen.load_state_dict(state["generator"])
    class_label = state["config"].get("class_label")
    return GeneratorSampler(gen, preset.latent_dim, class_index=class_label)


def train_gan(
    cfg: GanTrainConfig,
    settings: Settings | None = None,
    progress: Callable[[str], None] = print,
) -> GanTrainResult:
    """Train on Ray Train and return the run and its final generator.

    Args:
        cfg: dataset, architecture, epochs, workers and hyperparameter overrides.
        settings: where Ray, MLflow and the object store are.
        progress: receives human-readable progress lines (workers print epochs too).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.datasets import catalog

    settings = settings or get_settings()
    dataset = str(catalog(settings).resolve(cfg.dataset))  # pin the version for the run
    cfg = cfg.model_copy(update={"dataset": dataset})
    connect(settings)
    mlflow = configure(settings)
    experiment = mlflow.set_experiment(cfg.experiment)
    storage_path, filesystem = storage(settings)
    with mlflow.start_run(run_name=f"{cfg.arch}-{dataset}") as run:
        run_id = run.info.run_id
        mlflow.log_params({**cfg.model_dump(exclude_none=True), **cfg.hyperparameters()})
        mlflow.set_tags({"synthray.dataset": dataset, "synthray.kind": "gan-training"})
        url = run_url(settings, experiment.experiment_id, run_id)
        progress(f"train: MLflow run {url}")
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"config": cfg.model_dump(), "run_id": run_id},
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
            run_config=ray.train.RunConfig(
                name=f"gan-{run_id}",
                storage_path=storage_path,
                storage_filesystem=filesystem,
                failure_config=ray.train.FailureConfig(max_failures=1),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )
        started = time.perf_counter()
        result = trainer.fit()
        progress(f"train: {cfg.epochs} epoch(s) on {cfg.workers} worker(s) in {time.perf_counter() - started:.0f} s")
        checkpoint_path = f"s3://{result.checkpoint.path}"
        mlflow.set_tag("synthray.checkpoint", checkpoint_path)
        with result.checkpoint.as_directory() as ckpt_dir:
            sampler = load_sampler(ckpt_dir, cfg.arch)
    return GanTrainResult(
        run_id=run_id, experiment_id=experiment.experiment_id, run_url=url,
        checkpoint_path=checkpoint_path, dataset=dataset, sampler=sampler,
        metrics=dict(result.metrics or {}),
    )
