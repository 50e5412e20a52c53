"""The growth schedule of a progressive GAN, as data: images per stage and per fade-in, batch per resolution.

Defaults are the chest paper's (Han et al. 2020, seed 003): 600k images per stage plus 600k for
each fade-in, global batch 128 up to 32², then 64 / 32 / 16 / 8 / 4 at 64² … 1024².

Timeline, in images seen: stage 0 (the start resolution) trains ``stage_images``; every later
stage s first fades its new block in over ``fade_images`` (α rising linearly from 0 to 1 with
the images seen before each step, PGGAN's ``lod`` schedule), then trains ``stage_images`` at
α = 1. The run ends after the last stage's stable phase. A step belongs to the phase of the
images seen *before* it, so a checkpoint's ``images_seen`` alone restores stage, α and batch.

Epochs (the unit of checkpoints, grids and FID) end every ``epoch_images`` images and at every
stage's end, so each stage ends with a checkpoint, its own sample grid and its FID.

Reals follow the generator (PGGAN's ``process_reals``): area-downsampled to the stage's
resolution and, during a fade-in, blended with their own 2× nearest-upsampled half-resolution
version by the same α, so D never sees a sharper real than the fake path can produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator

from infra.errors import BadInput

#: Global batch per resolution (Han et al. 2020); resolutions below 32² use 128 too.
CHEST_BATCH: dict[int, int] = {4: 128, 8: 128, 16: 128, 32: 128, 64: 64, 128: 32, 256: 16, 512: 8, 1024: 4}


class GrowthSchedule(BaseModel):
    """Images per stage / fade-in and the global batch per resolution."""

    model_config = {"frozen": True}

    stage_images: int = Field(600_000, ge=1, description="images at α = 1 per stage (chest paper: 600k)")
    fade_images: int = Field(600_000, ge=1, description="images of each fade-in (chest paper: 600k)")
    batch: dict[int, int] = Field(default_factory=lambda: dict(CHEST_BATCH),
                                  description="global batch per resolution (chest paper's by default)")

    @field_validator("batch")
    @classmethod
    def _positive(cls, value: dict[int, int]) -> dict[int, int]:
        if any(b < 1 or r < 1 for r, b in value.items()):
            raise ValueError(f"batch sizes and resolutions must be >= 1, got {value}")
        return value


@dataclass(frozen=True)
class Phase:
    """One phase of the timeline: a stage's fade-in or its stable part."""

    stage: int
    resolution: int
    fading: bool
    start: int  # images seen when it starts
    end: int  # images seen when it ends
    batch: int  # global batch


@dataclass(frozen=True)
class Growth:
    """Where a run is: stage, α, resolution and global batch at ``images_seen``."""

    stage: int
    alpha: float
    resolution: int
    batch: int
    images_seen: int


