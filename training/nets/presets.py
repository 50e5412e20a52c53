"""Named GAN presets: architecture plus the paper's training hyperparameters.

A preset is looked up by name (``get_preset("wgan-gp-knee")``). Each paper architecture has a
``-small`` sibling of the same topology, sized so that a few epochs run on 2 CPU cores in
minutes; the demo and tests use those.

| preset | paper | loss | size | z |
|---|---|---|---|---|
| wgan-gp-knee | Prezja 2022 (000), Table 7 | WGAN-GP, λ 10, 3 critic steps | 210 | 50 |
| dcgan-fracture | Platin (004) | BCE | 128 | 100 |
| acgan-spine | Röglin 2022 (002) | AC-GAN (source BCE + class CE) | 64 | 100 |
| pggan-knee-mri | Karras 2018 via Waqas 2022 (001) | WGAN-GP + drift, progressive | 8 → 256 | 512 |
| enhanced-gan-knee-mri | Waqas 2022 (001): + SA before 256², SN in D | WGAN-GP + drift, progressive | 8 → 256 | 512 |
| cpggan-chest | Han 2020 (003): 512 + 14 multi-hot, AC head | WGAN-GP + drift + BCE per finding | 4 → 1024 | 512 |

One preset is not a paper's: ``dcgan-knee-cpu``, the small-CPU recipe the demo uses (a
``dcgan-fracture-small`` network trained the small-data way: DiffAugment before D, an EMA
generator, batch 64). Every preset samples from an EMA generator (``ema_kimg``); only this one
augments by default, the paper presets keep their published recipe (``augment="none"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from training.nets.acgan import AcganDiscriminator, AcganGenerator
from training.nets.dcgan import DcganDiscriminator, DcganGenerator
from training.nets.progressive import ProgressiveCritic, ProgressiveGenerator
from training.nets.wgan_gp import KneeCritic, KneeGenerator
from infra.errors import BadInput

Loss = Literal["wgan-gp", "wgan-gp-ac", "bce", "hinge", "acgan"]

# family → (generator factory, critic factory); each takes (preset, num_classes, channels).
_FAMILIES: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module]]] = {
    "knee": (
        lambda p, k, c: KneeGenerator(latent_dim=p.latent_dim, **_knee_widths(p.generator, c)),
        lambda p, k, c: KneeCritic(image_size=p.image_size, in_channels=c, **p.critic),
    ),
    "dcgan": (
        lambda p, k, c: DcganGenerator(latent_dim=p.latent_dim, channels=c, **p.generator),
        lambda p, k, c: DcganDiscriminator(image_size=p.image_size, channels=c, **p.critic),
    ),
    "acgan": (
        lambda p, k, c: AcganGenerator(num_classes=k, latent_dim=p.latent_dim, channels=c, **p.generator),
        lambda p, k, c: AcganDiscriminator(num_classes=k, image_size=p.image_size, channels=c, **p.critic),
    ),
    "progressive": (
        lambda p, k, c: ProgressiveGenerator(latent_dim=p.latent_dim, num_classes=k if p.conditional else 0,
                                             end=p.image_size, **{**p.generator, "channels": c}),
        lambda p, k, c: ProgressiveCritic(num_classes=k if p.conditional else 0, end=p.image_size,
                                          **{**p.critic, "channels": c}),
    ),
}


def _knee_widths(generator: dict, channels: int) -> dict:
    """The knee generator's last width is its image channel count: 1, or 1 + K for a paired preset."""
    if channels == 1:
        return generator
    widths = tuple(generator.get("widths", (128, 128, 128, 1)))
    return {**generator, "widths": (*widths[:-1], channels)}


