"""What a GAN training run is: one validated config, shared by the driver, the workers and the CLI."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from infra.seeds import TRAIN_MAX_SEED

from training.nets.presets import GanPreset, get_preset


class GanTrainConfig(BaseModel):
    """What to train and how; unset hyperparameters come from the architecture preset."""

    dataset: str = Field(description="catalog dataset, name@version or name (latest)")
    arch: str = "wgan-gp-knee-small"
    epochs: int = Field(5, ge=1)
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    amp: bool = Field(True, description="bf16 autocast and channels_last on GPU (ignored on CPU)")
    split: str | None = "train"
    subset: str | None = Field(None, description="catalog subset, e.g. gan-train (focus-checked)")
    class_label: int | None = Field(None, ge=0, description="train on one class only (per-class mode)")
    balance: Literal["none", "first", "random"] = Field(
        "none", description="undersample every class to the smallest (spine paper Method II)")
    limit: int | None = Field(None, ge=1, description="use only the first N images")
    seed: int = Field(0, ge=0, le=TRAIN_MAX_SEED)  # torch.manual_seed keeps 32 bits (infra.seeds)
    batch_size: int | None = Field(None, ge=1, description="global batch size")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="generator steps per epoch (several passes over the shard if needed); "
        "None = one pass")
    lr: float | None = Field(None, gt=0, description="learning rate of G (and of D unless lr_d is set)")
    lr_d: float | None = Field(None, gt=0, description="learning rate of the critic/discriminator")
    latent_dim: int | None = Field(None, ge=1, le=4096, description="size of z (preset default)")
    critic_steps: int | None = Field(None, ge=1)
    gp_lambda: float | None = Field(None, ge=0)
    lr_decay: float | None = Field(None, ge=0)
    decay_form: Literal["inverse-time", "exponential", "none"] = Field(
        "inverse-time", description="inverse-time: lr/(1+d·t) (Keras legacy decay); exponential: lr·(1−d)^t")
    grid_size: int = Field(36, ge=1, le=256, description="images in the fixed-latent sample grid")
    fid_every: int = Field(5, ge=0, description="FID every k epochs and at the last one; 0 disables it")
    fid_n: int | None = Field(None, ge=2, description="n_real = n_fake; None uses the whole training selection")
    keep_checkpoints: int = Field(2, ge=1, description="top-k checkpoints by FID (the latest is kept too)")
    checkpoint_every: int = Field(100, ge=1, description="checkpoint (and sample grid) every N epochs, or sooner "
                                  "by checkpoint_minutes; FID epochs and the last are always checkpointed "
                                  "(training.gan.cadence)")
    checkpoint_minutes: float | None = Field(2.0, gt=0, description="… or when this many minutes have passed "
                                             "since the last checkpoint, whichever comes first; None = by epochs only")
    kimg: float | None = Field(None, gt=0, description="training length in thousands of real images shown "
                               "(StyleGAN's --kimg); sets epochs and steps_per_epoch: an epoch becomes a tick of "
                               "tick_kimg, and fid_every/checkpoint_every count ticks")
    tick_kimg: float = Field(4.0, gt=0, description="with kimg: thousands of images per epoch (StyleGAN2-ADA's "
                             "tick, default 4)")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")
    init_from: str | None = Field(None, description="warm start: checkpoint URI s3://bucket/path of a run")
    transfer_critic: bool = Field(False, description="with init_from, also start from its critic")
    log_every: int = Field(0, ge=0, description="console progress every N steps; 0 = 4 per epoch")
    fid_quick_n: int | None = Field(
        None, ge=2, description="also a quick FID at this smaller n on every epoch (metric fid_quick); the "
        "selection FID stays at fid_n")
    augment: Literal["none", "diffaugment", "ada"] | None = Field(
        None, description="augmentation before D: DiffAugment (p = 1), ADA (adaptive p) or none; None = preset's")
    augment_policy: list[Literal["translation", "cutout", "brightness", "contrast"]] | None = Field(
        None, description="augmentation ops in order; None = the preset's")
    ada_target: float = Field(0.6, gt=0, lt=1, description="ADA's target r_t = E[sign(D(real))]")
    ada_kimg: float = Field(100.0, gt=0, description="ADA: thousands of images for p to go from 0 to 1")
    ema_kimg: float | None = Field(None, ge=0, description="EMA generator half-life in thousands of images; "
                                   "0 = no averaging; None = preset's")
    ema_rampup: float | None = Field(0.05, ge=0, description="EMA ramp-up: half-life capped at images seen × this")
    ema_bn_batches: int = Field(8, ge=0, description="batches of 64 over which the EMA generator's BatchNorm "
                                "statistics are recomputed before each epoch's FID/grid/checkpoint; 0 = keep "
                                "the statistics copied from the raw G")
    experiment: str = "synthray-gan"
    # Progressive presets only (pggan-*, enhanced-gan-*, cpggan-*); see training.gan.growth.
    stage_images: int | None = Field(None, ge=1, description="progressive: images per stage at α = 1 (preset's)")
    fade_images: int | None = Field(None, ge=1, description="progressive: images per fade-in (preset's)")
    growth_batch: dict[int, int] | None = Field(
        None, description="progressive: global batch per resolution (preset's: the chest paper's 128…4)")
    epoch_images: int | None = Field(
        None, ge=1, description="progressive: images per epoch (checkpoint, grid, FID); None = the selection's size. "
        "Epochs also end at every stage's end; the schedule, not --epochs, sets the run's length")
    g_norm: Literal["pn", "sn"] | None = Field(None, description="progressive G: pixel norm or spectral norm")
    d_norm: Literal["sn", "pn", "none"] | None = Field(None, description="progressive D: spectral, pixel or no norm")
    channels: int | None = Field(None, ge=1, le=4, description="progressive: image channels (knee MRI: 1, or 2 "
                                 "with the cartilage mask); preset's if unset")
    # Image + mask generators (training.nets.masks): G emits 1 + K channels, D reads them.
    masks: bool = Field(False, description="train on (image, one-hot mask) stacks of a selection whose records "
                        "all carry masks; the generator then emits 1 + K channels (K = the dataset's mask classes)")
    mask_classes: list[str] | None = Field(
        None, description="the dataset's mask class names (background first); the driver fills this in from the "
        "manifest when masks is set, so workers and checkpoints rebuild the same 1 + K channels")

    @model_validator(mode="after")
    def _kimg_schedule(self) -> "GanTrainConfig":
        """With ``kimg``: epochs = ⌈kimg / tick_kimg⌉ ticks of ⌈1000·tick_kimg / global batch⌉ steps.

        So the run shows at least ``kimg`` thousand images (whole steps round it up; the logged
        ``kimg`` metric is exact). Idempotent: a worker re-validating the dumped config gets the same.
        """
        if self.kimg is None:
            return self
        preset = get_preset(self.arch)
        if preset.progressive:
            raise ValueError("kimg: progressive presets set their length with stage_images/fade_images")
        batch = self.batch_size or preset.batch_size
        self.steps_per_epoch = math.ceil(1000 * self.tick_kimg / batch)
        self.epochs = math.ceil(self.kimg / self.tick_kimg - 1e-9)
        return self

    def preset(self) -> GanPreset:
        """The architecture preset with this run's latent size."""
        preset = get_preset(self.arch)
        if self.latent_dim is not None:
            preset = dataclasses.replace(preset, latent_dim=self.latent_dim)
        if self.masks and self.mask_classes:
            preset = dataclasses.replace(preset, mask_channels=len(self.mask_classes))
        if preset.progressive:
            from training.gan.growth import progressive_preset

            preset = progressive_preset(preset, self)
        return preset

    def hyperparameters(self) -> dict:
        """Effective hyperparameters: preset values overridden by the set fields."""
        preset = self.preset()
        hp = {
            "loss": preset.loss,
            "image_size": preset.image_size,
            "latent_dim": preset.latent_dim,
            "batch_size": preset.batch_size,
            "lr": preset.lr,
            "lr_d": self.lr_d or self.lr or preset.lr,
            "betas": preset.betas,
            "critic_steps": preset.critic_steps,
            "gp_lambda": preset.gp_lambda,
            "lr_decay": preset.lr_decay,
            "decay_form": self.decay_form,
            "augment": self.augment or preset.augment,
            "ema_kimg": preset.ema_kimg if self.ema_kimg is None else self.ema_kimg,
            "ema_rampup": self.ema_rampup,
            "ema_bn_batches": self.ema_bn_batches,
        }
        if hp["augment"] != "none":
            hp["augment_policy"] = list(self.augment_policy or preset.augment_policy)
        if hp["augment"] == "ada":
            hp |= {"ada_target": self.ada_target, "ada_kimg": self.ada_kimg}
        for key in ("batch_size", "lr", "critic_steps", "gp_lambda", "lr_decay"):
            if getattr(self, key) is not None:
                hp[key] = getattr(self, key)
        if self.decay_form == "none":
            hp["lr_decay"] = 0.0
        if preset.progressive:
            from training.gan.growth import progressive_hyperparameters

            hp |= progressive_hyperparameters(preset, self)
        return hp

    def selection(self) -> dict:
        """Keyword arguments of :func:`training.catalog.selection.select_records` for this run."""
        labels = None if self.class_label is None else [self.class_label]
        return {"split": self.split, "labels": labels, "limit": self.limit, "subset": self.subset,
                "balance": self.balance, "seed": self.seed}