class Timeline:
    """The phases of ``schedule`` over ``resolutions`` and the epoch boundaries.

    Args:
        schedule: images and batches.
        resolutions: the stages' resolutions, start to end.
        epoch_images: images per epoch (epochs also end at every stage's end).
    """

    def __init__(self, schedule: GrowthSchedule, resolutions: list[int], epoch_images: int) -> None:
        if epoch_images < 1:
            raise BadInput(f"epoch_images must be >= 1, got {epoch_images}")
        missing = [r for r in resolutions if r not in schedule.batch]
        if missing:
            raise BadInput(f"growth batch has no entry for resolution(s) {missing}; it has {sorted(schedule.batch)}")
        self.schedule, self.resolutions, self.epoch_images = schedule, resolutions, epoch_images
        phases, seen = [], 0
        for stage, r in enumerate(resolutions):
            if stage:
                phases.append(Phase(stage, r, True, seen, seen + schedule.fade_images, schedule.batch[r]))
                seen += schedule.fade_images
            phases.append(Phase(stage, r, False, seen, seen + schedule.stage_images, schedule.batch[r]))
            seen += schedule.stage_images
        self.phases: list[Phase] = phases
        self.total_images = seen
        self.stage_ends = [p.end for p in phases if not p.fading]

    def phase(self, images_seen: int) -> Phase:
        for p in self.phases:
            if images_seen < p.end:
                return p
        return self.phases[-1]

    def at(self, images_seen: int) -> Growth:
        """Stage, α, resolution and batch of the step that starts after ``images_seen`` images."""
        p = self.phase(images_seen)
        alpha = min(1.0, (images_seen - p.start) / (p.end - p.start)) if p.fading else 1.0
        return Growth(p.stage, alpha, p.resolution, p.batch, images_seen)

    def epoch_end(self, images_seen: int) -> int:
        """Images seen at which the epoch starting at ``images_seen`` ends."""
        next_multiple = (images_seen // self.epoch_images + 1) * self.epoch_images
        next_stage_end = min(e for e in self.stage_ends if e > images_seen)
        return min(next_multiple, next_stage_end)

    def ends_stage(self, epoch_end: int) -> int | None:
        """The stage an epoch ending at ``epoch_end`` (a value of :meth:`epoch_end`) completes, if any."""
        return self.stage_ends.index(epoch_end) if epoch_end in self.stage_ends else None

    def step_images(self, images_seen: int, world: int) -> int:
        """Images one step takes at ``images_seen`` on ``world`` workers (each gets batch // world)."""
        return world * max(1, self.at(images_seen).batch // world)


def reals_at(images: torch.Tensor, growth: Growth) -> torch.Tensor:
    """Reals (N, C, H, W) as D should see them at ``growth``: area-downsampled, faded like G's output."""
    x = F.adaptive_avg_pool2d(images, growth.resolution) if images.shape[-1] != growth.resolution else images
    if growth.alpha < 1.0:
        low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(low, x, growth.alpha)
    return x


def schedule_of(preset) -> GrowthSchedule:
    """The growth schedule of a progressive preset (its ``growth`` dict over the chest defaults)."""
    return GrowthSchedule(**(preset.growth or {}))


def progressive_preset(preset, cfg):
    """``preset`` with a run config's progressive overrides (norms, channels, schedule) applied.

    ``cfg`` is a :class:`training.gan.config.GanTrainConfig`; ``batch_size``, when set, is the
    global batch at every resolution.
    """
    import dataclasses

    gen, critic = dict(preset.generator), dict(preset.critic)
    if cfg.g_norm:
        gen["norm"] = cfg.g_norm
    if cfg.d_norm:
        critic["norm"] = cfg.d_norm
    if cfg.channels:
        gen["channels"] = critic["channels"] = cfg.channels
    growth = schedule_of(preset).model_dump()
    for key in ("stage_images", "fade_images"):
        if getattr(cfg, key) is not None:
            growth[key] = getattr(cfg, key)
    if cfg.growth_batch:
        growth["batch"] = {**growth["batch"], **cfg.growth_batch}
    if cfg.batch_size:
        growth["batch"] = {r: cfg.batch_size for r in growth["batch"]}
    schedule = GrowthSchedule(**growth)
    start = gen.get("start", 4)
    if start not in schedule.batch:
        raise BadInput(f"growth batch has no entry for the start resolution {start}")
    return dataclasses.replace(preset, generator=gen, critic=critic, growth=schedule.model_dump(),
                               batch_size=schedule.batch[start])


def progressive_hyperparameters(preset, cfg) -> dict:
    """The progressive run's extra hyperparameters (logged to MLflow with the others)."""
    schedule = schedule_of(preset)
    return {"drift": preset.drift, "stage_images": schedule.stage_images, "fade_images": schedule.fade_images,
            "growth_batch": schedule.batch, "g_norm": preset.generator.get("norm", "pn"),
            "d_norm": preset.critic.get("norm", "none"), "channels": preset.generator.get("channels", 1),
            "growth_start": preset.generator.get("start", 4), "epoch_images": cfg.epoch_images}


PROGRESSIVE_OPTIONS = ("stage_images", "fade_images", "growth_batch", "epoch_images", "g_norm", "d_norm", "channels")


def check_progressive(cfg) -> None:
    """Driver-side checks of the progressive options (one BadInput naming the field).

    They are rejected on other presets (where they would silently do nothing); on progressive
    presets, options the progressive loop does not support yet are rejected.
    """
    if not cfg.preset().progressive:
        for key in PROGRESSIVE_OPTIONS:
            if getattr(cfg, key) is not None:
                raise BadInput(f"--{key.replace('_', '-')} is for progressive presets (pggan-*, enhanced-gan-*, "
                               f"cpggan-*), not {cfg.arch}", field=key)
        return
    if (cfg.augment or "none") != "none":
        raise BadInput(f"--augment {cfg.augment} is not supported with progressive presets yet; use --augment none",
                       field="augment")
    if cfg.init_from:
        raise BadInput("--init-from (warm start) is not supported with progressive presets yet", field="init_from")
    preset = cfg.preset()
    resolutions = [preset.generator.get("start", 4) * 2**i for i in range(32)
                   if preset.generator.get("start", 4) * 2**i <= preset.image_size]
    missing = [r for r in resolutions if r not in (preset.growth or {}).get("batch", {})]
    if missing:
        raise BadInput(f"--growth-batch has no batch for resolution(s) {missing}", field="growth_batch")
