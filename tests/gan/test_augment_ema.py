"""EMA generator and differentiable augmentation (DiffAugment / ADA): hand computations,
gradchecks of every op, and ADA's p rising when a discriminator overfits a tiny real set."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.gan.augment import (
    AdaController,
    Augment,
    AugmentedCritic,
    brightness,
    contrast,
    cutout,
    translation,
)
from training.gan.ema import Ema, ema_beta


# -- EMA ----------------------------------------------------------------------------------------


def test_ema_beta_is_a_half_life_in_images_with_rampup() -> None:
    # 10 kimg half-life, batch 64, long after the ramp-up: 0.5 ** (64 / 10_000)
    assert ema_beta(64, 1_000_000, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)
    # early: the half-life is capped at nimg * rampup = 6400 * 0.05 = 320 images
    assert ema_beta(64, 6400, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 320), rel=1e-12)
    assert ema_beta(64, 6400, 10.0, None) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)
    assert ema_beta(64, 64, 0.0) == 0.0  # no averaging: a copy
    # after ema_kimg * 1000 / batch steps at a constant beta, the old weights count half
    beta = ema_beta(50, 10**9, 1.0, None)
    assert beta ** (1000 / 50) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ema_kimg"):
        ema_beta(64, 64, -1.0)


def test_ema_update_matches_a_hand_computation_and_copies_buffers() -> None:
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = Ema(g, ema_kimg=1.0, rampup=0.05)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():  # "train" G: new weights and new running statistics
        for p in g.parameters():
            p.add_(torch.randn_like(p))
        g.train()(torch.randn(8, 3))
    beta = ema.update(g, batch=32, nimg=32 * 500)  # nimg·rampup = 800 < 1000: ramped half-life 800
    assert beta == pytest.approx(0.5 ** (32 / 800))
    got = ema.module.state_dict()
    for name, p in g.named_parameters():
        torch.testing.assert_close(got[name], beta * start[name] + (1 - beta) * p.detach(), rtol=0, atol=1e-7)
    for name, b in g.named_buffers():  # StyleGAN2-ADA: buffers copied, not averaged
        assert torch.equal(got[name], b), name
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_ema_recalibrate_recomputes_bn_statistics_from_the_ema_weights() -> None:
    # The copied statistics are the raw G's; recalibrate replaces them by the plain average of
    # the EMA module's own batch statistics over the drawn batches (hand-computed below).
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    ema = Ema(g, ema_kimg=1.0)
    with torch.no_grad():
        g.train()(torch.randn(8, 3) * 5 + 3)  # raw G's running stats: far from the EMA's own
    ema.update(g, batch=8, nimg=8)
    inputs = lambda rng: (torch.randn(16, 3, generator=rng),)  # noqa: E731
    assert ema.recalibrate(inputs, batches=3, seed=5) == 1
    rng = torch.Generator().manual_seed(5)
    with torch.no_grad():
        h = [ema.module[0](*inputs(rng)) for _ in range(3)]
    bn = ema.module[1]
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in h]).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0) for x in h]).mean(0), rtol=0, atol=1e-6)
    assert bn.momentum == 0.1 and not ema.module.training and not ema.module[2].training
    first = {k: v.clone() for k, v in ema.state_dict().items()}
    ema.recalibrate(inputs, batches=3, seed=5)  # a fixed seed: the same statistics again
    assert all(torch.equal(first[k], v) for k, v in ema.state_dict().items())
    assert ema.recalibrate(inputs, batches=0) == 0 and Ema(nn.Linear(2, 2)).recalibrate(inputs) == 0


# -- augmentation ops ---------------------------------------------------------------------------


def _x(seed: int = 0, n: int = 3, size: int = 6) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 1, size, size, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("op", [
    lambda x: translation(x, torch.tensor([[1, -2], [0, 0], [-1, 3]])),
    lambda x: cutout(x, torch.tensor([[2, 2], [0, 5], [5, 0]]), 3),
    lambda x: brightness(x, torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)),
    lambda x: contrast(x, torch.tensor([0.5, 1.3, 1.0], dtype=torch.float64)),
    lambda x: Augment(p=1.0)(x) if torch.manual_seed(7) else None,  # the whole pipeline, fixed draws
], ids=["translation", "cutout", "brightness", "contrast", "pipeline"])
def test_each_op_passes_gradcheck(op) -> None:
    assert torch.autograd.gradcheck(op, (_x(),), eps=1e-6, atol=1e-5)


def test_translation_moves_pixels_and_fills_zeros() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4) + 1
    out = translation(x, torch.tensor([[1, -1]]))  # down one row, left one column
    assert torch.equal(out[0, 0, 1:, :3], x[0, 0, :3, 1:])
    assert out[0, 0, 0].abs().sum() == 0 and out[0, 0, :, 3].abs().sum() == 0


def test_cutout_zeros_a_clipped_square() -> None:
    x = torch.ones(2, 1, 6, 6)
    out = cutout(x, torch.tensor([[3, 3], [0, 0]]), 2)
    assert out[0].sum() == 36 - 4 and out[0, 0, 2:4, 2:4].sum() == 0
    assert out[1].sum() == 36 - 1 and out[1, 0, 0, 0] == 0  # clipped at the corner


def test_contrast_keeps_the_mean_and_brightness_shifts_it() -> None:
    x = _x().detach()
    torch.testing.assert_close(contrast(x, torch.full((3,), 1.4, dtype=torch.float64)).mean((1, 2, 3)), x.mean((1, 2, 3)))
    torch.testing.assert_close(brightness(x, torch.full((3,), 0.25, dtype=torch.float64)).mean((1, 2, 3)),
                               x.mean((1, 2, 3)) + 0.25)


def test_p_zero_is_the_identity_and_p_one_changes_every_image() -> None:
    x = torch.randn(16, 1, 16, 16)
    assert Augment(p=0.0)(x) is x
    torch.manual_seed(0)
    out = Augment(p=1.0)(x)
    assert out.shape == x.shape and all(not torch.equal(a, b) for a, b in zip(out, x))
    with pytest.raises(ValueError, match="unknown op"):
        Augment(policy=("translation", "hue"))


def test_p_is_the_per_image_probability_of_each_op() -> None:
    torch.manual_seed(0)
    x = torch.randn(4000, 1, 8, 8)
    out = Augment(policy=("brightness",), p=0.3)(x)
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert abs(changed.float().mean().item() - 0.3) < 0.03


# -- ADA ----------------------------------------------------------------------------------------


def test_ada_controller_steps_p_by_images_over_kimg() -> None:
    ada = AdaController(target=0.6, kimg=1.0, interval=2)
    for _ in range(2):
        ada.accumulate(real_sign_sum=0.9 * 50, count=50)  # r_t = 0.9 > 0.6
    assert ada.due() and ada.adjust() == pytest.approx(100 / 1000) and ada.last_rt == pytest.approx(0.9)
    for _ in range(2):
        ada.accumulate(real_sign_sum=0.2 * 50, count=50)  # r_t = 0.2 < 0.6: back down, clipped at 0
    assert ada.adjust() == 0.0 and ada.adjust() == 0.0
    state = ada.state_dict()
    other = AdaController()
    other.load_state_dict(state)
    assert other.state_dict() == state or math.isnan(state["last_rt"])
    with pytest.raises(ValueError, match="ada_target"):
        AdaController(target=1.5)


def test_ada_p_rises_when_the_discriminator_overfits_a_tiny_real_set() -> None:
    """8 real images, a discriminator that learns fast, many steps: r_t → 1, so p must climb.

    The training loop's own ``train_step`` with the BCE loss, an ADA controller on the real
    signs it reports, and the augmentation wrapped around D.
    """
    from training.gan.loop import build_pair, train_step
    from training.gan.losses import make_loss
    from training.nets.presets import GanPreset

    torch.manual_seed(0)
    preset = GanPreset(name="tiny", family="dcgan", loss="bce", image_size=16, latent_dim=8,
                       generator={"widths": (16, 8)}, critic={"widths": (8, 16)}, lr=1e-3,
                       betas=(0.5, 0.999), lr_decay=0.0, batch_size=8, critic_steps=1, gp_lambda=0.0)
    hp = {"latent_dim": 8, "critic_steps": 1, "lr": 1e-3, "lr_d": 1e-3, "betas": (0.5, 0.999),
          "decay_form": "none", "lr_decay": 0.0}
    pair = build_pair(preset, hp, 1)
    real = torch.rand(8, 1, 16, 16) * 2 - 1
    y = torch.zeros(8, dtype=torch.long)
    augment = Augment(p=0.0)
    ada = AdaController(target=0.6, kimg=0.4, interval=4)  # p can cross [0, 1] in 400 images
    ps, rts = [], []
    for _ in range(300):
        train_step(pair, make_loss("bce"), real, y, hp, augment=augment, ada=ada)
        if ada.due():
            augment.p = ada.adjust()
            ps.append(augment.p)
            rts.append(ada.last_rt)
    assert max(rts[:5]) < 1.0 or ps[0] >= 0  # bookkeeping sanity
    assert sum(rts[-10:]) / 10 > 0.6, rts[-10:]  # D is sure of the reals most of the time
    assert ps[-1] > 0.3, ps[-20:]  # and ADA answered by raising p
