"""The progressive presets' losses: WGAN-GP's drift term, the conditional PGGAN's multi-label AC
loss by hand, and that loss under DDP with ``find_unused_parameters`` mid-fade-in (two real
gloo processes, no Ray), where a later stage's block takes no part in the graph.
"""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from test_gan_losses import _free_port  # same folder
from training.gan.losses import WganGpAcLoss, WganGpLoss, make_loss
from training.nets.progressive import ProgressiveCritic


def _critic(num_classes: int = 3) -> ProgressiveCritic:
    torch.manual_seed(0)
    critic = ProgressiveCritic(num_classes=num_classes, start=4, end=16, fmap_base=32, fmap_max=8)
    critic.grow(1, 0.5)  # 8 px, fading in: the 16 px block and its fromRGB are idle
    return critic


def _tensors() -> dict:
    torch.manual_seed(2)
    return {"real": torch.randn(8, 1, 8, 8), "fake": torch.randn(8, 1, 8, 8), "eps": torch.rand(8, 1, 1, 1),
            "y": torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]] * 2)}


def test_drift_adds_eps_drift_times_mean_square_real_score() -> None:
    critic = _critic(num_classes=0)
    t = _tensors()
    plain = WganGpLoss(10.0).critic_loss(critic, t["real"], t["fake"], eps=t["eps"])
    drifted = WganGpLoss(10.0, drift=1e-3).critic_loss(critic, t["real"], t["fake"], eps=t["eps"])
    expected = 1e-3 * critic(t["real"]).detach().pow(2).mean()
    torch.testing.assert_close(drifted["loss"] - plain["loss"], expected, rtol=1e-4, atol=1e-7)
    assert isinstance(make_loss("wgan-gp-ac", 10.0, 1e-3), WganGpAcLoss)


def test_ac_loss_is_wgan_gp_plus_drift_plus_one_bce_per_finding() -> None:
    critic = _critic()
    t = _tensors()
    out = WganGpAcLoss(10.0, 1e-3).critic_loss(critic, t["real"], t["fake"], t["y"], t["y"], eps=t["eps"])
    with torch.no_grad():
        (sr, cr), (sf, cf) = critic(t["real"]), critic(t["fake"])

        def bce(logits, y):  # −[y log σ + (1 − y) log(1 − σ)], averaged over images and findings
            p = torch.sigmoid(logits)
            return -(y * p.log() + (1 - y) * (1 - p).log()).mean()

        expected_class = bce(cr, t["y"]) + bce(cf, t["y"])
        expected = -(sr.mean() - sf.mean()) + 10.0 * out["gp"] + 1e-3 * sr.pow(2).mean() + expected_class
    torch.testing.assert_close(out["loss_class"], expected_class, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    g = WganGpAcLoss().generator_loss(critic, t["fake"], t["y"])
    torch.testing.assert_close(g["loss"], -sf.mean() + bce(cf, t["y"]), rtol=1e-5, atol=1e-6)


def _ddp_worker(rank: int, port: int, tensors: dict, out: dict) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        critic = _critic()
        ddp = DistributedDataParallel(critic, find_unused_parameters=True)
        half = slice(rank * 4, rank * 4 + 4)
        loss = WganGpAcLoss(10.0, 1e-3).critic_loss(ddp, tensors["real"][half], tensors["fake"][half],
                                                    tensors["y"][half], tensors["y"][half], eps=tensors["eps"][half])
        loss["loss"].backward()
        if rank == 0:
            out["grads"] = [None if p.grad is None else p.grad.clone() for p in critic.parameters()]
    finally:
        dist.destroy_process_group()


def test_ac_loss_under_ddp_with_idle_blocks_matches_one_process() -> None:
    tensors = _tensors()
    with mp.get_context("spawn").Manager() as manager:  # no fork of a process holding Ray's gRPC threads
        out = manager.dict()
        mp.start_processes(_ddp_worker, args=(_free_port(), tensors, out), nprocs=2, start_method="spawn")
        ddp_grads = list(out["grads"])
    critic = _critic()
    loss = sum(WganGpAcLoss(10.0, 1e-3).critic_loss(critic, tensors["real"][h], tensors["fake"][h], tensors["y"][h],
                                                    tensors["y"][h], eps=tensors["eps"][h])["loss"]
               for h in (slice(0, 4), slice(4, 8))) / 2
    loss.backward()
    idle = {id(p) for m in (critic.blocks[2], critic.from_rgb[2]) for p in m.parameters()}
    for p, got in zip(critic.parameters(), ddp_grads):
        if id(p) in idle:
            assert p.grad is None and (got is None or not got.any())
        else:
            torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)
    assert sum(p.grad is not None for p in critic.parameters()) > len(idle)
