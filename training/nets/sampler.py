"""A self-contained, deterministic sampler around a trained generator.

This is what gets registered in MLflow and served: ``generate(n, seed)`` depends only on
its arguments (z is drawn from a PCG64 generator whose state ``SeedSequence(seed)`` derives
from every bit of ``seed``, see :mod:`infra.seeds`; the network is in eval mode), so the same request yields the same bytes on every replica.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from training.nets import RENDER_LAYOUT
from infra.errors import BadInput
from infra.seeds import numpy_rng

# Rows per forward pass when sampling; fixed, because the pixels may depend on the batch shape.
CHUNK = 64


class GeneratorSampler(nn.Module):
    """Wraps a generator with its latent size and output conversion.

    Args:
        generator: maps z (N, latent_dim) to images in [-1, 1], shape (N, C, H, W).
        latent_dim: size of z.
        class_index: the class this generator was trained on (per-class mode), if any.
        class_name: human-readable name of that class.
        num_classes: K for a conditional generator (``generator(z, labels)``); None for an
            unconditional one.
        multilabel: the K conditions are findings of a multi-label dataset: ``labels`` are
            multi-hot float (B, K) rows (the chest paper's conditions), not class indices.
        mask_classes: a paired generator's mask class names (background first): it emits
            (N, 1 + K, H, W) image + one-hot mask stacks (:mod:`training.nets.masks`);
            :meth:`generate` then gives the images and :meth:`generate_pairs` images and masks.
    """

    def __init__(
        self, generator: nn.Module, latent_dim: int, class_index: int | None = None,
        class_name: str | None = None, num_classes: int | None = None, multilabel: bool = False,
        mask_classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.generator = generator.eval()
        self.latent_dim = latent_dim
        self.class_index = class_index
        self.class_name = class_name
        self.num_classes = num_classes
        self.multilabel = bool(multilabel and num_classes)
        self.mask_classes = list(mask_classes) if mask_classes else None

    @property
    def conditional(self) -> bool:
        # getattr: samplers pickled into the registry before conditional models existed lack it.
        return getattr(self, "num_classes", None) is not None

    @property
    def paired(self) -> bool:
        """Emits image + mask pairs (samplers pickled before paired generators existed do not)."""
        return bool(getattr(self, "mask_classes", None))

    @property
    def is_multilabel(self) -> bool:
        return getattr(self, "multilabel", False)  # samplers pickled before multi-label existed

    def condition(self, labels: Sequence[int]) -> torch.Tensor:
        """(K,) float multi-hot row of a multi-label request's ``labels`` (0/1, length K).

        Raises:
            BadInput: (field ``labels``) not a multi-label generator, wrong length, or not 0/1.
        """
        if not self.is_multilabel:
            raise BadInput("labels (multi-hot) are only for multi-label conditional generators; "
                           "this one takes " + ("class" if self.conditional else "no condition"), field="labels")
        values = list(labels) if isinstance(labels, Sequence) and not isinstance(labels, str) else [labels]
        if len(values) != self.num_classes or any(v not in (0, 1) or isinstance(v, bool) for v in values):
            raise BadInput(f"labels must be {self.num_classes} entries of 0 or 1 (one per finding), got {values}",
                           field="labels")
        return torch.tensor(values, dtype=torch.float32)

    def labels(self, n: int, label: int | Sequence[int] | None = None) -> torch.Tensor:
        """Labels for ``n`` conditional samples: ``label``, else the trained class, else 0, 1, …, K−1 in turn.

        A multi-label generator takes ``label`` as its multi-hot list (see :meth:`condition`)
        and returns (n, K) float rows; without one, the K findings alone in turn (one-hot rows).
        """
        if self.is_multilabel:
            if label is None:
                return torch.eye(self.num_classes)[torch.arange(n) % self.num_classes]
            if isinstance(label, torch.Tensor) and label.ndim == 1 and label.is_floating_point():
                return label.to(torch.float32).expand(n, -1).clone()
            return self.condition(label).expand(n, -1).clone()
        if label is None:
            label = self.class_index
        if label is not None and not 0 <= label < (self.num_classes or 0):
            raise BadInput(f"label {label} is outside this generator's classes 0..{(self.num_classes or 0) - 1}")
        return torch.full((n,), label, dtype=torch.long) if label is not None else torch.arange(n) % self.num_classes

    def latents(self, n: int, seed: int) -> torch.Tensor:
        """(n, latent_dim) float32 standard-normal latents drawn from all bits of ``seed``.

        ``SeedSequence(seed)`` → PCG64 (:func:`infra.seeds.numpy_rng`, derivation
        ``SEED_DERIVATION``): torch's own generator kept only the low 32 bits, so seeds that
        agreed there gave the same images. Rows are drawn in order, so ``latents(k, s)`` is
        the first ``k`` rows of ``latents(n, s)``.
        """
        if n < 0:
            raise BadInput(f"need n >= 0, got n={n}")
        z = numpy_rng(seed).standard_normal((n, self.latent_dim), dtype=np.float32)
        return torch.from_numpy(z)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.conditional:
            return self.generator(z)
        return self.generator(z, self.labels(len(z)) if labels is None else labels)

    def render(self, z: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = CHUNK) -> np.ndarray:
        """uint8 images (N, H, W[, C]) of latents ``z`` (and ``labels``); a paired generator's image channel."""
        return self.render_pairs(z, labels, batch_size)[0]

    @torch.inference_mode()
    def render_pairs(self, z: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = CHUNK
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 images of latents ``z`` (and ``labels``), in forward passes of exactly ``batch_size`` rows,
        and for a paired generator their uint8 (N, H, W) argmax label maps (value i = ``mask_classes[i]``),
        else None.

        The last pass is zero-padded to full size. CPU kernels pick different code paths
        for different batch shapes (outputs then differ by ~1e-7, enough to flip a rounded
        pixel now and then), but with one fixed shape a row's output depends on its own
        latent only, not on its position or its neighbours (pinned by a test). So an image
        is the same whether it was asked for alone, with others, or inside a Serve batch.
        """
        if batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size}")
        self.generator.eval()
        n = len(z)
        pad = -n % batch_size or (batch_size if n == 0 else 0)  # n == 0 still yields (0, H, W)
        z = torch.cat([z, z.new_zeros(pad, z.shape[1])])
        if labels is not None:
            labels = torch.cat([labels, labels.new_zeros(pad, *labels.shape[1:])])
        forward = _channels_last_forward(self) if RENDER_LAYOUT == 2 else self
        chunks = [
            forward(z[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
            for i in range(0, len(z), batch_size)
        ]
        out = torch.cat(chunks)[:n]
        if not self.paired:
            return to_uint8(out), None
        from training.nets.masks import split_pairs

        image, masks = split_pairs(out)
        return to_uint8(image), masks.numpy().astype(np.uint8)

    def generate(self, n: int, seed: int, batch_size: int = CHUNK, label: int | Sequence[int] | None = None
                 ) -> np.ndarray:
        """``n`` uint8 images (N, H, W) for grayscale or (N, H, W, C), reproducible from ``seed``.

        ``label`` picks the class of a conditional generator, or the multi-hot findings
        (e.g. ``[1, 0, 1]``) of a multi-label one (see :meth:`labels`). A paired generator
        gives its image channel here; :meth:`generate_pairs` adds the masks.
        """
        return self.generate_pairs(n, seed, batch_size, label)[0]

    def generate_pairs(self, n: int, seed: int, batch_size: int = CHUNK, label: int | Sequence[int] | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`generate`'s images and, for a paired generator, their uint8 (N, H, W) label maps (else None).

        The same latents make both, so ``generate_pairs(n, s)[0]`` equals ``generate(n, s)``.
        """
        if n < 0 or batch_size < 1:
            raise BadInput(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        if label is not None and not self.conditional:
            raise BadInput("label is only for conditional generators; this one is unconditional")
        return self.render_pairs(self.latents(n, seed), self.labels(n, label) if self.conditional else None,
                                 batch_size)


def _channels_last_forward(module: nn.Module):
    """``module``'s forward with its 4-D weights in channels_last copies, so every convolution
    and upsampling after them runs channels_last. Copies, not ``module.to(...)``: a sampler may
    wrap a generator that is still training (FID mid-run, under DDP), whose layout must not move.
    """
    from torch.func import functional_call

    state = {name: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
             for name, t in [*module.named_parameters(), *module.named_buffers()]}
    return lambda *args: functional_call(module, state, args)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float (N, C, H, W) → uint8 (N, H, W[, C]) with round-half-to-even."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr
