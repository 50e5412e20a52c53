"""WGAN-GP architectures, presets, the sampler and the layer helpers (CPU, no stack).

The paper numbers (Prezja et al. 2022, Table 7 and the critic table) are pinned: generator
6,104,194 trainable parameters (6,304,900 with BN running statistics), critic 6,335,861,
critic feature map 7×7×422 = 20,678 before the dense layer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from training.nets.presets import PRESETS, GanPreset, build_gan, get_preset
from training.nets.layers import CenterCrop, SamePad2d, conv_same, count_parameters, same_size
from training.nets.sampler import GeneratorSampler, to_uint8
from training.gan.losses import gradient_penalty
from training.nets.wgan_gp import KneeCritic, KneeGenerator


@pytest.fixture(scope="module")
def knee() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_gan("wgan-gp-knee")


@pytest.fixture(scope="module")
def small() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_gan("wgan-gp-knee-small")


# -- paper preset -------------------------------------------------------------------------
def test_knee_generator_has_the_paper_parameter_count(knee) -> None:
    gen, _ = knee
    assert count_parameters(gen) == 6_104_194
    # Keras counts BN moving mean/variance as non-trainable parameters; torch keeps them as buffers.
    running = sum(b.numel() for name, b in gen.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert count_parameters(gen) + running == 6_304_900


def test_knee_critic_has_the_paper_parameter_count(knee) -> None:
    _, critic = knee
    assert count_parameters(critic) == 6_335_861
    dense = [m for m in critic.modules() if isinstance(m, nn.Linear)]
    assert len(dense) == 1 and dense[0].in_features == 7 * 7 * 422 == 20_678
    # no normalisation layers in the critic (they would break the per-sample gradient penalty)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in critic.modules())


def test_trainable_only_flag_counts_frozen_parameters(small) -> None:
    gen, _ = small
    total = count_parameters(gen)
    frozen = KneeGenerator(**{"latent_dim": 50, **get_preset("wgan-gp-knee-small").generator})
    for p in frozen.stem.parameters():
        p.requires_grad_(False)
    stem = sum(p.numel() for p in frozen.stem.parameters())
    assert count_parameters(frozen) == total - stem
    assert count_parameters(frozen, trainable_only=False) == total


def test_knee_generator_makes_210px_images_the_critic_accepts(knee) -> None:
    gen, critic = knee
    gen.eval(), critic.eval()
    with torch.no_grad():
        images = gen(torch.randn(2, get_preset("wgan-gp-knee").latent_dim))
        scores = critic(images)
    assert images.shape == (2, 1, 210, 210)
    assert images.min() >= -1 and images.max() <= 1
    assert scores.shape == (2,)
    assert torch.isfinite(scores).all()


def test_knee_critic_feature_sizes_follow_the_paper() -> None:
    # 210 + 2·2 zero pad = 214 → 107 → 54 → 27 → 14 → 7 with TF 'same' stride-2 convolutions
    sizes = [same_size(214, 2, n) for n in range(6)]
    assert sizes == [214, 107, 54, 27, 14, 7]


# -- small preset -------------------------------------------------------------------------
def test_small_preset_shapes(small) -> None:
    gen, critic = small
    preset = get_preset("wgan-gp-knee-small")
    gen.train()
    images = gen(torch.randn(4, preset.latent_dim))
    assert images.shape == (4, 1, preset.image_size, preset.image_size) == (4, 1, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    scores = critic(images)
    assert scores.shape == (4,)  # one score per image (the Dense(1) axis is squeezed)
    # same topology as the paper preset, fewer/narrower layers
    assert type(gen) is KneeGenerator and type(critic) is KneeCritic
    assert count_parameters(gen) < 1_000_000 and count_parameters(critic) < 1_000_000


def test_every_preset_builds_consistently() -> None:
    for name, preset in PRESETS.items():
        assert preset.name == name
        if preset.progressive and not name.endswith("-small"):
            continue  # 23-31M parameters at up to 1024²: shapes and counts on the meta device in test_progressive.py
        gen, critic = preset.build()
        assert gen.image_size == preset.image_size
        assert gen.latent_dim == preset.latent_dim
        z = torch.randn(3, preset.latent_dim)
        gen.eval(), critic.eval()
        with torch.no_grad():
            images = gen(z, torch.tensor([0, 1, 2]) % preset.num_classes) if preset.conditional else gen(z)
            out = critic(images)
        assert images.shape == (3, 1, preset.image_size, preset.image_size), name
        if not preset.progressive:  # PGGAN's output is linear (Karras et al. 2018; Han et al. 2020)
            assert images.min() >= -1 and images.max() <= 1, name  # tanh range
        source = out[0] if preset.conditional else out
        assert source.shape == (3,) and torch.isfinite(source).all(), name


def test_every_paper_preset_has_a_small_sibling_of_the_same_family() -> None:
    papers = [name for name in PRESETS if not name.endswith(("-small", "-cpu"))]
    assert sorted(papers) == ["acgan-spine", "cpggan-chest", "dcgan-fracture", "enhanced-gan-knee-mri",
                              "pggan-knee-mri", "wgan-gp-knee"]
    for name in papers:
        small, paper = get_preset(f"{name}-small"), get_preset(name)
        assert (small.family, small.loss) == (paper.family, paper.loss)
        # progressive -small siblings also shrink z (512 → 64) to run on 2 CPU cores
        assert small.latent_dim == paper.latent_dim or small.progressive
        with torch.device("meta"):  # types and counts only
            g_small, d_small = small.build()
            g_paper, d_paper = paper.build()
        assert type(g_small) is type(g_paper) and type(d_small) is type(d_paper)
        assert count_parameters(g_small) < count_parameters(g_paper) / 4


def test_paper_presets_keep_their_recipe_and_the_cpu_recipe_augments() -> None:
    """Augmentation is off unless asked for, except in the small-CPU recipe; every preset has an EMA."""
    for name, preset in PRESETS.items():
        assert preset.augment == ("diffaugment" if name.endswith("-cpu") else "none"), name
        assert preset.ema_kimg > 0, name
    cpu = get_preset("dcgan-knee-cpu")
    assert cpu.family == "dcgan" and cpu.loss == "bce" and cpu.image_size == 64


def test_preset_with_inconsistent_image_size_is_refused() -> None:
    bad = GanPreset(
        name="bad", family="knee", loss="wgan-gp", image_size=60, latent_dim=8,
        generator={"base_size": 4, "base_channels": 8, "widths": (8, 1), "crop": 0},
        critic={"widths": (8,), "dropouts": (0.0,)},
    )
    with pytest.raises(ValueError, match=r"preset 'bad': generator makes 16px, image_size is 60"):
        bad.build()


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        get_preset("wgan-gp-kneee")
    message = str(info.value)
    assert "'wgan-gp-kneee'" in message
    assert all(name in message for name in PRESETS)


def test_critic_rejects_mismatched_dropouts() -> None:
    with pytest.raises(ValueError, match="dropouts has 1 entries but widths has 2"):
        KneeCritic(image_size=32, widths=(8, 16), dropouts=(0.0,))


# -- sampler ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampler(small) -> GeneratorSampler:
    gen, _ = small
    return GeneratorSampler(gen, latent_dim=get_preset("wgan-gp-knee-small").latent_dim, class_index=1, class_name="KL1")


def test_generate_is_deterministic_per_seed(sampler: GeneratorSampler) -> None:
    first = sampler.generate(5, seed=123)
    torch.manual_seed(999)  # the global RNG must not matter
    torch.randn(10)
    again = sampler.generate(5, seed=123)
    other = sampler.generate(5, seed=124)
    assert first.dtype == np.uint8 and first.shape == (5, 64, 64)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # distinct images within one request, too
    assert not np.array_equal(first[0], first[1])


def test_generate_does_not_depend_on_batch_size(sampler: GeneratorSampler) -> None:
    one = sampler.generate(9, seed=42, batch_size=1)
    many = sampler.generate(9, seed=42, batch_size=64)
    odd = sampler.generate(9, seed=42, batch_size=4)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(odd, many)


def test_render_rows_depend_only_on_their_own_latent(sampler: GeneratorSampler) -> None:
    # What Serve's request batching relies on: concatenating requests changes nothing.
    a, b = sampler.latents(5, seed=1), sampler.latents(70, seed=2)
    together = sampler.render(torch.cat([b[:3], a, b[3:]]))
    np.testing.assert_array_equal(together[3:8], sampler.render(a))
    np.testing.assert_array_equal(np.concatenate([together[:3], together[8:]]), sampler.render(b))
    np.testing.assert_array_equal(sampler.render(a), sampler.generate(5, seed=1))


def test_generate_zero_images_is_an_empty_batch(sampler: GeneratorSampler) -> None:
    out = sampler.generate(0, seed=1)
    assert out.shape == (0, 64, 64) and out.dtype == np.uint8


@pytest.mark.parametrize(("n", "batch_size"), [(-1, 64), (2, 0)])
def test_generate_rejects_bad_counts(sampler: GeneratorSampler, n: int, batch_size: int) -> None:
    with pytest.raises(ValueError, match=f"got n={n}, batch_size={batch_size}"):
        sampler.generate(n, seed=1, batch_size=batch_size)


def test_generate_uses_eval_mode_even_after_training(sampler: GeneratorSampler) -> None:
    expected = sampler.generate(2, seed=5)
    sampler.generator.train()  # e.g. a training loop touched the wrapped generator
    np.testing.assert_array_equal(sampler.generate(2, seed=5), expected)


def test_sampler_forward_is_the_generator(sampler: GeneratorSampler) -> None:
    z = sampler.latents(2, seed=3)
    assert z.shape == (2, sampler.latent_dim)
    torch.testing.assert_close(sampler(z), sampler.generator.eval()(z))
    assert (sampler.class_index, sampler.class_name) == (1, "KL1")


def test_to_uint8_maps_the_tanh_range_to_bytes() -> None:
    x = torch.tensor([-1.0, -2.0, 1.0, 3.0, 0.0, -0.5]).view(1, 1, 1, 6)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 6)
    # -1 → 0, 1 → 255, clamped outside; 0 → 127.5 → 128 (half to even); -0.5 → 63.75 → 64
    assert out.tolist() == [[[0, 0, 255, 255, 128, 64]]]


def test_to_uint8_is_channels_last_for_colour_images() -> None:
    x = torch.zeros(2, 3, 4, 5)
    x[:, 0] = -1
    x[:, 2] = 1
    out = to_uint8(x)
    assert out.shape == (2, 4, 5, 3)
    assert (out[..., 0] == 0).all() and (out[..., 1] == 128).all() and (out[..., 2] == 255).all()


# -- gradient penalty ---------------------------------------------------------------------
def test_gradient_penalty_is_finite_non_negative_and_differentiable(small) -> None:
    _, critic = small
    critic.train()
    critic.zero_grad()
    torch.manual_seed(1)
    real = torch.rand(4, 1, 64, 64) * 2 - 1
    fake = torch.rand(4, 1, 64, 64) * 2 - 1
    gp = gradient_penalty(critic, real, fake)
    assert gp.ndim == 0 and torch.isfinite(gp) and gp.item() >= 0
    gp.backward()  # create_graph=True: the penalty trains the critic
    # every weight gets a gradient (the last bias cannot: ∇ₓD does not depend on it)
    weights = [m.weight for m in critic.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)


@pytest.mark.parametrize("norm", [1.0, 3.0, 0.25])
def test_gradient_penalty_of_a_linear_critic_is_exact(norm: float) -> None:
    # D(x) = w·x has ‖∇D‖ = ‖w‖ everywhere, so the penalty is (‖w‖ − 1)² for any interpolate.
    linear = nn.Linear(2 * 3 * 3, 1, bias=False)
    with torch.no_grad():
        w = torch.randn(1, 18)
        linear.weight.copy_(w / w.norm() * norm)
    critic = nn.Sequential(nn.Flatten(), linear)
    real, fake = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((norm - 1) ** 2, abs=1e-5)


# -- layers -------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("size", [7, 10, 13, 64])
def test_conv_same_keeps_the_size_at_stride_one(kernel: int, size: int) -> None:
    conv = conv_same(2, 3, kernel, 1)
    assert conv(torch.zeros(1, 2, size, size + 1)).shape == (1, 3, size, size + 1)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [7, 10, 107, 214])
def test_conv_same_at_stride_two_gives_ceil_half(kernel: int, size: int) -> None:
    conv = conv_same(1, 1, kernel, 2)
    out = conv(torch.zeros(1, 1, size, size))
    assert out.shape[-2:] == (math.ceil(size / 2),) * 2 == (same_size(size, 2, 1),) * 2


def test_same_pad_puts_the_odd_pixel_on_the_bottom_right() -> None:
    # TF: 214 with k=5, s=2 → out 107, total pad (107−1)·2 + 5 − 214 = 3 → 1 before, 2 after.
    pad = SamePad2d(5, 2)
    out = pad(torch.ones(1, 1, 214, 214))
    assert out.shape == (1, 1, 217, 217)
    assert out[0, 0, 0].sum() == 0 and out[0, 0, 1, 1:-2].eq(1).all()
    assert out[0, 0, -2:].sum() == 0 and out[0, 0, -3, 1:-2].eq(1).all()
    assert out[0, 0, :, 0].sum() == 0 and out[0, 0, :, -2:].sum() == 0
    # stride 1, odd kernel: symmetric
    assert SamePad2d(3, 1)._pads(10) == (1, 1)
    assert SamePad2d(7, 1)._pads(10) == (3, 3)


def test_center_crop() -> None:
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert CenterCrop(0)(x) is x
    torch.testing.assert_close(CenterCrop(2)(x), x[..., 2:4, 2:4])


# -- DCGAN of the fracture thesis (seed 004) ----------------------------------------------
def test_dcgan_has_the_thesis_parameter_counts() -> None:
    gen, disc = build_gan("dcgan-fracture")
    assert count_parameters(gen) == 12_784_512
    assert count_parameters(disc) == 2_795_776
    # the table's layer list: ConvT widths 1024→64 with BN, then 1 channel; D 32→512, BN from 128
    convt = [m.out_channels for m in gen.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert convt == [1024, 512, 256, 128, 64, 1]
    bn_d = [m.num_features for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_d == [128, 256, 512]


def test_dcgan_maps_z100_to_128px_and_one_logit() -> None:
    preset = get_preset("dcgan-fracture")
    assert (preset.image_size, preset.latent_dim, preset.batch_size, preset.lr, preset.betas, preset.loss) == (
        128, 100, 100, 3.4e-4, (0.5, 0.999), "bce")
    torch.manual_seed(0)
    gen, disc = preset.build()
    gen.train()  # BN in batch mode, as in training
    images = gen(torch.randn(2, 100))
    assert images.shape == (2, 1, 128, 128) and images.min() >= -1 and images.max() <= 1
    assert disc(images).shape == (2,)


def test_dcgan_discriminator_checks_its_input_size() -> None:
    from training.nets.dcgan import DcganDiscriminator

    with pytest.raises(ValueError, match="image_size 100"):
        DcganDiscriminator(image_size=100)


# -- AC-GAN of the spine paper (seed 002) -------------------------------------------------
@pytest.mark.parametrize("name", ["acgan-spine", "acgan-spine-small"])
def test_acgan_topology_follows_the_paper(name: str) -> None:
    gen, disc = build_gan(name, num_classes=3)
    convt = [m for m in gen.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convt) == 3 and all(m.kernel_size == (5, 5) for m in convt)
    assert [type(m) for m in gen.net][-2:] == [nn.BatchNorm2d, nn.Tanh]  # BN only before the output
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gen.modules()) == 1
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(m.kernel_size == (3, 3) for m in convs)
    assert [m.stride[0] for m in convs] == [2, 1, 2, 1]
    widths = [m.out_channels for m in convs]
    assert all(b == 2 * a for a, b in zip(widths, widths[1:]))  # filters doubling
    assert sum(isinstance(m, nn.BatchNorm2d) for m in disc.modules()) == 2  # not on first and last
    assert disc.classes.out_features == 3 and disc.source.out_features == 1


def test_acgan_generator_depends_on_the_label() -> None:
    torch.manual_seed(0)
    gen, disc = build_gan("acgan-spine-small", num_classes=3)
    gen.eval(), disc.eval()
    z = torch.randn(4, 100)
    a = gen(z, torch.zeros(4, dtype=torch.long))
    b = gen(z, torch.full((4,), 2))
    assert a.shape == (4, 1, 64, 64) and not torch.allclose(a, b)
    source, classes = disc(a)
    assert source.shape == (4,) and classes.shape == (4, 3)


def test_conditional_sampler_labels_and_reproducibility() -> None:
    torch.manual_seed(0)
    gen, _ = build_gan("acgan-spine-small", num_classes=3)
    sampler = GeneratorSampler(gen, 100, num_classes=3)
    assert sampler.conditional and sampler.labels(5).tolist() == [0, 1, 2, 0, 1]
    first = sampler.generate(3, seed=1, label=2)
    np.testing.assert_array_equal(first, sampler.generate(3, seed=1, label=2, batch_size=1))
    assert not np.array_equal(first, sampler.generate(3, seed=1, label=0))
    with pytest.raises(ValueError, match="label 3 is outside this generator's classes 0..2"):
        sampler.generate(1, seed=1, label=3)
    per_class = GeneratorSampler(gen, 100, class_index=1, num_classes=3)
    assert per_class.labels(3).tolist() == [1, 1, 1]  # a per-class model defaults to its class


def test_unconditional_sampler_refuses_a_label(sampler: GeneratorSampler) -> None:
    with pytest.raises(ValueError, match="only for conditional generators"):
        sampler.generate(1, seed=1, label=0)
