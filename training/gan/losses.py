"""Adversarial losses, one small class per paper, all with the same two-call interface.

``critic_loss`` and ``generator_loss`` return a dict of scalars whose ``"loss"`` entry is
what gets back-propagated; the rest are logged (Wasserstein estimate, gradient penalty,
D's accuracy…, and ``real_sign`` = E[sign(D(real))], ADA's overfitting heuristic r_t,
Karras et al. 2020 §3.1). Sigmoids live inside ``binary_cross_entropy_with_logits`` (the same function
as the papers' sigmoid + BCE, numerically stable). Real and fake go through the critic in
separate forward passes so BatchNorm in the DCGAN/AC-GAN discriminators sees pure batches,
as in the reference DCGAN; DDP handles several forwards before one backward (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from infra.errors import BadInput

Scalars = dict[str, torch.Tensor]


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None
) -> torch.Tensor:
    """WGAN-GP penalty E[(‖∇D(x̂)‖₂ − 1)²] on interpolates x̂ = ε·real + (1−ε)·fake (Gulrajani 2017).

    ``eps`` (N, 1, 1, 1) defaults to U(0, 1) draws; passing it makes the penalty reproducible.
    The norm is taken in float32 so a bf16 autocast forward does not round it.
    """
    if eps is None:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.float().flatten(1).norm(2, dim=1) - 1) ** 2).mean()


class WganGpLoss:
    """Critic: −(E[D(real)] − E[D(fake)]) + λ·GP [+ ε_drift·E[D(real)²]]; generator: −E[D(fake)].

    ``drift`` is PGGAN's ε_drift (Karras et al. 2018, §A.1: 1e-3), which keeps D's output near 0;
    0 (the default) is plain WGAN-GP.
    """

    def __init__(self, gp_lambda: float = 10.0, drift: float = 0.0) -> None:
        self.gp_lambda, self.drift = gp_lambda, drift

    def critic_loss(self, critic: nn.Module, real, fake, y_real=None, y_fake=None, eps=None) -> Scalars:
        d_real = critic(real).float()
        w = d_real.mean() - critic(fake).float().mean()
        gp = gradient_penalty(critic, real, fake, eps)
        out = {"loss": -w + self.gp_lambda * gp, "gp": gp, "wasserstein": w, "real_sign": _sign_mean(d_real)}
        if self.drift:
            drift = d_real.square().mean()
            out |= {"loss": out["loss"] + self.drift * drift, "drift": drift}
        return out

    def generator_loss(self, critic: nn.Module, fake, y_fake=None) -> Scalars:
        return {"loss": -critic(fake).float().mean()}


def multi_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float (B, K) targets from multi-hot (B, K) or long class indices (B,)."""
    return F.one_hot(y.long(), num_classes).float() if y.dim() == 1 else y.float()


class WganGpAcLoss:
    """Conditional PGGAN (Han et al. 2020): WGAN-GP with drift plus an AC-GAN head, multi-label.

    D returns (score, class logits (B, K)). D minimises −W + λ·GP + ε_drift·E[D(real)²] +
    BCE(logits(real), y_real) + BCE(logits(fake), y_fake); G minimises −E[D(fake)] +
    BCE(logits(fake), y_fake): PGGAN's conditional loss (its ``cond_weight`` 1 on both sides) with
    one sigmoid BCE per finding instead of a softmax, since a radiograph has several findings.
    The penalty's forward runs first: under DDP with ``find_unused_parameters`` the last forward
    before backward must reach every parameter, and the penalty uses the score only.
    """

    def __init__(self, gp_lambda: float = 10.0, drift: float = 1e-3) -> None:
        self.gp_lambda, self.drift = gp_lambda, drift

    def critic_loss(self, critic: nn.Module, real, fake, y_real=None, y_fake=None, eps=None) -> Scalars:
        gp = gradient_penalty(lambda x: critic(x)[0], real, fake, eps)
        (sr, cr), (sf, cf) = critic(real), critic(fake)
        sr, sf = sr.float(), sf.float()
        w = sr.mean() - sf.mean()
        k = cr.shape[1]
        l_c = F.binary_cross_entropy_with_logits(cr.float(), multi_hot(y_real, k)) + \
            F.binary_cross_entropy_with_logits(cf.float(), multi_hot(y_fake, k))
        drift = sr.square().mean()
        loss = -w + self.gp_lambda * gp + self.drift * drift + l_c
        return {"loss": loss, "gp": gp, "wasserstein": w, "drift": drift, "loss_class": l_c,
                "real_sign": _sign_mean(sr)}

    def generator_loss(self, critic: nn.Module, fake, y_fake=None) -> Scalars:
        s, c = critic(fake)
        l_c = F.binary_cross_entropy_with_logits(c.float(), multi_hot(y_fake, c.shape[1]))
        return {"loss": -s.float().mean() + l_c, "loss_class_g": l_c}


