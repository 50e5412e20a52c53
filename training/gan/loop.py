"""The Ray Train worker loop of GAN training (one process per worker, DDP between them).

Each worker reads its shard of the catalog selection, wraps G and D in DDP through
``ray.train.torch.prepare_model`` and runs the preset's loss: ``critic_steps`` critic updates
per real batch on fresh noise, then one generator update (the Keras WGAN-GP example's epoch,
which the knee paper's code builds on). The gradient penalty's double backward works under
DDP because ``autograd.grad`` w.r.t. the interpolates never touches parameter gradients; the
one ``backward`` then reduces every critic gradient once (tested against one process).

Resuming is exact: the checkpoint holds weights (raw G, EMA G, D), both optimizers, both LR
schedules, ADA's p and its partial sums, the epoch and global step, and every epoch reseeds the RNGs from ``(seed, rank, epoch)``, so an epoch
replayed after a failure draws the same noise, permutation and dropout as the lost one.

Every worker keeps the same EMA generator (:mod:`training.gan.ema`; DDP keeps G identical
across workers, so their averages agree) and, with ``augment``, puts D's inputs through
DiffAugment or ADA (:mod:`training.gan.augment`); ADA's p moves on the sign statistics summed
over all workers, so it too is identical everywhere. Grids, FIDs and checkpoints' selected
generator are the EMA's; a checkpoint also holds the raw G and ADA's state.

Rank 0 alone talks to MLflow (per-step losses, epoch metrics, the fixed-latent sample grid,
FID against the cached reference statistics) and writes checkpoints. Checkpoints, grids and
Ray Train reports come by cost, not every epoch (:mod:`training.gan.cadence`: every
``checkpoint_every`` epochs or ``checkpoint_minutes``, every FID epoch, the last); metrics go
through MLflow's async queue at each epoch's end and are waited for at each checkpoint
(:class:`infra.tracking.MetricBuffer`), so no step waits on the network.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from infra.settings import get_settings
from infra.tracking import MetricBuffer, configure
from training.gan.config import GanTrainConfig
from training.gan.cadence import Cadence, agree
from training.gan.augment import OPS, AdaController, Augment, AugmentedCritic
from training.gan.ema import Ema
from training.gan.losses import make_loss
from training.nets.sampler import GeneratorSampler, to_uint8
from infra.errors import BadInput

CHECKPOINT_FILE = "gan.pt"
# Worker progress goes through logging: Ray Train forwards the worker's INFO records to the
# driver console once (its patched print() would emit each line twice here).
log = logging.getLogger("synthray.train")


def lr_lambda(form: str, decay: float) -> Callable[[int], float]:
    """LR factor after ``t`` optimizer updates.

    ``inverse-time`` is Keras' legacy ``decay`` argument, lr / (1 + decay·t), which the knee
    paper's Keras code uses; ``exponential`` is lr·(1 − decay)^t; ``none`` keeps lr.
    """
    if form == "inverse-time":
        return lambda t: 1.0 / (1.0 + decay * t)
    if form == "exponential":
        return lambda t: (1.0 - decay) ** t
    if form == "none":
        return lambda t: 1.0
    raise BadInput(f"unknown decay_form {form!r}")


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The RNG seed of one worker's epoch: replaying an epoch replays its randomness."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**63


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def grid_latents(w: "WorkerContext") -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed latents (and labels: every class in turn, or the run's class) of the sample grids."""
    fixed = torch.Generator().manual_seed(w.cfg.seed)
    z = torch.randn(w.cfg.grid_size, w.hp["latent_dim"], generator=fixed).to(w.device)
    y = (torch.arange(w.cfg.grid_size) % w.num_classes if w.cfg.class_label is None
         else torch.full((w.cfg.grid_size,), w.cfg.class_label)).to(w.device)
    return z, y


def sample_grid(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None,
                paired: bool = False) -> np.ndarray:
    """uint8 (H, W, 3) grid of ``generator(z[, labels])`` in eval mode (torchvision's make_grid).

    ``paired``: the generator emits image + one-hot mask stacks (:mod:`training.nets.masks`);
    each sample is shown as its image followed by the image with its argmax mask in colour.
    """
    from infra.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.utils import make_grid

    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        images = (generator(z) if labels is None else generator(z, labels)).float().cpu()
    generator.train(was_training)
    side = int(np.ceil(np.sqrt(len(z))))
    if paired:
        from training.nets.masks import pair_panels

        images, side = pair_panels(images), 2 * side
    grid = make_grid(images, nrow=side, padding=2, pad_value=1.0)
    return to_uint8(grid.unsqueeze(0))[0]