@dataclass(frozen=True)
class GanPreset:
    """Architecture and optimisation settings of one GAN.

    Args:
        name: registry key.
        family: network family (``knee``, ``dcgan``, ``acgan``).
        loss: adversarial loss.
        image_size: generated image height/width.
        latent_dim: size of z.
        generator: keyword arguments of the generator class.
        critic: keyword arguments of the critic/discriminator class.
        lr: Adam learning rate (G and D).
        betas: Adam betas.
        lr_decay: Keras-style inverse-time decay, lr / (1 + decay · step); 0 disables it.
        batch_size: global batch size.
        critic_steps: critic updates per generator update.
        gp_lambda: gradient-penalty weight (WGAN-GP only).
        num_classes: default K for conditional presets (the dataset's class count wins).
        augment: augmentation before D by default (``none``, ``diffaugment``, ``ada``); the paper
            presets keep their published recipe (``none``).
        augment_policy: the augmentation ops, in order (:mod:`training.gan.augment`; default all
            four of DiffAugment's grayscale-safe ops).
        ema_kimg: half-life of the EMA generator in thousands of images (StyleGAN2-ADA's
            convention and default, 10); every preset samples from its EMA generator.
        source: paper the numbers come from, and what was chosen where it is silent.
        growth: progressive presets: :class:`training.gan.growth.GrowthSchedule` fields
            (images per stage and fade-in, batch per resolution); None for the others.
        drift: WGAN-GP's ε_drift·E[D(real)²] term (PGGAN: 1e-3; 0 elsewhere).
        mask_channels: K one-hot mask channels after the image (:mod:`training.nets.masks`;
            background included), so G emits and D reads ``1 + K`` channels; 0 = image only.
            A run sets it from its dataset's ``mask_classes`` (``GanTrainConfig.masks``).
    """

    name: str
    family: Literal["knee", "dcgan", "acgan", "progressive"]
    loss: Loss
    image_size: int
    latent_dim: int
    generator: dict[str, Any] = field(default_factory=dict)
    critic: dict[str, Any] = field(default_factory=dict)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    lr_decay: float = 1e-4
    batch_size: int = 32
    critic_steps: int = 3
    gp_lambda: float = 10.0
    num_classes: int = 1
    augment: Literal["none", "diffaugment", "ada"] = "none"
    augment_policy: tuple[str, ...] = ("translation", "cutout", "brightness", "contrast")
    ema_kimg: float = 10.0
    source: str = ""
    growth: dict[str, Any] | None = None
    drift: float = 0.0
    mask_channels: int = 0

    @property
    def conditional(self) -> bool:
        return self.loss in ("acgan", "wgan-gp-ac")

    @property
    def progressive(self) -> bool:
        return self.family == "progressive"

    def build(self, num_classes: int | None = None) -> tuple[nn.Module, nn.Module]:
        """A fresh (generator, critic) pair; ``num_classes`` sizes a conditional pair."""
        make_g, make_d = _FAMILIES[self.family]
        k = num_classes or self.num_classes
        # A progressive preset's own `channels` (the --channels option) applies when it has no masks.
        channels = 1 + self.mask_channels if self.mask_channels else self.generator.get("channels", 1)
        gen, critic = make_g(self, k, channels), make_d(self, k, channels)
        if gen.image_size != self.image_size:
            raise BadInput(f"preset {self.name!r}: generator makes {gen.image_size}px, image_size is {self.image_size}")
        return gen, critic


_KNEE = "Prezja et al. 2022, Sci. Rep., Table 7 (seed 000)"
_DCGAN = "Platin, UPenn thesis (seed 004): Adam 3.4e-4 (0.5, 0.999), batch 100, BCE"
_CPU_RECIPE = ("small-CPU recipe, not a paper's: dcgan-fracture-small's networks (Platin's DCGAN at 64 px, "
               "widths / 8) with non-saturating BCE, Adam 4e-4 (0.5, 0.999), batch 64, DiffAugment "
               "(Zhao et al. 2020: translation, cutout, brightness, contrast) and an EMA generator "
               "(StyleGAN2-ADA: 10 kimg half-life, ramp-up 0.05, BatchNorm statistics recomputed). lr 4e-4, "
               "not DCGAN's 2e-4: measured on the phantom after 1,000 steps, FID 122 vs 172 at n = 300")
_ACGAN = ("Röglin et al. 2022 (seed 002): topology from the paper; widths, Adam 2e-4 (0.5, 0.999), "
          "batch 64 chosen (the paper gives none)")

_PGGAN = ("Karras et al. 2018 (PGGAN) defaults where the seeds are silent: equalised LR, pixel norm in G, "
          "minibatch-stddev (group 4) in D, LReLU 0.2, linear output, WGAN-GP λ 10 with drift 1e-3, "
          "Adam 1e-3 β (0, 0.99), 1 critic step, widths min(8192/(r/2), 512); growth 600k + 600k fade-in "
          "and batch 128…4 from Han et al. 2020 (the knee paper gives none)")
_KNEE_MRI = "Waqas et al. 2022 (seed 001): 8 → 256, α fade-in; " + _PGGAN
_ENHANCED = ("Waqas et al. 2022 (seed 001) Enhanced-GAN: one SAGAN block (f, g: C/8, h: C; γ = 0 at start) on the "
             "input of the 256 stage in G only, SN in D, PN in G; else " + _PGGAN)
_CHEST = ("Han et al. 2020 (seed 003): 4 → 1024, z 512 ‖ 14-d multi-hot, AC head (one BCE logit per finding), "
          "WGAN-GP, PN, LReLU 0.2, linear output, 600k + 600k fade-in, batch 128…4; " + _PGGAN)
_PG = {"lr": 1e-3, "betas": (0.0, 0.99), "lr_decay": 0.0, "critic_steps": 1, "gp_lambda": 10.0, "drift": 1e-3}
# -small: 8 → 32 on 2 CPU cores: widths min(256/(r/2), 64) = 64, 32, 16; z 64.
_SMALL_NET = {"fmap_base": 256, "fmap_max": 64}
_SMALL_GROWTH = {"stage_images": 4000, "fade_images": 4000, "batch": {4: 32, 8: 32, 16: 32, 32: 32}}