def _sign_mean(out: torch.Tensor) -> torch.Tensor:
    """E[sign(D(real))] of a batch of critic outputs or logits (ADA's r_t), without gradient."""
    return torch.sign(out.detach().float()).mean()


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class BceLoss:
    """DCGAN: D minimises BCE(real→1) + BCE(fake→0); G the non-saturating BCE(fake→1)."""

    def critic_loss(self, critic: nn.Module, real, fake, y_real=None, y_fake=None) -> Scalars:
        lr, lf = critic(real), critic(fake)
        return {"loss": _bce(lr, 1.0) + _bce(lf, 0.0),
                "d_real": torch.sigmoid(lr.float()).mean(), "d_fake": torch.sigmoid(lf.float()).mean(),
                "real_sign": _sign_mean(lr)}

    def generator_loss(self, critic: nn.Module, fake, y_fake=None) -> Scalars:
        return {"loss": _bce(critic(fake), 1.0)}


class HingeLoss:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018, Eq. 16-17, the BigGAN/DiffAugment choice):
    D minimises E[max(0, 1 − D(real))] + E[max(0, 1 + D(fake))], G minimises −E[D(fake)]."""

    def critic_loss(self, critic: nn.Module, real, fake, y_real=None, y_fake=None) -> Scalars:
        lr, lf = critic(real).float(), critic(fake).float()
        return {"loss": F.relu(1.0 - lr).mean() + F.relu(1.0 + lf).mean(),
                "d_real": lr.mean().detach(), "d_fake": lf.mean().detach(), "real_sign": _sign_mean(lr)}

    def generator_loss(self, critic: nn.Module, fake, y_fake=None) -> Scalars:
        return {"loss": -critic(fake).float().mean()}


def class_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AC-GAN's L_C: cross-entropy of class indices (B,), or, for multi-hot float labels (B, K),
    binary cross-entropy with logits averaged over the B·K findings (chest paper, seed 003:
    the multi-label AC head)."""
    if y.ndim == 2:
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())
    return F.cross_entropy(logits.float(), y)


def class_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of correct class predictions; per finding (logit > 0 vs label) for multi-hot labels."""
    if y.ndim == 2:
        return ((logits > 0) == (y > 0.5)).float().mean()
    return (logits.argmax(1) == y).float().mean()


class AcganLoss:
    """Odena et al. 2017: source loss L_S (BCE) and class loss L_C (cross-entropy, or BCE per
    finding for multi-hot labels, :func:`class_loss`).

    D maximises L_S + L_C (minimises the two BCE/CE terms on real and fake), G maximises
    L_C − L_S (minimises non-saturating BCE(fake→1) + CE on its own labels).
    """

    def critic_loss(self, critic: nn.Module, real, fake, y_real=None, y_fake=None) -> Scalars:
        (sr, cr), (sf, cf) = critic(real), critic(fake)
        l_s = _bce(sr, 1.0) + _bce(sf, 0.0)
        l_c = class_loss(cr, y_real) + class_loss(cf, y_fake)
        return {"loss": l_s + l_c, "loss_source": l_s, "loss_class": l_c,
                "class_acc_real": class_accuracy(cr, y_real), "real_sign": _sign_mean(sr)}

    def generator_loss(self, critic: nn.Module, fake, y_fake=None) -> Scalars:
        s, c = critic(fake)
        return {"loss": _bce(s, 1.0) + class_loss(c, y_fake)}


def make_loss(kind: str, gp_lambda: float = 10.0,
              drift: float = 0.0) -> WganGpLoss | WganGpAcLoss | BceLoss | HingeLoss | AcganLoss:
    """The loss object of a preset's ``loss`` name (``drift``: ε_drift of the WGAN-GP losses)."""
    if kind == "wgan-gp":
        return WganGpLoss(gp_lambda, drift)
    if kind == "wgan-gp-ac":
        return WganGpAcLoss(gp_lambda, drift)
    if kind == "bce":
        return BceLoss()
    if kind == "hinge":
        return HingeLoss()
    if kind == "acgan":
        return AcganLoss()
    raise BadInput(f"unknown loss {kind!r}; choose wgan-gp, wgan-gp-ac, bce, hinge or acgan")
