"""The Ray Train worker loop of the progressive presets (PGGAN, Enhanced-GAN, conditional PGGAN).

The driver is the same :func:`training.gan.trainer.train_gan`; this worker function replaces
:func:`training.gan.loop.train_loop` for ``family="progressive"`` presets and reuses its parts
(the one ``train_step``, the EMA generator, MLflow logging, checkpoint format, FID). What differs:

- the run follows the growth schedule (:mod:`training.gan.growth`) in images seen: before
  every step G, D and the EMA generator get the step's stage and α, reals are downsampled (and
  faded) to the stage's resolution, and the batch is the resolution's;
- epochs end every ``epoch_images`` images and at every stage's end; a stage's last epoch logs
  its own grid (``samples_{r}px``) and FID at its resolution (``fid_{r}px``);
- DDP runs with ``find_unused_parameters``: blocks of later stages (and the old toRGB/fromRGB
  after a fade-in) take no part in a step's graph;
- the checkpoint also records ``growth`` = images seen, stage, α and resolution, so a restart
  mid-fade-in continues at the same α with the same batch, RNG stream and data order.

Stage FID (choice): at a stage below the last, the reference's real images (the run's FID
reference selection, first ``fid_n`` in hash order) are area-downsampled to the stage's
resolution and both sides go through pytorch-fid's Inception, which resizes them bilinearly
to 299² as for every other FID here; at the last stage ``fid_{r}px`` is the run's ``fid``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infra.errors import BadInput
from infra.settings import get_settings
from infra.tracking import MetricBuffer, configure
from training.gan.config import GanTrainConfig
from training.gan.ema import Ema
from training.gan.growth import Growth, Timeline, reals_at, schedule_of
from training.gan.cadence import Cadence, agree
from training.gan.loop import (CHECKPOINT_FILE, _fid, _load_state, _log_epoch, _log_phase, _mean_across_workers,
                               _min_across_workers, _reference, _sum_across_workers, build_pair, epoch_seed,
                               fid_fakes, grid_latents, load_training_data, make_augment, pair_state, restore_pair,
                               sample_grid, train_step, unwrap, worker_context)
from training.gan.losses import make_loss

log = logging.getLogger("synthray.train")


def _grow(growth: Growth, *modules) -> None:
    for module in modules:
        module.grow(growth.stage, growth.alpha)


def _stage_fid(gen, preset, hp: dict, cfg: GanTrainConfig, reference, loop_config: dict, resolution: int) -> float:
    """FID at ``resolution`` of the EMA generator against the reference's reals downsampled to it."""
    from infra.cpus import available_cpus
    from training.evaluate.fid import _torch_threads, compute_fid
    from training.evaluate.reference import reference_images

    real = torch.from_numpy(reference_images(reference)).float()
    real = real.unsqueeze(1) if real.dim() == 3 else real.permute(0, 3, 1, 2)
    real = F.adaptive_avg_pool2d(real, resolution).round().clamp(0, 255).to(torch.uint8)
    real = real.permute(0, 2, 3, 1).numpy()
    real = real[..., 0] if real.shape[-1] == 1 else real
    fake = fid_fakes(gen, preset, hp, cfg, reference, loop_config)
    with _torch_threads(available_cpus()):
        return compute_fid(real, fake, dims=reference.dims).fid


