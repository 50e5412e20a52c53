"""The AC-GAN with multi-hot (B, K) conditions: same network as one-hot, BCE AC head, grid conditions."""

from __future__ import annotations

import math

import pytest
import torch

from infra.errors import BadInput
from training.gan.loop import grid_conditions
from training.gan.losses import AcganLoss, class_accuracy, class_loss
from training.nets.presets import get_preset
from training.nets.sampler import GeneratorSampler


def test_one_hot_rows_equal_class_indices_and_fractional_conditions_pass() -> None:
    torch.manual_seed(0)
    gen, _ = get_preset("acgan-spine-small").build(3)
    gen.eval()
    z = torch.randn(3, gen.latent_dim)
    with torch.no_grad():
        by_index = gen(z, torch.tensor([0, 2, 1]))
        by_rows = gen(z, torch.eye(3)[[0, 2, 1]])
        torch.testing.assert_close(by_index, by_rows, rtol=0, atol=0)
        assert gen(z, torch.tensor([[1.0, 0.0, 1.0]] * 3)).shape == (3, 1, 64, 64)
        assert not torch.equal(gen(z, torch.full((3, 3), 0.5)), by_rows)
    with pytest.raises(BadInput, match="3 entries") as err:
        gen(z, torch.ones(3, 2))
    assert err.value.field == "labels"


def test_multilabel_class_loss_is_mean_bce_over_findings() -> None:
    logits = torch.tensor([[0.5, -2.0, 1.0], [-0.3, 0.2, 3.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    by_hand = 0.0
    for i in range(2):
        for k in range(3):
            p = 1 / (1 + math.exp(-float(logits[i, k])))
            by_hand -= float(y[i, k]) * math.log(p) + (1 - float(y[i, k])) * math.log(1 - p)
    assert float(class_loss(logits, y)) == pytest.approx(by_hand / 6, abs=1e-6)
    assert float(class_accuracy(logits, y)) == pytest.approx(5 / 6)  # only row 2, finding 3 is wrong
    # class indices keep the cross-entropy
    assert float(class_loss(logits, torch.tensor([0, 2]))) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))))
    _, critic = get_preset("acgan-spine-small").build(3)
    out = AcganLoss().critic_loss(critic, torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64), y, y)
    assert out["loss_class"].ndim == 0 and 0 <= float(out["class_acc_real"]) <= 1


def test_grid_and_sampler_conditions() -> None:
    grid = grid_conditions(9, 3, multilabel=True)
    assert grid[:8].tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
    assert grid_conditions(4, 3).tolist() == [0, 1, 2, 0]
    gen, _ = get_preset("acgan-spine-small").build(3)
    sampler = GeneratorSampler(gen, gen.latent_dim, num_classes=3, multilabel=True)
    assert sampler.labels(2, [1, 0, 1]).tolist() == [[1, 0, 1], [1, 0, 1]]
    assert sampler.labels(4).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    # 5 images render in a padded pass: the multi-hot rows pad like the latents
    assert sampler.generate(5, 0, batch_size=4, label=[0, 1, 1]).shape == (5, 64, 64)
    for bad in ([1, 0], [1, 0, 2], 1, [True, False, True]):
        with pytest.raises(BadInput, match="3 entries of 0 or 1"):
            sampler.generate(1, 0, label=bad)