PRESETS: dict[str, GanPreset] = {
    p.name: p
    for p in [
        GanPreset(name="wgan-gp-knee", family="knee", loss="wgan-gp", image_size=210, latent_dim=50, source=_KNEE),
        GanPreset(
            name="wgan-gp-knee-small", family="knee", loss="wgan-gp", image_size=64, latent_dim=50,
            generator={"base_size": 8, "base_channels": 64, "widths": (64, 32, 1), "crop": 0, "bn_momentum": 0.1},
            critic={"widths": (32, 64, 128), "dropouts": (0.0, 0.3, 0.3)},
            source="same topology as wgan-gp-knee, scaled for 2 CPU cores",
        ),
        GanPreset(
            name="dcgan-fracture", family="dcgan", loss="bce", image_size=128, latent_dim=100,
            lr=3.4e-4, betas=(0.5, 0.999), lr_decay=0.0, batch_size=100, critic_steps=1, gp_lambda=0.0,
            source=_DCGAN,
        ),
        GanPreset(
            name="dcgan-fracture-small", family="dcgan", loss="bce", image_size=64, latent_dim=100,
            generator={"widths": (128, 64, 32, 16)}, critic={"widths": (16, 32, 64, 128)},
            lr=3.4e-4, betas=(0.5, 0.999), lr_decay=0.0, batch_size=32, critic_steps=1, gp_lambda=0.0,
            source="same topology as dcgan-fracture at 64 px, widths / 8",
        ),
        GanPreset(
            name="dcgan-knee-cpu", family="dcgan", loss="bce", image_size=64, latent_dim=100,
            generator={"widths": (128, 64, 32, 16)}, critic={"widths": (16, 32, 64, 128)},
            lr=4e-4, betas=(0.5, 0.999), lr_decay=0.0, batch_size=64, critic_steps=1, gp_lambda=0.0,
            augment="diffaugment", ema_kimg=10.0, source=_CPU_RECIPE,
        ),
        GanPreset(
            name="acgan-spine", family="acgan", loss="acgan", image_size=64, latent_dim=100,
            lr=2e-4, betas=(0.5, 0.999), lr_decay=0.0, batch_size=64, critic_steps=1, gp_lambda=0.0,
            num_classes=3, source=_ACGAN,
        ),
        GanPreset(
            name="acgan-spine-small", family="acgan", loss="acgan", image_size=64, latent_dim=100,
            generator={"widths": (64, 32, 16)}, critic={"widths": (16, 32, 64, 128)},
            lr=2e-4, betas=(0.5, 0.999), lr_decay=0.0, batch_size=32, critic_steps=1, gp_lambda=0.0,
            num_classes=3, source="same topology as acgan-spine, widths / 4 (discriminator / 2)",
        ),
        GanPreset(
            name="pggan-knee-mri", family="progressive", loss="wgan-gp", image_size=256, latent_dim=512,
            generator={"start": 8, "norm": "pn"}, critic={"start": 8, "norm": "none"},
            batch_size=128, growth={}, source=_KNEE_MRI, **_PG,
        ),
        GanPreset(
            name="enhanced-gan-knee-mri", family="progressive", loss="wgan-gp", image_size=256, latent_dim=512,
            generator={"start": 8, "norm": "pn", "attention_at": 256}, critic={"start": 8, "norm": "sn"},
            batch_size=128, growth={}, source=_ENHANCED, **_PG,
        ),
        GanPreset(
            name="cpggan-chest", family="progressive", loss="wgan-gp-ac", image_size=1024, latent_dim=512,
            generator={"start": 4, "norm": "pn"}, critic={"start": 4, "norm": "none"},
            batch_size=128, num_classes=14, growth={}, source=_CHEST, **_PG,
        ),
        GanPreset(
            name="pggan-knee-mri-small", family="progressive", loss="wgan-gp", image_size=32, latent_dim=64,
            generator={"start": 8, "norm": "pn", **_SMALL_NET}, critic={"start": 8, "norm": "none", **_SMALL_NET},
            batch_size=32, growth=_SMALL_GROWTH, source="same topology as pggan-knee-mri, 8 → 32, widths 64/32/16",
            **_PG,
        ),
        GanPreset(
            name="enhanced-gan-knee-mri-small", family="progressive", loss="wgan-gp", image_size=32, latent_dim=64,
            generator={"start": 8, "norm": "pn", "attention_at": 32, **_SMALL_NET},
            critic={"start": 8, "norm": "sn", **_SMALL_NET}, batch_size=32, growth=_SMALL_GROWTH,
            source="same topology as enhanced-gan-knee-mri, 8 → 32 (SA before the last stage), widths 64/32/16",
            **_PG,
        ),
        GanPreset(
            name="cpggan-chest-small", family="progressive", loss="wgan-gp-ac", image_size=32, latent_dim=64,
            generator={"start": 4, "norm": "pn", **_SMALL_NET}, critic={"start": 4, "norm": "none", **_SMALL_NET},
            batch_size=32, num_classes=14, growth=_SMALL_GROWTH,
            source="same topology as cpggan-chest, 4 → 32, widths 64/64/32/16 (K from the dataset)", **_PG,
        ),
    ]
}


def get_preset(name: str) -> GanPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise BadInput(f"unknown GAN preset {name!r}; choose one of {sorted(PRESETS)}") from None


def build_gan(name: str, num_classes: int | None = None) -> tuple[nn.Module, nn.Module]:
    return get_preset(name).build(num_classes)