def train_loop(loop_config: dict) -> None:
    """Ray Train worker function of a progressive run (one per worker)."""
    import ray.train
    import ray.train.torch


    w = worker_context(loop_config)  # channels_last is not used: the networks change shape as they grow
    cfg, run_id, num_classes, hp, preset = w.cfg, w.run_id, w.num_classes, w.hp, w.preset
    rank, world, device, autocast = w.rank, w.world, w.device, w.autocast

    torch.manual_seed(cfg.seed)  # identical initial weights on every worker
    ddp = {"find_unused_parameters": True}  # later stages' blocks are idle until they grow in
    pair = build_pair(preset, hp, num_classes, lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs=ddp))
    gen, critic = pair.gen, pair.critic
    augment, ada = make_augment(hp)
    if augment is not None:
        raise BadInput(f"augment={hp['augment']!r} is not supported with progressive presets yet; use --augment none")
    epoch, global_step, seen = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    ema = Ema(unwrap(gen), hp["ema_kimg"], hp["ema_rampup"])
    if checkpoint:  # resume: weights, optimizers, schedules, EMA and where the growth was
        with checkpoint.as_directory() as ckpt_dir:
            state = _load_state(ckpt_dir)
        restore_pair(pair, state)
        ema.load_state_dict(state["generator_ema"])
        epoch, global_step, seen = state["epoch"], state["global_step"], state["growth"]["images_seen"]
    elif cfg.init_from:
        raise BadInput("init_from (warm start) is not supported with progressive presets yet")
    loss = make_loss(hp["loss"], hp["gp_lambda"], hp["drift"])

    images, labels = load_training_data(cfg, rank, world)
    images, labels = images.to(device), labels.to(device)
    n_total = int(_sum_across_workers([float(len(images))], world)[0])
    timeline = Timeline(schedule_of(preset), unwrap(gen).resolutions, cfg.epoch_images or n_total)
    smallest = _min_across_workers(len(images), world)
    for r in timeline.resolutions:
        if smallest < max(1, timeline.schedule.batch[r] // world):
            raise BadInput(f"dataset {cfg.dataset}: a shard has {smallest} images, fewer than one batch of "
                           f"{timeline.schedule.batch[r] // world} per worker at {r}px")
    downsampled: dict[int, torch.Tensor] = {}

    reference, tracker = None, None
    cadence = Cadence(cfg.checkpoint_every, cfg.checkpoint_minutes)
    if rank == 0:
        from mlflow import MlflowClient

        configure(get_settings())
        tracker = MetricBuffer(MlflowClient(), run_id)
        fixed_z, fixed_y = grid_latents(w)
        if cfg.fid_every:
            reference = _reference(loop_config)
        if checkpoint:
            g = timeline.at(seen)
            for key, value in (("resumed_from_epoch", epoch), ("resumed_images_seen", seen),
                               ("resumed_stage", g.stage), ("resumed_alpha", g.alpha)):
                tracker.client.log_metric(run_id, key, value, step=epoch)
        log.info(f"[train] progressive {timeline.resolutions[0]} → {timeline.resolutions[-1]}px, "
                 f"{timeline.total_images} images on {world} worker(s), {n_total} training images"
                 + (f", resuming at {seen} images" if checkpoint else ""))

    last_stage = len(timeline.resolutions) - 1
    # The shard stays on the device; a resolution's downsampled copy is made once per stage.
    phase_started, step_seconds, shown = time.perf_counter(), 0.0, 0
    while seen < timeline.total_images:
        torch.manual_seed(epoch_seed(cfg.seed, rank, epoch))
        gen.train(), critic.train()
        started, start_seen = time.perf_counter(), seen
        end = timeline.epoch_end(seen)
        g0 = timeline.at(seen)
        step_images = timeline.step_images(seen, world)
        batch = step_images // world
        steps = math.ceil((end - seen) / step_images)
        if g0.resolution not in downsampled:
            downsampled = {g0.resolution: reals_at(images, Growth(g0.stage, 1.0, g0.resolution, batch, seen))}
        reals = downsampled[g0.resolution]
        passes = math.ceil(steps * batch / len(reals))
        order = torch.cat([torch.randperm(len(reals), device=device) for _ in range(passes)])
        history: dict[str, list[torch.Tensor]] = {}
        for step in range(steps):
            g = timeline.at(seen)
            _grow(g, unwrap(gen), unwrap(critic), ema.module)
            idx = order[step * batch : (step + 1) * batch]
            scalars = train_step(pair, loss, reals_at(reals[idx], g), labels[idx], hp, autocast)
            global_step += 1
            seen += step_images
            ema.update(unwrap(gen), step_images, seen)
            scalars["alpha"] = torch.tensor(g.alpha)
            for key, value in scalars.items():
                history.setdefault(key, []).append(value.detach().float())
        elapsed = time.perf_counter() - started
        step_seconds += elapsed
        shown += seen - start_seen
        per_step = {k: torch.stack(v).cpu().numpy() for k, v in history.items()}
        metrics = _mean_across_workers({k: float(v.mean()) for k, v in per_step.items() if k != "alpha"}, world)
        stage_done = timeline.ends_stage(end)
        metrics |= {"epoch": epoch + 1, "global_step": global_step, "images_seen": seen, "kimg": seen / 1000,
                    "stage": g0.stage, "resolution": g0.resolution, "alpha": float(ema.module.alpha),
                    "images_per_s": (seen - start_seen) / elapsed, "lr_g": pair.sched_g.get_last_lr()[0],
                    "ema_beta": ema.last_beta}
        epoch += 1
        final = seen >= timeline.total_images
        at_last = g0.stage == last_stage and float(ema.module.alpha) == 1.0
        fid_due = bool(cfg.fid_every) and at_last and (epoch % cfg.fid_every == 0 or final)
        # Same cadence as training.gan.loop; a stage's end is always checkpointed (its grid and FID).
        checkpoint_due = cadence.due(epoch, forced=fid_due or final or stage_done is not None,
                                     timed=agree(cadence.by_time(), world, device))
        if rank != 0:
            if checkpoint_due:
                ray.train.report(metrics)
                cadence.done()
            continue
        metrics["fid"] = float("nan")
        if reference is not None and fid_due:
            metrics |= _fid(ema.module, preset, hp, cfg, reference, loop_config)
            log.info(f"[train] epoch {epoch}: FID {metrics['fid']:.2f} at {g0.resolution}px")
        if stage_done is not None:
            if reference is not None:
                value = metrics["fid"] if stage_done == last_stage else _stage_fid(
                    ema.module, preset, hp, cfg, reference, loop_config, g0.resolution)
                metrics[f"fid_{g0.resolution}px"] = value
                log.info(f"[train] stage {stage_done} ({g0.resolution}px) done at {seen} images: FID {value:.2f}")
            tracker.client.log_image(run_id, sample_grid(ema.module, fixed_z, fixed_y if preset.conditional else None,
                                                         paired=preset.mask_channels > 0),
                                     key=f"samples_{g0.resolution}px", step=epoch)
        _log_epoch(tracker, metrics, per_step, global_step - steps + 1)
        log.info(f"[train] epoch {epoch}: {g0.resolution}px α {metrics['alpha']:.3f}, {seen}/{timeline.total_images} "
                 f"images, loss_d {metrics['loss_d']:+.3f} loss_g {metrics['loss_g']:+.3f}, "
                 f"{metrics['images_per_s']:.0f} img/s")
        if not checkpoint_due:
            tracker.submit()  # MLflow's async queue: returns at once
            continue
        tracker.client.log_image(run_id, sample_grid(ema.module, fixed_z, fixed_y if preset.conditional else None,
                                                     paired=preset.mask_channels > 0), key="samples", step=epoch)
        with tempfile.TemporaryDirectory() as tmp:
            growth = {"images_seen": seen, "stage": g0.stage, "alpha": metrics["alpha"], "resolution": g0.resolution}
            torch.save(pair_state(pair, ema) | {"ada": None, "epoch": epoch, "global_step": global_step,
                                                "growth": growth, "num_classes": num_classes,
                                                "config": cfg.model_dump(), "hyperparameters": hp, "metrics": metrics},
                       Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        tracker.flush()  # the history is durable up to this checkpoint
        cadence.done()
    if rank == 0:
        _log_phase(tracker, epoch, time.perf_counter() - phase_started, step_seconds, shown)
        log.info(f"[train] progressive run done: {seen} images, {np.round(seen / 1000, 1)} kimg")
