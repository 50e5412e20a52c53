"""Image + mask generators (issue 26): one-hot mask channels, every family, argmax sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from infra.errors import BadInput
from training.gan.config import GanTrainConfig
from training.nets.masks import PALETTE, encode_masks, overlay, pair_panels, split_pairs, stack_pairs
from training.nets.presets import get_preset
from training.nets.sampler import GeneratorSampler

CLASSES = ["background", "femur", "tibia", "fibula"]


def test_one_hot_round_trip_and_range() -> None:
    maps = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [0, 1]]])
    images = torch.full((2, 1, 2, 2), 0.25)
    stack = stack_pairs(images, maps, 4)
    assert stack.shape == (2, 5, 2, 2)
    assert torch.equal(stack[:, :1], images)
    assert set(stack[:, 1:].unique().tolist()) == {-1.0, 1.0}
    assert torch.equal((stack[:, 1:] > 0).sum(1), torch.ones(2, 2, 2, dtype=torch.long))  # exactly one class on
    image, labels = split_pairs(stack)
    assert torch.equal(labels, maps) and torch.equal(image, images)


def test_bad_masks_are_refused() -> None:
    with pytest.raises(BadInput, match=r"0\.\.3"):
        encode_masks(torch.tensor([[[0, 4]]]), 4)
    with pytest.raises(BadInput, match="do not match"):
        stack_pairs(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 4, dtype=torch.long), 4)


def test_overlay_blends_foreground_only() -> None:
    images = np.full((1, 2, 2), 100, np.uint8)
    masks = np.array([[[0, 1], [2, 0]]], np.uint8)
    out = overlay(images, masks, alpha=0.5)
    assert out.shape == (1, 2, 2, 3)
    assert out[0, 0, 0].tolist() == [100, 100, 100]  # background untouched
    expected = np.round(0.5 * 100 + 0.5 * PALETTE[0].astype(float)).astype(int).tolist()
    assert out[0, 0, 1].tolist() == expected
    assert out[0, 1, 0].tolist() == np.round(0.5 * 100 + 0.5 * PALETTE[1].astype(float)).astype(int).tolist()


@pytest.mark.parametrize("name", ["dcgan-fracture-small", "wgan-gp-knee-small", "dcgan-knee-cpu",
                                  "acgan-spine-small", "pggan-knee-mri-small", "enhanced-gan-knee-mri-small"])
def test_every_family_builds_image_plus_mask_channels(name: str) -> None:
    preset = dataclasses.replace(get_preset(name), mask_channels=len(CLASSES))
    torch.manual_seed(0)
    gen, critic = preset.build(3)
    z = torch.randn(4, preset.latent_dim)
    args = (torch.tensor([0, 1, 2, 0]),) if preset.conditional else ()
    out = gen(z, *args)
    assert out.shape == (4, 1 + len(CLASSES), preset.image_size, preset.image_size)
    score = critic(out, *args) if preset.conditional and preset.family == "progressive" else critic(out)
    score = score[0] if isinstance(score, tuple) else score
    assert score.shape == (4,)  # D reads the whole stack
    plain_gen, _ = get_preset(name).build(3)
    assert plain_gen(z, *args).shape[1] == 1  # the preset itself is unchanged


@pytest.mark.parametrize("name", ["pggan-knee-mri", "enhanced-gan-knee-mri"])
def test_knee_mri_paper_presets_take_the_mask_stack(name: str) -> None:
    """The knee-MRI paper's 256 px nets (seed 001) on (image, FC/TC/PC-style) stacks: only toRGB/fromRGB widen."""
    paired = dataclasses.replace(get_preset(name), mask_channels=2)
    with torch.device("meta"):
        gen, critic = paired.build()
        base_gen, base_critic = get_preset(name).build()
    assert all(_conv_weight(m).shape[0] == 3 for m in gen.to_rgb)
    assert all(_conv_weight(m).shape[1] == 3 for m in critic.from_rgb)
    for paired_net, base_net, rgb in ((gen, base_gen, "to_rgb"), (critic, base_critic, "from_rgb")):
        rest = {n: p.shape for n, p in paired_net.named_parameters() if not n.startswith(rgb)}
        assert rest == {n: p.shape for n, p in base_net.named_parameters() if not n.startswith(rgb)}