def grid_conditions(n: int, num_classes: int, multilabel: bool = False, class_label: int | None = None
                    ) -> torch.Tensor:
    """Conditions of the fixed sample grid: classes 0..K−1 in turn (or the trained class); for a
    multi-label run, multi-hot (n, K) rows cycling through every finding combination of the
    first min(K, 4) findings (no finding, each alone, pairs …), so a row of the grid is a set."""
    if not multilabel:
        return torch.arange(n) % num_classes if class_label is None else torch.full((n,), class_label)
    k = min(num_classes, 4)
    combos = sorted(range(2**k), key=lambda m: (bin(m).count("1"), m))
    rows = torch.zeros(len(combos), num_classes)
    for i, mask in enumerate(combos):
        rows[i, :k] = torch.tensor([(mask >> j) & 1 for j in range(k)], dtype=torch.float32)
    return rows[torch.arange(n) % len(rows)]


def _mean_across_workers(values: dict[str, float], world: int) -> dict[str, float]:
    import torch.distributed as dist

    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(values, (t / world).tolist()))


def _sum_across_workers(values: list[float], world: int) -> list[float]:
    import torch.distributed as dist

    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def make_augment(hp: dict) -> tuple[Augment | None, AdaController | None]:
    """The run's augmentation before D and, for ADA, its p controller (p starts at 0)."""
    kind = hp.get("augment", "none")
    if kind == "none":
        return None, None
    policy = hp.get("augment_policy", OPS)
    if kind == "diffaugment":
        return Augment(policy, p=1.0), None
    if kind == "ada":
        return Augment(policy, p=0.0), AdaController(target=hp["ada_target"], kimg=hp["ada_kimg"])
    raise BadInput(f"augment must be none, diffaugment or ada, got {kind!r}")


