"""Exponential moving average of the generator's weights (StyleGAN's ``G_ema``).

Every sample grid, FID, registration and served image comes from the EMA generator; the raw
G keeps training and both are checkpointed.

Decay as a half-life in images (Karras et al. 2020, StyleGAN2-ADA ``training_loop.py``):
after a step of ``batch`` images at ``nimg`` images seen so far,

    ema_nimg = ema_kimg · 1000, capped at nimg · rampup when a ramp-up is set
    β = 0.5 ^ (batch / ema_nimg)
    θ_ema ← θ + β · (θ_ema − θ)         (= β θ_ema + (1 − β) θ)

so the weight of a past step halves every ``ema_kimg`` thousand images, and early in a short
run (``nimg · rampup`` < ``ema_kimg`` · 1000) the average does not drag in the random
initialisation. ``ema_kimg = 0`` makes the EMA a copy of G (no averaging).

BatchNorm buffers are **copied** from G after each update, not averaged (StyleGAN2-ADA's
``for b_ema, b in zip(G_ema.buffers(), G.buffers()): b_ema.copy_(b)``), and then **recomputed**
for the EMA weights wherever the EMA generator is used (:meth:`Ema.recalibrate`, BigGAN's
"standing statistics"; SWA's ``update_bn``): before each epoch's FID, sample grid and
checkpoint, the BN layers' running mean and variance are re-estimated as plain averages over a
few batches of the EMA generator's own forward passes on fixed-seed noise. StyleGAN has no BN,
so copying is harmless there; a DCGAN's BN is not. The copied statistics describe the *raw* G's
activations, and the EMA weights — an average over many steps — produce activations of smaller
variance, so normalising them with the raw G's larger running variance shrinks every layer's
output: measured on the phantom (``dcgan-knee-cpu``, 2,000 steps), samples come out low in
contrast and the FID at n = 300 is higher with copied statistics than with recomputed ones
(numbers in the README's demo section).
"""

from __future__ import annotations

from infra.errors import BadInput

import copy
from collections.abc import Callable

import torch
from torch import nn


def ema_beta(batch: int, nimg: int, ema_kimg: float, rampup: float | None = 0.05) -> float:
    """β of one update: 0.5 ** (batch / ema_nimg) (see the module docstring).

    Args:
        batch: images in the step just taken (the global batch).
        nimg: images seen so far, including this step.
        ema_kimg: half-life in thousands of images; 0 → β = 0 (copy).
        rampup: cap the half-life at ``nimg · rampup`` images; None or 0 disables the ramp-up.

    Raises:
        ValueError: negative ``ema_kimg``, ``rampup`` or ``batch``.
    """
    if ema_kimg < 0 or (rampup or 0) < 0 or batch < 0:
        raise BadInput(f"ema_kimg, ema_rampup and batch must be >= 0, got {ema_kimg}, {rampup}, {batch}")
    ema_nimg = ema_kimg * 1000.0
    if rampup:
        ema_nimg = min(ema_nimg, nimg * rampup)
    if ema_nimg <= 0:
        return 0.0
    return 0.5 ** (batch / ema_nimg)


class Ema:
    """An EMA copy of ``model`` (eval mode, no gradients) and its update.

    Args:
        model: the raw generator (bare, not DDP-wrapped); deep-copied at construction.
        ema_kimg: half-life in thousands of images (StyleGAN2-ADA default 10).
        rampup: ramp-up factor (StyleGAN2-ADA default 0.05); None disables it.
    """

    def __init__(self, model: nn.Module, ema_kimg: float = 10.0, rampup: float | None = 0.05) -> None:
        ema_beta(0, 0, ema_kimg, rampup)  # validates
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.ema_kimg, self.rampup = ema_kimg, rampup
        self.last_beta = 0.0

    @torch.no_grad()
    def update(self, model: nn.Module, batch: int, nimg: int) -> float:
        """Fold ``model``'s current weights in after a step of ``batch`` images (``nimg`` seen so far)."""
        beta = ema_beta(batch, nimg, self.ema_kimg, self.rampup)
        for p_ema, p in zip(self.module.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - beta)  # θ_ema + (1 − β)(θ − θ_ema)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.last_beta = beta
        return beta

    @torch.no_grad()
    def recalibrate(self, inputs: Callable[[torch.Generator], tuple], batches: int = 8, seed: int = 0) -> int:
        """Re-estimate the EMA generator's BatchNorm running statistics from its own outputs.

        Each BN layer's running mean/var is reset and becomes the plain (cumulative) average over
        ``batches`` forward passes in BN train mode (``momentum=None``), on inputs drawn by
        ``inputs(rng)`` from a CPU ``torch.Generator`` seeded with ``seed`` (global RNG untouched,
        so a resumed run recomputes the same statistics). Other layers stay in eval mode.

        Args:
            inputs: ``rng → args`` of one forward pass, e.g. ``lambda g: (torch.randn(64, 100, generator=g),)``.
            batches: forward passes to average over.
            seed: seed of ``rng``.

        Returns:
            The number of BN layers recomputed (0: nothing to do, the module is unchanged).
        """
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or batches < 1:
            return 0
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
        rng = torch.Generator().manual_seed(seed)
        try:
            for _ in range(batches):
                self.module(*inputs(rng))
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
                m.eval()
        return len(norms)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