def _conv_weight(module: torch.nn.Module) -> torch.Tensor:
    return next(p for p in module.parameters() if p.dim() == 4)


def test_config_sets_mask_channels_from_the_dataset_classes() -> None:
    assert GanTrainConfig(dataset="x", arch="dcgan-fracture-small", masks=True).preset().mask_channels == 0
    cfg = GanTrainConfig(dataset="x", arch="dcgan-fracture-small", masks=True, mask_classes=CLASSES)
    assert cfg.preset().mask_channels == 4
    assert GanTrainConfig(dataset="x", mask_classes=CLASSES).preset().mask_channels == 0  # masks off


@pytest.fixture(scope="module")
def sampler() -> GeneratorSampler:
    preset = dataclasses.replace(get_preset("dcgan-fracture-small"), mask_channels=len(CLASSES))
    torch.manual_seed(0)
    gen, _ = preset.build()
    return GeneratorSampler(gen, preset.latent_dim, mask_classes=CLASSES)


def test_sampler_returns_images_and_argmax_label_maps(sampler: GeneratorSampler) -> None:
    images, masks = sampler.generate_pairs(6, seed=11)
    assert sampler.paired
    assert images.shape == masks.shape == (6, 64, 64) and images.dtype == masks.dtype == np.uint8
    assert masks.max() < len(CLASSES)
    np.testing.assert_array_equal(sampler.generate(6, seed=11), images)  # generate = the image channel
    with torch.no_grad():
        out = sampler(sampler.latents(6, 11))
    np.testing.assert_array_equal(masks, out[:, 1:].argmax(1).numpy())  # argmax over the class channels
    again, masks_again = sampler.generate_pairs(6, seed=11)
    assert again.tobytes() == images.tobytes() and masks_again.tobytes() == masks.tobytes()
    alone_img, alone_mask = sampler.generate_pairs(1, seed=11)  # a row depends on its latent only
    np.testing.assert_array_equal(alone_mask[0], masks[0])
    np.testing.assert_array_equal(alone_img[0], images[0])


def test_plain_sampler_has_no_masks() -> None:
    gen, _ = get_preset("dcgan-fracture-small").build()
    images, masks = GeneratorSampler(gen, 100).generate_pairs(2, seed=0)
    assert masks is None and images.shape == (2, 64, 64)


def test_pair_panels_show_image_then_overlay(sampler: GeneratorSampler) -> None:
    with torch.no_grad():
        out = sampler(sampler.latents(3, 5))
    panels = pair_panels(out)
    assert panels.shape == (6, 3, 64, 64)
    torch.testing.assert_close(panels[0], out[0, :1].clamp(-1, 1).expand(3, -1, -1))
    assert panels.min() >= -1 and panels.max() <= 1


def test_augmentation_moves_masks_with_images_but_leaves_their_values() -> None:
    from training.gan.augment import Augment

    maps = torch.randint(0, 4, (6, 16, 16))
    stack = stack_pairs(torch.rand(6, 1, 16, 16) * 2 - 1, maps, 4)
    torch.manual_seed(0)
    out = Augment(("brightness", "contrast"))(stack)
    torch.testing.assert_close(out[:, 1:], stack[:, 1:])  # intensity ops: image channel only
    assert not torch.allclose(out[:, :1], stack[:, :1])
    torch.manual_seed(1)
    moved = Augment(("translation",))(stack)
    image_shift = [(moved[i, 0] != stack[i, 0]).any().item() for i in range(6)]
    mask_shift = [(moved[i, 1:] != stack[i, 1:]).any().item() for i in range(6)]
    assert any(image_shift) and image_shift == mask_shift  # geometric ops: both, the same way