def load_training_data(cfg: GanTrainConfig, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's shard: images (N, C, H, W) in [-1, 1] and their labels.

    C is 1, or 1 + K for a paired run (``cfg.masks``): each image stacked with its one-hot
    mask in {-1, +1} (:func:`training.nets.masks.stack_pairs`), which D then sees whole.
    """
    from training.catalog.selection import load_tensors

    paired = bool(cfg.masks and cfg.mask_classes)
    data = load_tensors(cfg.dataset, shard=(rank, world), masks=paired, **cfg.selection())
    if not paired:
        return data.images, data.labels
    from training.nets.masks import stack_pairs

    return stack_pairs(data.images, data.label_maps, len(cfg.mask_classes)), data.labels


def latent_inputs(hp: dict, conditional: bool, num_classes: int, device, batch: int = 64) -> Callable:
    """``rng → generator args``: a batch of z (and, conditional, uniform labels) for BN recalibration."""
    def draw(rng: torch.Generator) -> tuple:
        z = torch.randn(batch, hp["latent_dim"], generator=rng).to(device)
        return (z, torch.randint(0, num_classes, (batch,), generator=rng).to(device)) if conditional else (z,)
    return draw


def _min_across_workers(value: int, world: int) -> int:
    import torch.distributed as dist

    if world == 1:
        return value
    t = torch.tensor([value])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _load_state(path_dir: str | Path) -> dict:
    return torch.load(Path(path_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)


def checkpoint_state(uri: str) -> dict:
    """Checkpoint state of a run (``s3://bucket/path`` or a local directory)."""
    import ray.train

    if uri.startswith("s3://"):
        from infra.ray_runtime import storage

        _, fs = storage(get_settings())
        checkpoint = ray.train.Checkpoint(uri.removeprefix("s3://"), filesystem=fs)
    else:
        checkpoint = ray.train.Checkpoint(uri)
    with checkpoint.as_directory() as path:
        return _load_state(path)


@dataclass
class GanPair:
    """Generator and critic (possibly DDP-wrapped) with their optimizers and LR schedules."""

    gen: nn.Module
    critic: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    conditional: bool

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.gen(z, y) if self.conditional else self.gen(z)


def train_step(pair: GanPair, loss, real: torch.Tensor, y: torch.Tensor, hp: dict,
               autocast: Callable = contextlib.nullcontext, augment: Augment | None = None,
               ada: AdaController | None = None) -> dict[str, torch.Tensor]:
    """One generator update after ``critic_steps`` critic updates on fresh noise; the losses.

    Fake labels follow the real batch's classes (conditional presets), so a class-imbalanced
    run (spine Method I) generates in the data's proportions. With ``augment``, D sees
    ``augment(x)`` for reals and fakes in D's steps and in G's step (DiffAugment/ADA); ``ada``
    accumulates each D step's E[sign(D(real))] (the caller adjusts p when it is due).
    """
    n, device = real.shape[0], real.device
    d_critic = pair.critic if augment is None else AugmentedCritic(pair.critic, augment)
    for _ in range(hp["critic_steps"]):
        with torch.no_grad(), autocast():
            fake = pair.generate(torch.randn(n, hp["latent_dim"], device=device), y)
        with autocast():
            d_out = loss.critic_loss(d_critic, real, fake, y, y)
        pair.opt_d.zero_grad(set_to_none=True)
        d_out["loss"].backward()
        pair.opt_d.step()
        pair.sched_d.step()
        if ada is not None:
            ada.accumulate(float(d_out["real_sign"]) * n, n)
    # G step through the bare critic with frozen weights: no critic gradients, no DDP sync.
    critic = unwrap(pair.critic).requires_grad_(False)
    g_critic = critic if augment is None else AugmentedCritic(critic, augment)
    try:
        with autocast():
            g_out = loss.generator_loss(g_critic, pair.generate(torch.randn(n, hp["latent_dim"], device=device), y), y)
        pair.opt_g.zero_grad(set_to_none=True)
        g_out["loss"].backward()
        pair.opt_g.step()
        pair.sched_g.step()
    finally:
        critic.requires_grad_(True)
    return {"loss_d": d_out.pop("loss"), "loss_g": g_out.pop("loss"), **d_out, **g_out}


def build_pair(preset, hp: dict, num_classes: int, prepare: Callable[[nn.Module], nn.Module] = lambda m: m) -> GanPair:
    """Fresh G and D of ``preset`` (seed the RNG first), wrapped by ``prepare`` (DDP), with Adam + LR schedules."""
    gen, critic = (prepare(m) for m in preset.build(num_classes))
    opt_g = torch.optim.Adam(gen.parameters(), lr=hp["lr"], betas=tuple(hp["betas"]))
    opt_d = torch.optim.Adam(critic.parameters(), lr=hp.get("lr_d", hp["lr"]), betas=tuple(hp["betas"]))
    schedule = lr_lambda(hp["decay_form"], hp["lr_decay"])
    return GanPair(gen, critic, opt_g, opt_d, torch.optim.lr_scheduler.LambdaLR(opt_g, schedule),
                   torch.optim.lr_scheduler.LambdaLR(opt_d, schedule), preset.conditional)


_PAIR_KEYS = ("opt_g", "opt_d", "sched_g", "sched_d")


def pair_state(pair: GanPair, ema: Ema) -> dict:
    """Checkpoint entries of the pair: raw G, EMA G, D, both optimizers and both LR schedules."""
    return {"generator": unwrap(pair.gen).state_dict(), "generator_ema": ema.state_dict(),
            "critic": unwrap(pair.critic).state_dict(), **{k: getattr(pair, k).state_dict() for k in _PAIR_KEYS}}


def restore_pair(pair: GanPair, state: dict) -> None:
    """Load raw G, D, optimizers and schedules from a checkpoint state (the EMA is the caller's)."""
    unwrap(pair.gen).load_state_dict(state["generator"])
    unwrap(pair.critic).load_state_dict(state["critic"])
    for key in _PAIR_KEYS:
        getattr(pair, key).load_state_dict(state[key])


@dataclass(frozen=True)
class WorkerContext:
    """What every GAN worker function derives from its loop config and Ray Train's context."""

    cfg: GanTrainConfig
    run_id: str
    num_classes: int
    hp: dict
    preset: object  # training.nets.presets.GanPreset
    rank: int
    world: int
    device: torch.device
    autocast: Callable
    memory_format: torch.memory_format


def worker_context(loop_config: dict) -> WorkerContext:
    """Config, hyperparameters, rank/world, device, and bf16 autocast + channels_last on GPU with ``amp``."""
    import ray.train
    import ray.train.torch

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # per-report INFO lines drown the progress
    cfg = GanTrainConfig(**loop_config["config"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    fast = cfg.use_gpu and cfg.amp and device.type == "cuda"
    return WorkerContext(
        cfg=cfg, run_id=loop_config["run_id"], num_classes=loop_config["num_classes"], hp=cfg.hyperparameters(),
        preset=cfg.preset(), rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=device,
        autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if fast else contextlib.nullcontext,
        memory_format=torch.channels_last if fast else torch.preserve_format)


class _Progress:
    """Rank 0's progress: the driver's bar (epoch, step, img/s, last FID; :mod:`infra.worker_progress`)
    and a log line every ``every`` steps (in the worker's log file; on the console with --verbose)."""

    def __init__(self, cfg: GanTrainConfig, steps: int, images_per_step: int, sink=None) -> None:
        from infra.worker_progress import Sender

        self.cfg, self.steps, self.images = cfg, steps, images_per_step
        self.every = cfg.log_every or max(1, math.ceil(steps / 4))
        self.last_fid: float | None = None
        self.send = Sender(sink)
        self.rate = 0.0

    def fid(self, epoch: int, value: float) -> None:
        """The epoch's FID is in: show it on the driver's bar at once."""
        self.last_fid = value
        self.send((epoch + 1) * self.steps, self.cfg.epochs * self.steps,
                  f"epoch {epoch + 1}/{self.cfg.epochs} · {self.rate:.1f} img/s · last FID {value:.2f}", force=True)

    def step(self, epoch: int, step: int, started: float, loss_d: torch.Tensor, loss_g: torch.Tensor,
             force: bool = False) -> None:
        """After a step: the bar (throttled by the Sender) and, every ``every`` steps, a log line.

        The losses stay tensors until a line is written (``.item()`` would sync a GPU every step).
        """
        rate = self.rate = (step + 1) * self.images / max(time.perf_counter() - started, 1e-9)
        fid = "n/a" if self.last_fid is None else f"{self.last_fid:.2f}"
        self.send(epoch * self.steps + step + 1, self.cfg.epochs * self.steps,
                  f"epoch {epoch + 1}/{self.cfg.epochs} · {rate:.1f} img/s · last FID {fid}",
                  force=force or step + 1 == self.steps)
        if (step + 1) % self.every and step + 1 != self.steps:
            return
        log.info(f"[train] epoch {epoch + 1}/{self.cfg.epochs} step {step + 1}/{self.steps}  "
                 f"loss_d {float(loss_d):+.3f}  loss_g {float(loss_g):+.3f}  {rate:.1f} img/s  last FID {fid}")


def train_loop(loop_config: dict) -> None:
    """Ray Train worker function (one per worker)."""
    import ray.train
    import ray.train.torch

    from training.evaluate.floor import with_floor

    w = worker_context(loop_config)
    cfg, run_id, num_classes, hp, preset = w.cfg, w.run_id, w.num_classes, w.hp, w.preset
    rank, world, device, autocast, memory_format = w.rank, w.world, w.device, w.autocast, w.memory_format

    torch.manual_seed(cfg.seed)  # identical initial weights on every worker
    pair = build_pair(preset, hp, num_classes,
                      lambda m: ray.train.torch.prepare_model(m.to(memory_format=memory_format)))
    gen, critic = pair.gen, pair.critic
    augment, ada = make_augment(hp)
    start_epoch, global_step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume after a worker failure: everything, so the replay is exact
        with checkpoint.as_directory() as ckpt_dir:
            state = _load_state(ckpt_dir)
        restore_pair(pair, state)
        start_epoch, global_step = state["epoch"], state["global_step"]
        ema = Ema(unwrap(gen), hp["ema_kimg"], hp["ema_rampup"])
        ema.load_state_dict(state.get("generator_ema", state["generator"]))
        if ada is not None and state.get("ada"):
            ada.load_state_dict(state["ada"])
            augment.p = ada.p
    else:
        if cfg.init_from:  # warm start (spine Method IV): weights only, fresh optimizers
            # G starts from the pretrained run's EMA generator: the one it was scored and registered with.
            warm = checkpoint_state(cfg.init_from)
            unwrap(gen).load_state_dict(warm.get("generator_ema", warm["generator"]))
            if cfg.transfer_critic:
                unwrap(critic).load_state_dict(warm["critic"])
        ema = Ema(unwrap(gen), hp["ema_kimg"], hp["ema_rampup"])
    loss = make_loss(hp["loss"], hp["gp_lambda"])

    images, labels = load_training_data(cfg, rank, world)
    images = images.to(device, memory_format=memory_format)
    labels = labels.to(device)
    batch = max(1, hp["batch_size"] // world)
    steps = _min_across_workers(len(images) // batch, world)
    if steps == 0:
        raise BadInput(f"dataset {cfg.dataset} shard {rank} has {len(images)} images, fewer than one batch of {batch}")
    steps = cfg.steps_per_epoch or steps

    reference, quick, tracker, progress = None, None, None, None
    cadence = Cadence(cfg.checkpoint_every, cfg.checkpoint_minutes)
    if rank == 0:
        from mlflow import MlflowClient

        configure(get_settings())  # workers get SYNTHRAY_* through the job's runtime env
        tracker = MetricBuffer(MlflowClient(), run_id)
        progress = _Progress(cfg, steps, world * batch, loop_config.get("progress"))
        fixed_z, _ = grid_latents(w)
        fixed_y = grid_conditions(cfg.grid_size, num_classes, loop_config.get("multilabel", False),
                                  cfg.class_label).to(device)
        if cfg.fid_every:
            reference = _reference(loop_config)
        if cfg.fid_every and cfg.fid_quick_n:
            quick = _reference({"reference": loop_config["reference_quick"]})
        if start_epoch:
            tracker.client.log_metric(run_id, "resumed_from_epoch", start_epoch, step=start_epoch)
        log.info(f"[train] {world} worker(s) x {batch} images/batch, {steps} steps/epoch, "
                 f"{len(images)} images in shard 0, device {device}"
                 + (f", resuming after epoch {start_epoch}" if start_epoch else ""))

    # The data stay where load_tensors put them (this worker's shard, on its device): an epoch
    # only draws a new permutation of indices; nothing below re-reads, re-decodes or re-shards.
    phase_started, step_seconds, shown = time.perf_counter(), 0.0, 0
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, rank, epoch))
        gen.train(), critic.train()
        started = time.perf_counter()
        passes = math.ceil(steps * batch / len(images))  # steps_per_epoch may span several passes
        order = torch.cat([torch.randperm(len(images), device=device) for _ in range(passes)])
        history: dict[str, list[torch.Tensor]] = {}
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            scalars = train_step(pair, loss, images[idx], labels[idx], hp, autocast, augment, ada)
            global_step += 1
            ema.update(unwrap(gen), world * batch, global_step * world * batch)
            if ada is not None and ada.due():
                augment.p = ada.adjust(lambda v: _sum_across_workers(v, world))
            if ada is not None:
                scalars |= {"ada_p": torch.tensor(ada.p), "ada_rt": torch.tensor(ada.last_rt)}
            for key, value in scalars.items():
                history.setdefault(key, []).append(value.detach().float())
            if progress is not None:
                progress.step(epoch, step, started, history["loss_d"][-1], history["loss_g"][-1])
        elapsed = time.perf_counter() - started
        step_seconds += elapsed
        shown += world * steps * batch
        per_step = {k: torch.stack(v).cpu().numpy() for k, v in history.items()}
        metrics = _mean_across_workers({k: float(v.mean()) for k, v in per_step.items()}, world)
        metrics |= {"epoch": epoch + 1, "global_step": global_step, "kimg": global_step * world * batch / 1000,
                    "images_per_s": world * steps * batch / elapsed, "lr_g": pair.sched_g.get_last_lr()[0]}
        metrics["ema_beta"] = ema.last_beta
        if ada is not None:
            # Flush the partial interval at the epoch's end: each worker's partial sums are its
            # own, and the checkpoint (rank 0's) could not restore the others' exactly.
            if ada.pending():
                augment.p = ada.adjust(lambda v: _sum_across_workers(v, world))
            metrics |= {"ada_p": ada.p, "ada_rt": ada.last_rt}  # identical on every worker
        last = epoch + 1 == cfg.epochs
        fid_due = bool(cfg.fid_every) and ((epoch + 1) % cfg.fid_every == 0 or last)
        # Checkpoint, grid and Ray Train report by cost (training.gan.cadence); rank 0's clock decides.
        checkpoint_due = cadence.due(epoch + 1, forced=fid_due or last,
                                     timed=agree(cadence.by_time(), world, device))
        if checkpoint_due or quick is not None:
            # Standing BN statistics of the EMA weights (training.gan.ema), before anything samples it.
            ema.recalibrate(latent_inputs(hp, preset.conditional, num_classes, device), hp["ema_bn_batches"],
                            cfg.seed)
        if rank != 0:
            if checkpoint_due:
                ray.train.report(metrics)
                cadence.done()
            continue
        metrics["fid"] = float("nan")
        if quick is not None:
            q = _fid(ema.module, preset, hp, cfg, quick, loop_config)
            metrics |= {"fid_quick": q["fid"], "fid_quick_n": q["fid_n_real"]}
            log.info(f"[train] epoch {epoch + 1}: quick {with_floor(q['fid'], loop_config.get('floor_quick'))}")
        if reference is not None and fid_due:
            metrics |= _fid(ema.module, preset, hp, cfg, reference, loop_config)
            progress.fid(epoch, metrics["fid"])
            log.info(f"[train] epoch {epoch + 1}: {with_floor(metrics['fid'], loop_config.get('floor'))} "
                     f"(n_real {metrics['fid_n_real']:.0f} = n_fake {metrics['fid_n_fake']:.0f}, EMA generator)")
        _log_epoch(tracker, metrics, per_step, global_step - steps + 1)
        if not checkpoint_due:
            tracker.submit()  # MLflow's async queue: returns at once
            continue
        tracker.client.log_image(run_id, sample_grid(ema.module, fixed_z, fixed_y if preset.conditional else None,
                                                     paired=preset.mask_channels > 0), key="samples", step=epoch + 1)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                pair_state(pair, ema) | {"ada": ada.state_dict() if ada is not None else None,
                                         "epoch": epoch + 1, "global_step": global_step, "num_classes": num_classes,
                                         "multilabel": loop_config.get("multilabel", False),
                                         "config": cfg.model_dump(), "hyperparameters": hp, "metrics": metrics},
                Path(tmp) / CHECKPOINT_FILE,
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        tracker.flush()  # the history is durable up to this checkpoint
        cadence.done()
    if tracker is not None:
        _log_phase(tracker, cfg.epochs, time.perf_counter() - phase_started, step_seconds, shown)


def _log_phase(tracker: MetricBuffer, epoch: int, wall_s: float, step_s: float, shown: int) -> None:
    """This worker group's training phase: wall seconds (first step → last checkpoint) vs seconds in steps.

    ``train_wall_s`` covers everything between the first step and the last checkpoint's report
    (bookkeeping, FID, grids, checkpoints); ``train_step_s`` only the steps, so their ratio is
    the share of the time spent training (``benchmarks/train_overhead.py``). Not logged when
    the group trained no epoch (a restart after the last checkpoint).
    """
    if shown:
        tracker.add({"train_wall_s": wall_s, "train_step_s": step_s, "train_images": shown,
                     "train_wall_images_per_s": shown / wall_s, "train_step_images_per_s": shown / step_s}, epoch)
    tracker.flush()


def _log_epoch(tracker: MetricBuffer, metrics: dict, per_step: dict[str, np.ndarray], first_step: int) -> None:
    """Buffer epoch metrics at step = epoch and per-step losses (rank 0's) at the global step (no I/O)."""
    tracker.add(metrics, int(metrics["epoch"]))
    for key, values in per_step.items():
        tracker.add_series(f"step/{key}", values, first_step)


def _reference(loop_config: dict):
    """The training selection's reference statistics (computed by the driver, read from the cache)."""
    from training.evaluate import reference_statistics

    return reference_statistics(**loop_config["reference"])


def fid_fakes(gen: nn.Module, preset, hp: dict, cfg: GanTrainConfig, reference, loop_config: dict) -> np.ndarray:
    """uint8 samples of ``gen`` in the reference's count and class mix (seed = run seed + 1)."""
    from training.evaluate.generator import fakes_like

    sampler = GeneratorSampler(gen, hp["latent_dim"], class_index=cfg.class_label,
                               num_classes=loop_config["num_classes"] if preset.conditional else None,
                               multilabel=loop_config.get("multilabel", False),
                               mask_classes=cfg.mask_classes if preset.mask_channels else None)
    was_training = gen.training
    fake, _ = fakes_like(sampler, reference, seed=cfg.seed + 1, settings=get_settings())
    gen.train(was_training)
    return fake


def _fid(gen: nn.Module, preset, hp: dict, cfg: GanTrainConfig, reference, loop_config: dict) -> dict:
    """FID of n_fake = n_real samples (the knee paper's rule) against the cached reference."""
    from infra.cpus import available_cpus
    from training.evaluate import fid_to_reference
    from training.evaluate.fid import _torch_threads

    fake = fid_fakes(gen, preset, hp, cfg, reference, loop_config)
    # The other workers wait for rank 0 at their next gradient all-reduce (blocked, not
    # spinning), so Inception may use every usable CPU meanwhile, not the worker's one thread.
    with _torch_threads(available_cpus()):
        result = fid_to_reference(fake, reference)
    return {"fid": result.fid, "fid_n_real": result.n_real, "fid_n_fake": result.n_fake}
