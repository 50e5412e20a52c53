"""A self-contained, deterministic sampler around a trained generator.

This is what gets registered in MLflow and served: ``generate(n, seed)`` depends only on
its arguments (z is drawn from a CPU ``torch.Generator`` seeded with ``seed``, the network
is in eval mode), so the same request yields the same bytes on every replica.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class GeneratorSampler(nn.Module):
    """Wraps a generator with its latent size and output conversion.

    Args:
        generator: maps z (N, latent_dim) to images in [-1, 1], shape (N, C, H, W).
        latent_dim: size of z.
        class_index: the class this generator was trained on (per-class mode), if any.
        class_name: human-readable name of that class.
        num_classes: K for a conditional generator (``generator(z, labels)``); None for an
            unconditional one.
    """

    def __init__(
        self, generator: nn.Module, latent_dim: int, class_index: int | None = None,
        class_name: str | None = None, num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.generator = generator.eval()
        self.latent_dim = latent_dim
        self.class_index = class_index
        self.class_name = class_name
        self.num_classes = num_classes

    @property
    def conditional(self) -> bool:
        # getattr: samplers pickled into the registry before conditional models existed lack it.
        return getattr(self, "num_classes", None) is not None

    def labels(self, n: int, label: int | None = None) -> torch.Tensor:
        """Labels for ``n`` conditional samples: ``label``, else the trained class, else 0, 1, …, K−1 in turn."""
        if label is None:
            label = self.class_index
        if label is not None and not 0 <= label < (self.num_classes or 0):
            raise ValueError(f"label {label} is outside this generator's classes 0..{(self.num_classes or 0) - 1}")
        return torch.full((n,), label, dtype=torch.long) if label is not None else torch.arange(n) % self.num_classes

    def latents(self, n: int, seed: int) -> torch.Tensor:
        rng = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn(n, self.latent_dim, generator=rng)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.conditional:
            return self.generator(z)
        return self.generator(z, self.labels(len(z)) if labels is None else labels)

    @torch.inference_mode()
    def generate(self, n: int, seed: int, batch_size: int = 64, label: int | None = None) -> np.ndarray:
        """``n`` uint8 images (N, H, W) for grayscale or (N, H, W, C), reproducible from ``seed``.

        ``label`` picks the class of a conditional generator (see :meth:`labels`).
        """
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        if label is not None and not self.conditional:
            raise ValueError("label is only for conditional generators; this one is unconditional")
        self.generator.eval()
        z = self.latents(n, seed)
        y = self.labels(n, label) if self.conditional else None
        # n == 0 still runs the (empty) batch once, so the result has the right (0, H, W) shape.
        chunks = [
            self(z[i : i + batch_size], None if y is None else y[i : i + batch_size]) for i in range(0, n, batch_size)
        ] or [self(z, y)]
        return to_uint8(torch.cat(chunks))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float (N, C, H, W) → uint8 (N, H, W[, C]) with round-half-to-even."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr
