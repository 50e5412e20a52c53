"""Named GAN presets: architecture plus the paper's training hyperparameters.

A preset is looked up by name (``get_preset("wgan-gp-knee")``). Each paper architecture has a
``-small`` sibling of the same topology, sized so that a few epochs run on 2 CPU cores in
minutes; the demo and tests use those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from training.models.wgan_gp import KneeCritic, KneeGenerator


@dataclass(frozen=True)
class GanPreset:
    """Architecture and optimisation settings of one GAN.

    Args:
        name: registry key.
        loss: adversarial loss family.
        image_size: generated image height/width.
        latent_dim: size of z.
        generator: keyword arguments of the generator class.
        critic: keyword arguments of the critic/discriminator class.
        lr: Adam learning rate (G and D).
        betas: Adam betas.
        lr_decay: Keras-style inverse-time decay, lr / (1 + decay · step); 0 disables it.
        batch_size: global batch size.
        critic_steps: critic updates per generator update.
        gp_lambda: gradient-penalty weight.
        source: paper the numbers come from.
    """

    name: str
    loss: Literal["wgan-gp"]
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
    source: str = ""

    def build(self) -> tuple[nn.Module, nn.Module]:
        """A fresh (generator, critic) pair."""
        gen = KneeGenerator(latent_dim=self.latent_dim, **self.generator)
        critic = KneeCritic(image_size=self.image_size, **self.critic)
        if gen.image_size != self.image_size:
            raise ValueError(f"preset {self.name!r}: generator makes {gen.image_size}px, image_size is {self.image_size}")
        return gen, critic


PRESETS: dict[str, GanPreset] = {
    p.name: p
    for p in [
        GanPreset(
            name="wgan-gp-knee",
            loss="wgan-gp",
            image_size=210,
            latent_dim=50,
            source="Prezja et al. 2022, Sci. Rep., Table 7 (seed 000)",
        ),
        GanPreset(
            name="wgan-gp-knee-small",
            loss="wgan-gp",
            image_size=64,
            latent_dim=50,
            generator={"base_size": 8, "base_channels": 64, "widths": (64, 32, 1), "crop": 0, "bn_momentum": 0.1},
            critic={"widths": (32, 64, 128), "dropouts": (0.0, 0.3, 0.3)},
            lr=2e-4,
            batch_size=32,
            source="same topology as wgan-gp-knee, scaled for 2 CPU cores",
        ),
    ]
}


def get_preset(name: str) -> GanPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown GAN preset {name!r}; choose one of {sorted(PRESETS)}") from None


def build_gan(name: str) -> tuple[nn.Module, nn.Module]:
    return get_preset(name).build()
