"""Progressive nets (PGGAN, Enhanced-GAN, conditional PGGAN): layers, fade-in, shapes, counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.gan.growth import GrowthSchedule, Timeline, reals_at
from training.nets.presets import get_preset
from training.nets.progressive import ProgressiveCritic, ProgressiveGenerator, stage_parameter_count
from training.nets.progressive_layers import (EqualizedConv2d, EqualizedLinear, MinibatchStddev, PixelNorm,
                                              SelfAttention, conv)


def _small(**kw) -> tuple[ProgressiveGenerator, ProgressiveCritic]:
    torch.manual_seed(0)
    g = ProgressiveGenerator(latent_dim=16, start=8, end=32, fmap_base=64, fmap_max=16, **kw)
    d = ProgressiveCritic(start=8, end=32, fmap_base=64, fmap_max=16)
    return g, d


@pytest.mark.parametrize("attention_at", [None, 32])
def test_generator_fade_in_is_the_low_path_at_0_and_the_new_block_at_1(attention_at) -> None:
    g, _ = _small(attention_at=attention_at)
    g.eval()
    z = torch.randn(5, 16)
    with torch.no_grad():
        g.grow(1, 1.0)
        low = nn.functional.interpolate(g.to_rgb[1](g.blocks[1](g.base(g.dense(g.latent_norm(z)).view(5, 16, 8, 8)))),
                                        scale_factor=2, mode="nearest")
        g.grow(2, 0.0)
        at0 = g(z)
        g.grow(2, 1.0)
        at1 = g(z)
        g.grow(2, 0.25)
        mid = g(z)
    assert at0.shape == at1.shape == (5, 1, 32, 32)
    assert torch.equal(at0, low)  # α = 0: exactly the upsampled 16² output
    h16 = g.blocks[1](g.base(g.dense(g.latent_norm(z)).view(5, 16, 8, 8)))
    if attention_at:
        h16 = g.attention(h16)
    new = g.to_rgb[2](g.blocks[2](h16))
    torch.testing.assert_close(at1, new, rtol=0, atol=0)  # α = 1: the new block alone
    torch.testing.assert_close(mid, 0.75 * low + 0.25 * new, rtol=1e-5, atol=1e-6)


def test_critic_fade_in_is_the_low_path_at_0_and_the_new_block_at_1() -> None:
    _, d = _small()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        d.grow(1, 1.0)
        low = d(nn.functional.avg_pool2d(x, 2))
        d.grow(2, 0.0)
        at0 = d(x)
        d.grow(2, 1.0)
        at1 = d(x)
        new = d.final(d.blocks[1](d.blocks[2](d.from_rgb[2](x))))[:, 0]
    torch.testing.assert_close(at0, low, rtol=0, atol=0)
    torch.testing.assert_close(at1, new, rtol=0, atol=0)
    with pytest.raises(ValueError, match="critic is at 32px"):
        d(torch.randn(4, 1, 16, 16))


def test_self_attention_is_the_identity_at_gamma_0_and_not_after() -> None:
    torch.manual_seed(1)
    sa = SelfAttention(16)
    x = torch.randn(3, 16, 8, 8)
    assert float(sa.gamma.detach()) == 0.0
    assert torch.equal(sa(x), x)
    with torch.no_grad():
        sa.gamma.fill_(0.5)
    out = sa(x)
    # o_j = Σ_i softmax_i(f(x_i)·g(x_j)) h(x_i), written out for one image.
    f, g, h = (m(x[:1]).flatten(2)[0] for m in (sa.f, sa.g, sa.h))  # (C', N)
    beta = torch.softmax(g.T @ f, dim=1)  # (N_j, N_i)
    o = (h @ beta.T).reshape(1, 16, 8, 8)
    torch.testing.assert_close(out[:1], 0.5 * o + x[:1], rtol=1e-4, atol=1e-5)


def test_spectral_norm_layers_have_largest_singular_value_1() -> None:
    torch.manual_seed(2)
    layer = conv(8, 16, 3, "sn")
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(5.0)  # raw σ well above 1
    assert float(torch.linalg.matrix_norm(layer.parametrizations.weight.original.detach().flatten(1), ord=2)) > 3
    layer.train()
    x = torch.randn(2, 8, 5, 5)
    for _ in range(30):  # power iterations (one per training forward)
        layer(x)
    sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
    assert abs(float(sigma) - 1.0) < 1e-3
    d = get_preset("enhanced-gan-knee-mri-small").build()[1]
    d.train()
    sn = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(sn) == 3 + 2 * 2 + 3  # fromRGB ×3, two convs per grown block ×2, final conv + 2 dense
    for m in sn:
        for _ in range(100):  # each access in train mode is one power iteration (seeded: converged by 100)
            m.weight
        assert abs(float(torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)) - 1.0) < 1e-3


def test_pixel_norm_gives_unit_mean_square_per_pixel() -> None:
    x = torch.randn(4, 32, 6, 6) * (torch.rand(4, 1, 6, 6) + 0.1) * 10  # per-pixel scales 1-11
    y = PixelNorm()(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(4, 6, 6), rtol=1e-5, atol=1e-5)


def test_equalized_layers_hold_unit_variance_weights_with_the_he_scale() -> None:
    torch.manual_seed(3)
    c = EqualizedConv2d(64, 128, 3)
    lin = EqualizedLinear(512, 256)
    for layer, fan_in in ((c, 64 * 9), (lin, 512)):
        w = layer.weight.detach()
        n = w.numel()  # N(0, 1): mean and std within 5 standard errors (1/√n and 1/√(2n))
        assert abs(float(w.mean())) < 5 / math.sqrt(n) and abs(float(w.std()) - 1.0) < 5 / math.sqrt(2 * n)
        assert layer.scale == pytest.approx(math.sqrt(2) / math.sqrt(fan_in), rel=1e-12)
        assert torch.count_nonzero(layer.bias) == 0
    x = torch.randn(2, 64, 7, 7)
    ref = nn.functional.conv2d(x, c.weight * c.scale, c.bias, padding=1)
    torch.testing.assert_close(c(x), ref, rtol=0, atol=0)
    assert conv(8, 3, 1, "eq", gain=1.0).scale == pytest.approx(1 / math.sqrt(8))  # toRGB: linear, gain 1


def test_minibatch_stddev_appends_the_group_std() -> None:
    x = torch.randn(8, 3, 4, 4)
    y = MinibatchStddev(4)(x)
    assert y.shape == (8, 4, 4, 4)
    groups = x.reshape(4, 2, 3, 4, 4)
    expected = (groups.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # per group member j
    torch.testing.assert_close(y[:, 3, 0, 0], expected.repeat(4), rtol=1e-5, atol=1e-6)
    assert MinibatchStddev(4)(torch.randn(6, 3, 4, 4)).shape == (6, 4, 4, 4)  # 6 → groups of 3


# Per-stage trainable parameters at α = 1 (ours: the seed papers give none). PGGAN's Table 2
# gives 23.1M for each 1024² network (RGB, unconditional); ours is pinned against it below.
STAGE_COUNTS = {
    "pggan-knee-mri": ([19170305, 23889921, 28609537, 30379265, 30821761, 30932417],
                       [19143681, 23863297, 28582913, 30352641, 30795137, 30905793]),
    "enhanced-gan-knee-mri": ([19170305, 23889921, 28609537, 30379265, 30821761, 30953058],
                              [19143681, 23863297, 28582913, 30352641, 30795137, 30905793]),
    "cpggan-chest": ([6677505, 11397121, 16116737, 20836353, 22606081, 23048577, 23159233, 23186913, 23193841],
                     [6567951, 11287567, 16007183, 20726799, 22496527, 22939023, 23049679, 23077359, 23084287]),
}


@pytest.mark.parametrize("name", ["pggan-knee-mri", "enhanced-gan-knee-mri", "cpggan-chest"])
def test_paper_presets_shapes_and_parameter_counts_per_stage(name: str) -> None:
    preset = get_preset(name)
    with torch.device("meta"):  # shapes and counts only: no 60M random weights
        g, d = preset.build()
    g_counts, d_counts = STAGE_COUNTS[name]
    assert [stage_parameter_count(g, s) for s in range(len(g.resolutions))] == g_counts
    assert [stage_parameter_count(d, s) for s in range(len(d.resolutions))] == d_counts
    first, last = {"cpggan-chest": (4, 1024)}.get(name, (8, 256))
    assert g.resolutions[0] == first and g.resolutions[-1] == last == preset.image_size
    assert preset.latent_dim == 512 and (g.num_classes, d.num_classes) == ((14, 14) if name == "cpggan-chest" else (0, 0))
    assert (preset.lr, preset.betas, preset.gp_lambda, preset.drift, preset.critic_steps) == (1e-3, (0.0, 0.99), 10.0,
                                                                                                1e-3, 1)
    assert (g.attention is not None) == (name == "enhanced-gan-knee-mri")
    assert d.norm == ("sn" if name == "enhanced-gan-knee-mri" else "none") and g.norm == "pn"


def test_pggan_1024_rgb_matches_the_papers_23_1m_parameters() -> None:
    with torch.device("meta"):
        g = ProgressiveGenerator(latent_dim=512, start=4, end=1024, channels=3)
        d = ProgressiveCritic(start=4, end=1024, channels=3)
    for net in (g, d):  # Karras et al. 2018, Table 2: 23.1M each
        assert abs(sum(p.numel() for p in net.parameters()) - 23.1e6) < 0.05e6


def test_stage_counts_are_the_parameters_a_stage_trains() -> None:
    """The per-stage count is what backward reaches at α = 1 (and at a fade-in, plus the old toRGB)."""
    g, d = get_preset("enhanced-gan-knee-mri-small").build()
    for stage in range(3):
        g.grow(stage, 1.0), d.grow(stage, 1.0)
        g.zero_grad(), d.zero_grad()
        out = d(g(torch.randn(4, 64)))
        (out.mean() + 0 * g.attention.gamma if stage < 2 else out.mean()).backward()
        reached = sum(p.numel() for p in g.parameters() if p.grad is not None and (p is not g.attention.gamma
                                                                                    or stage == 2))
        assert reached == stage_parameter_count(g, stage)
        assert sum(p.numel() for p in d.parameters() if p.grad is not None) == stage_parameter_count(d, stage)


@pytest.mark.parametrize("name", ["pggan-knee-mri-small", "enhanced-gan-knee-mri-small", "cpggan-chest-small"])
def test_small_presets_grow_to_32px(name: str) -> None:
    preset = get_preset(name)
    g, d = preset.build(num_classes=3)
    z = torch.randn(4, preset.latent_dim)
    labels = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]) if preset.conditional else None
    for stage, size in enumerate(g.resolutions):
        for alpha in (0.5, 1.0) if stage else (1.0,):
            g.grow(stage, alpha), d.grow(stage, alpha)
            x = g(z, labels)
            assert x.shape == (4, 1, size, size)
            out = d(x)
            if preset.conditional:
                assert out[0].shape == (4,) and out[1].shape == (4, 3)  # AC head: one logit per finding
            else:
                assert out.shape == (4,)
    if preset.conditional:  # a class index is its one-hot multi-hot row
        torch.testing.assert_close(g(z, torch.tensor([0, 2, 1, 0])), g(z, torch.eye(3)[[0, 2, 1, 0]]))


def test_generator_state_dict_restores_stage_and_alpha() -> None:
    g, _ = _small()
    g.grow(1, 0.375)
    fresh, _ = _small()
    assert (int(fresh.stage), float(fresh.alpha)) == (2, 1.0)  # a new network is the full-resolution one
    fresh.load_state_dict(g.state_dict())
    assert (int(fresh.stage), float(fresh.alpha), fresh.resolution) == (1, 0.375, 16)
    with pytest.raises(ValueError, match="stage must be"):
        g.grow(3, 1.0)


def test_timeline_follows_the_chest_schedule() -> None:
    t = Timeline(GrowthSchedule(), [4, 8, 16, 32, 64, 128, 256, 512, 1024], epoch_images=100_000)
    assert t.total_images == 9 * 600_000 + 8 * 600_000 + 0  # 600k per stage + 600k per fade-in
    assert t.total_images == 10_200_000
    assert (t.at(0).resolution, t.at(0).batch, t.at(0).alpha) == (4, 128, 1.0)
    g = t.at(600_000 + 150_000)  # a quarter into 8²'s fade-in
    assert (g.stage, g.resolution, g.alpha, g.batch) == (1, 8, 0.25, 128)
    assert [t.at(p.start).batch for p in t.phases if not p.fading][4:] == [64, 32, 16, 8, 4]
    assert t.epoch_end(0) == 100_000 and t.epoch_end(590_000) == 600_000  # epochs end at stage ends
    assert t.ends_stage(600_000) == 0 and t.ends_stage(100_000) is None


def test_reals_fade_like_the_generator() -> None:
    from training.gan.growth import Growth

    x = torch.rand(2, 1, 32, 32)
    at16 = reals_at(x, Growth(1, 1.0, 16, 8, 0))
    torch.testing.assert_close(at16, nn.functional.avg_pool2d(x, 2))
    at0 = reals_at(x, Growth(2, 0.0, 32, 8, 0))
    torch.testing.assert_close(at0, nn.functional.interpolate(nn.functional.avg_pool2d(x, 2), scale_factor=2))
    assert torch.equal(reals_at(x, Growth(2, 1.0, 32, 8, 0)), x)


def test_run_options_reach_the_networks_and_other_presets_refuse_them() -> None:
    from training.gan.config import GanTrainConfig
    from training.gan.growth import check_progressive

    cfg = GanTrainConfig(dataset="x", arch="enhanced-gan-knee-mri-small", g_norm="sn", d_norm="pn", channels=2,
                         stage_images=10, growth_batch={16: 8})
    g, d = cfg.preset().build()
    assert (g.norm, d.norm, g.channels) == ("sn", "pn", 2)
    assert not any(isinstance(m, PixelNorm) for m in g.modules())  # SN in G replaces pixel norm
    assert any(isinstance(m, PixelNorm) for m in d.modules())
    assert g(torch.randn(2, 64)).shape == (2, 2, 32, 32) and d(torch.randn(2, 2, 32, 32)).shape == (2,)
    hp = cfg.hyperparameters()
    assert (hp["stage_images"], hp["fade_images"], hp["growth_batch"][16], hp["growth_batch"][32]) == (10, 4000, 8, 32)
    assert GanTrainConfig(dataset="x", arch="pggan-knee-mri", batch_size=8).hyperparameters()["growth_batch"][1024] == 8
    check_progressive(cfg)
    with pytest.raises(ValueError, match="--g-norm is for progressive presets"):
        check_progressive(GanTrainConfig(dataset="x", arch="wgan-gp-knee-small", g_norm="pn"))
    with pytest.raises(ValueError, match="--augment ada is not supported with progressive presets"):
        check_progressive(cfg.model_copy(update={"augment": "ada"}))
