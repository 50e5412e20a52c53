"""An image + mask generator's registry record (issue 26): the mask classes in its tags and card."""

from __future__ import annotations

import dataclasses
import json

import torch

from training.nets.presets import get_preset
from training.nets.sampler import GeneratorSampler
from training.registry.cards import CardFacts, render_card
from training.registry.generators import _version_tags

CLASSES = ["background", "femur", "tibia", "fibula"]


def _facts(**kw) -> CardFacts:
    return CardFacts(
        name="gan-x", arch="dcgan-fracture-small", image_size=64, latent_dim=100, conditional=False, classes=["a"],
        class_name=None, dataset="d@1", manifest_sha256="1", selection={"split": "train"}, n_train=96, epoch=2,
        run_id="r", run_url="u", git_commit="c", checkpoint="s3://b/c", hyperparameters={},
        fid={"fid": 10.0, "n_real": 48, "n_fake": 48, "dims": 2048, "reference_key": "k", "weights_sha256": "w"},
        kid={"kid": 0.01, "ci_low": 0.0, "ci_high": 0.02, "confidence": 0.95, "n_real": 48, "n_fake": 48,
             "bootstrap": 100},
        memorization={"n_fake": 48, "n_below_real_p1": 0, "fraction_below_real_p1": 0.0, "min_distance": 3.0,
                      "real_nn_p1": 2.0, "artifacts": {"summary.json": "s3://b/m.json"}},
        eval_seed=1, **kw)


def _sampler(paired: bool) -> GeneratorSampler:
    preset = dataclasses.replace(get_preset("dcgan-fracture-small"), mask_channels=len(CLASSES) if paired else 0)
    torch.manual_seed(0)
    return GeneratorSampler(preset.build()[0], 100, mask_classes=CLASSES if paired else None)


def test_pair_model_tags_and_card_name_the_mask_classes() -> None:
    facts = _facts(mask_classes=CLASSES)
    tags = _version_tags(facts, _sampler(paired=True))
    assert json.loads(tags["mask_classes"]) == CLASSES
    card = render_card(facts)
    assert "`generate_pairs(n, seed, label=None)` also returns uint8 label maps `(n, 64, 64)`" in card
    assert "`background`, `femur`, `tibia`, `fibula`" in card


def test_image_only_model_has_no_mask_record() -> None:
    assert "mask_classes" not in _version_tags(_facts(), _sampler(paired=False))
    assert "generate_pairs" not in render_card(_facts())


def test_membership_critic_attack_is_skipped_for_pair_models() -> None:
    """The audit scores images alone; a pair model's critic reads image + mask stacks (DCR still runs)."""
    from training.gan.config import GanTrainConfig
    from training.registry.privacy import critic_from_state

    def state(**kw) -> dict:
        cfg = GanTrainConfig(dataset="d@1", arch="dcgan-fracture-small", **kw)
        return {"critic": cfg.preset().build()[1].state_dict(), "config": cfg.model_dump()}

    assert critic_from_state(state(masks=True, mask_classes=CLASSES)) is None
    assert critic_from_state(state()) is not None


def test_card_shows_mask_realism_or_says_why_not() -> None:
    """Measured: the segmenter, n, the mean and per-class Dice with CIs, the overlay; low Dice is a known limit.
    Not measured: the reason, in the section and in the known limits."""
    per_class = {c: {"dice": 0.25 * i, "ci_low": 0.25 * i - 0.05, "ci_high": 0.25 * i + 0.05}
                 for i, c in enumerate(CLASSES[1:], 1)}
    realism = {"dice": 0.5 - 1e-3, "dice_ci": [0.4, 0.6], "per_class": per_class, "n": 64, "seed": 1,
               "segmenter": "models:/segmenter-d-unet-small/3", "choice": "dataset champion",
               "segmenter_test_dice": 0.91}
    facts = _facts(mask_classes=CLASSES, mask_realism=realism)
    card = render_card(facts)
    assert "| segmenter | `models:/segmenter-d-unet-small/3` (dataset champion) |" in card
    assert "| segmenter's test Dice on real images | 0.910 |" in card and "| generated pairs | 64 (seed 1) |" in card
    assert "| Dice (mean over classes) | 0.499, 95 % CI [0.400, 0.600] |" in card
    assert "| Dice `tibia` | 0.500, 95 % CI [0.450, 0.550] |" in card and "(mask_realism.png)" in card
    assert "mask realism Dice 0.50 < 0.5" in card  # a known limit
    tags = _version_tags(facts, _sampler(paired=True))
    assert tags["mask_realism.dice.fibula"] == "0.750000" and tags["mask_realism.segmenter_choice"] == "dataset champion"
    skipped = render_card(_facts(mask_classes=CLASSES, mask_realism={"skipped": "no segmenter"}))
    assert "Not measured: no segmenter." in skipped and "Mask realism was not measured (no segmenter)" in skipped
    assert "## Mask realism" not in render_card(_facts())
