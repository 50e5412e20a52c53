"""A generator that replays a fixed bank of images: the known answer for privacy drills.

Privacy checks need generators whose leakage is known, not hoped for:

* a bank of **training images** is a planted memoriser (every copy must be filtered, the
  membership attack must win);
* a bank of **fresh images from the same distribution** (e.g. phantoms drawn with another seed,
  no training image among them) is an ideal non-memorising generator (nothing filtered, attack
  at chance).

``copy_fraction`` mixes the two behaviours by latent: rows whose first latent coordinate lies
below the standard-normal quantile ``copy_fraction`` show a bank image, the others a smooth noise
field derived from the latent (far from any radiograph). The bank row is chosen from the second
coordinate. Both depend only on the row's own latent, so :class:`GeneratorSampler`'s determinism
contract holds. Used by the tests and ``make bench``; registered like any generator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["BankGenerator"]


class BankGenerator(nn.Module):
    """``z`` (N, latent_dim ≥ 4) → images in [-1, 1] (N, 1, H, W) from a uint8 bank (K, H, W)."""

    def __init__(self, bank: np.ndarray, copy_fraction: float = 1.0) -> None:
        super().__init__()
        bank = np.asarray(bank)
        if bank.dtype != np.uint8 or bank.ndim != 3 or len(bank) < 1:
            raise ValueError(f"bank must be uint8 (K, H, W), got {bank.dtype} {bank.shape}")
        if not 0 <= copy_fraction <= 1:
            raise ValueError(f"copy_fraction must be in [0, 1], got {copy_fraction}")
        self.register_buffer("bank", torch.from_numpy(bank.astype(np.float32) / 127.5 - 1).unsqueeze(1))
        # standard-normal quantile of copy_fraction (torch's erfinv: no scipy in the pickled module)
        p = min(max(copy_fraction, 1e-12), 1 - 1e-12)
        self.cut = float("inf") if copy_fraction == 1 else float("-inf") if copy_fraction == 0 else \
            float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        k, (h, w) = len(self.bank), self.bank.shape[2:]
        # Φ(z1) is uniform on (0, 1) for a standard-normal latent: a uniform pick of the bank row
        pick = (torch.special.ndtr(z[:, 1].double()) * k).long().clamp(0, k - 1)
        copies = self.bank[pick]
        noise = torch.tanh(z[:, :2, None, None].mean(1, keepdim=True) + torch.sin(
            torch.linspace(0, 6.28, h).view(1, 1, h, 1) * (1 + z[:, 2:3, None, None].abs()) +
            torch.linspace(0, 6.28, w).view(1, 1, 1, w) * (1 + z[:, 3:4, None, None].abs())))
        take = (z[:, 0] < self.cut).view(-1, 1, 1, 1)
        return torch.where(take, copies, noise.to(copies.dtype))
