"""Adversarial losses: the gradient penalty against an independent autograd path, and under DDP.

The DDP test runs two real gloo processes (no Ray, no stack) and compares the critic's
all-reduced gradients with one process computing the same loss on the whole batch.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from training.gan.losses import AcganLoss, BceLoss, HingeLoss, WganGpLoss, gradient_penalty, make_loss
from training.nets.wgan_gp import KneeCritic


def _tiny_critic() -> nn.Module:
    torch.manual_seed(0)
    return KneeCritic(image_size=16, widths=(4, 8), dropouts=(0.0, 0.0), final_dropout=0.0)


def test_gradient_penalty_matches_per_sample_autograd() -> None:
    critic = _tiny_critic()
    torch.manual_seed(1)
    real, fake, eps = torch.randn(6, 1, 16, 16), torch.randn(6, 1, 16, 16), torch.rand(6, 1, 1, 1)
    gp = gradient_penalty(critic, real, fake, eps)
    # Independent path: torch.func per-sample input gradients of the scalar critic.
    from torch.func import grad, vmap

    mixed = eps * real + (1 - eps) * fake
    per_sample = vmap(grad(lambda x: critic(x.unsqueeze(0)).squeeze()))(mixed)
    expected = ((per_sample.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(gp, expected, rtol=1e-5, atol=1e-7)
    assert gp.requires_grad  # create_graph: it trains the critic


def _ddp_worker(rank: int, port: int, tensors: dict, out: dict) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        critic = _tiny_critic()
        ddp = DistributedDataParallel(critic)
        half = slice(rank * 4, rank * 4 + 4)
        loss = WganGpLoss(10.0).critic_loss(ddp, tensors["real"][half], tensors["fake"][half],
                                            eps=tensors["eps"][half])["loss"]
        loss.backward()
        if rank == 0:
            out["grads"] = [p.grad.clone() for p in critic.parameters()]
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradient_penalty_is_correct_under_ddp() -> None:
    torch.manual_seed(2)
    tensors = {"real": torch.randn(8, 1, 16, 16), "fake": torch.randn(8, 1, 16, 16), "eps": torch.rand(8, 1, 1, 1)}
    with mp.get_context("spawn").Manager() as manager:  # no fork of a process holding Ray's gRPC threads
        out = manager.dict()
        mp.start_processes(_ddp_worker, args=(_free_port(), tensors, out), nprocs=2, start_method="spawn")
        ddp_grads = list(out["grads"])
    # One process, whole batch: DDP averages the two half-batch means, which is the full mean
    # for every term of the loss (including the penalty, a per-sample mean).
    critic = _tiny_critic()
    halves = [slice(0, 4), slice(4, 8)]
    loss = sum(WganGpLoss(10.0).critic_loss(critic, tensors["real"][h], tensors["fake"][h], eps=tensors["eps"][h])["loss"]
               for h in halves) / 2
    loss.backward()
    single = [p.grad for p in critic.parameters()]
    assert len(ddp_grads) == len(single)
    for got, want in zip(ddp_grads, single):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in single)
    # and the penalty's own contribution is in there: without it the gradients differ
    bare = _tiny_critic()
    (-(bare(tensors["real"]).mean() - bare(tensors["fake"]).mean())).backward()
    assert not all(torch.allclose(g, p.grad) for g, p in zip(single, bare.parameters()))


class _Fixed(nn.Module):
    """A 'critic' that returns given logits, to check the loss formulas."""

    def __init__(self, real_logit: float, fake_logit: float) -> None:
        super().__init__()
        self.real_logit, self.fake_logit = real_logit, fake_logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.flatten(1).mean(1) > 0, self.real_logit, self.fake_logit)


def test_bce_loss_is_log2_for_an_undecided_and_zero_for_a_perfect_discriminator() -> None:
    real, fake = torch.ones(4, 1, 2, 2), -torch.ones(4, 1, 2, 2)
    undecided = BceLoss().critic_loss(_Fixed(0.0, 0.0), real, fake)
    assert undecided["loss"].item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    perfect = BceLoss().critic_loss(_Fixed(30.0, -30.0), real, fake)
    assert perfect["loss"].item() < 1e-10 and perfect["d_real"].item() == pytest.approx(1.0)
    # the non-saturating generator loss is large when D spots the fakes
    assert BceLoss().generator_loss(_Fixed(30.0, -30.0), fake)["loss"].item() == pytest.approx(30.0, rel=1e-3)


def test_acgan_loss_adds_source_and_class_terms() -> None:
    class TwoHeads(nn.Module):
        def forward(self, x):
            n = x.shape[0]
            logits = torch.full((n, 3), -20.0)
            logits[torch.arange(n), x.flatten(1)[:, 0].long()] = 20.0  # pixel value = true class
            return torch.zeros(n), logits

    y = torch.tensor([0, 2, 1])
    images = y.view(3, 1, 1, 1).float().expand(3, 1, 2, 2)
    out = AcganLoss().critic_loss(TwoHeads(), images, images, y, y)
    assert out["loss_class"].item() < 1e-6  # classes perfectly recognised
    assert out["loss_source"].item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    assert out["class_acc_real"].item() == 1.0
    wrong = AcganLoss().critic_loss(TwoHeads(), images, images, y, (y + 1) % 3)
    assert wrong["loss_class"].item() > 30  # fake labels disagree with what D sees


def test_hinge_loss_by_hand_and_real_sign() -> None:
    real, fake = torch.ones(4, 1, 2, 2), -torch.ones(4, 1, 2, 2)
    # D(real) = 0.5, D(fake) = -0.25: max(0, 1 - 0.5) + max(0, 1 - 0.25) = 1.25
    out = HingeLoss().critic_loss(_Fixed(0.5, -0.25), real, fake)
    assert out["loss"].item() == pytest.approx(1.25) and out["real_sign"].item() == 1.0
    assert HingeLoss().critic_loss(_Fixed(2.0, -3.0), real, fake)["loss"].item() == 0.0  # beyond the margins
    assert HingeLoss().generator_loss(_Fixed(2.0, -3.0), fake)["loss"].item() == pytest.approx(3.0)
    # every loss reports ADA's r_t = E[sign(D(real))]
    assert BceLoss().critic_loss(_Fixed(-1.0, 0.0), real, fake)["real_sign"].item() == -1.0


def test_make_loss_names() -> None:
    assert isinstance(make_loss("wgan-gp", 5.0), WganGpLoss) and make_loss("wgan-gp", 5.0).gp_lambda == 5.0
    assert isinstance(make_loss("hinge"), HingeLoss)
    with pytest.raises(ValueError, match="unknown loss 'hinges'"):
        make_loss("hinges")
