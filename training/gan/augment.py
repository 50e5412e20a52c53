"""Differentiable augmentation of D's inputs, for GANs trained on small data.

Two recipes share the same four ops:

- **DiffAugment** (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
  Training", NeurIPS; reference code ``mit-han-lab/data-efficient-gans``,
  ``DiffAugment_pytorch.py``): every image D sees, real or fake, in D's step and in G's step,
  goes through the same random differentiable transforms, always (p = 1). G is trained through
  them, so it learns the un-augmented distribution.
- **ADA** (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data",
  NeurIPS, §3 and Eq. in §3.1): each op is applied to each image with probability p, and p is
  steered by the overfitting heuristic r_t = E[sign(D(real))] towards a target (0.6): up when D
  is too sure of the reals, down otherwise. Below p ≈ 0.8 the augmentations do not "leak" into
  the generated images (ADA Fig. 3).

Only the ops that suit grayscale radiographs are here (no colour/saturation/hue, no flips,
which would turn a left knee into a right one): integer **translation** by up to 1/8 of the
side with zero fill, **cutout** of a square half the side with zero fill, additive
**brightness** ~ U(−0.5, 0.5) and **contrast** ~ U(0.5, 1.5) around each image's mean —
DiffAugment's parameters, on images in [−1, 1] (no clamping, as in the paper's code, so
gradients flow everywhere).

Each op is a deterministic function of its input and explicitly drawn parameters
(``translation(x, shift)``…), so it can be checked with ``torch.autograd.gradcheck``; the
:class:`Augment` pipeline draws the parameters from torch's global RNG (reseeded per epoch by
the training loop, so a resumed epoch draws the same augmentations).

Why not a library: kornia 0.9's intensity augmentations (``RandomBrightness``/``RandomContrast``)
work on [0, 1] images and clamp their output, which zeroes the gradient at saturated pixels,
and its ``RandomAffine`` translates by bilinear resampling rather than the integer shifts of
both papers; the four ops below are the papers' own, in about forty lines.
"""

from __future__ import annotations

from infra.errors import BadInput

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Op = Literal["translation", "cutout", "brightness", "contrast"]
OPS: tuple[Op, ...] = ("translation", "cutout", "brightness", "contrast")
AugmentKind = Literal["none", "diffaugment", "ada"]
TRANSLATION_RATIO = 0.125  # DiffAugment: shift up to 1/8 of the side
CUTOUT_RATIO = 0.5  # DiffAugment: a square half the side


def translation(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels, filling with zeros (DiffAugment ``rand_translation``).

    Args:
        x: (N, C, H, W) images.
        shift: (N, 2) integer (dy, dx) per image; a pixel moves from (i, j) to (i + dy, j + dx).

    Returns:
        (N, C, H, W), differentiable in ``x`` (a gather).
    """
    n, _, h, w = x.shape
    if shift.shape != (n, 2):
        raise BadInput(f"shift must be (N, 2) = ({n}, 2), got {tuple(shift.shape)}")
    pad = int(shift.abs().max()) if shift.numel() else 0
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=x.device)[None, :] - shift[:, :1] + pad)  # (N, H) source rows
    cols = (torch.arange(w, device=x.device)[None, :] - shift[:, 1:] + pad)  # (N, W) source cols
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, center: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size``×``size`` square per image (DiffAugment ``rand_cutout``, DeVries & Taylor 2017).

    Args:
        x: (N, C, H, W) images.
        center: (N, 2) integer (row, col) of each square's centre; the square is clipped at the border.
        size: side of the square in pixels.

    Returns:
        ``x`` times a 0/1 mask, differentiable in ``x``.
    """
    n, _, h, w = x.shape
    if center.shape != (n, 2):
        raise BadInput(f"center must be (N, 2) = ({n}, 2), got {tuple(center.shape)}")
    top = center[:, :1] - size // 2
    left = center[:, 1:] - size // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top) & (rows < top + size)  # (N, H)
    in_cols = (cols >= left) & (cols < left + size)  # (N, W)
    mask = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * mask[:, None].to(x.dtype)


def brightness(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x + delta`` per image (DiffAugment ``rand_brightness``: delta ~ U(−0.5, 0.5)); delta (N,)."""
    return x + delta.to(x.dtype).view(-1, 1, 1, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``(x − mean) · factor + mean`` with each image's mean (DiffAugment ``rand_contrast``:
    factor ~ U(0.5, 1.5)); factor (N,)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor.to(x.dtype).view(-1, 1, 1, 1) + mean


class Augment:
    """The augmentation pipeline: each op in ``policy``, applied per image with probability ``p``.

    ``p = 1`` is DiffAugment; ADA moves ``p`` (see :class:`AdaController`). Parameters come from
    torch's global RNG on ``x``'s device.

    Args:
        policy: ops in the order applied (default: translation, cutout, brightness, contrast).
        p: probability of each op for each image, in [0, 1].
    """

    def __init__(self, policy: Sequence[str] = OPS, p: float = 1.0) -> None:
        unknown = [op for op in policy if op not in OPS]
        if unknown:
            raise BadInput(f"augment policy: unknown op(s) {unknown}; choose from {list(OPS)}")
        self.policy = tuple(policy)
        self.p = float(p)

    def _chosen(self, n: int, device) -> torch.Tensor:
        if self.p >= 1.0:
            return torch.ones(n, dtype=torch.bool, device=device)
        return torch.rand(n, device=device) < self.p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augmented copy of (N, C, H, W) ``x``; ``x`` itself when p = 0 or the policy is empty."""
        if self.p <= 0.0 or not self.policy:
            return x
        n, _, h, w = x.shape
        dev = x.device
        for op in self.policy:
            on = self._chosen(n, dev)
            if op == "translation":
                limit = torch.tensor([int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)], device=dev)
                shift = torch.stack([torch.randint(-int(m), int(m) + 1, (n,), device=dev) for m in limit], 1)
                x = translation(x, shift * on[:, None])
            elif op == "cutout":
                size = int(min(h, w) * CUTOUT_RATIO + 0.5)
                center = torch.stack([torch.randint(0, h + (1 - size % 2), (n,), device=dev),
                                      torch.randint(0, w + (1 - size % 2), (n,), device=dev)], 1)
                center = torch.where(on[:, None], center, torch.full_like(center, -10 * max(h, w)))  # off-image
                x = cutout(x, center, size)
            elif op == "brightness":
                x = _on_image(x, lambda img: brightness(img, (torch.rand(n, device=dev) - 0.5) * on))
            elif op == "contrast":
                x = _on_image(x, lambda img: contrast(
                    img, torch.where(on, torch.rand(n, device=dev) + 0.5, torch.ones(n, device=dev))))
        return x


def _on_image(x: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """An intensity op on the image channel only: an image + mask stack's mask channels
    (:mod:`training.nets.masks`) are labels, so they move with the geometric ops alone."""
    if x.shape[1] == 1:
        return op(x)
    return torch.cat([op(x[:, :1]), x[:, 1:]], 1)


class AugmentedCritic(nn.Module):
    """``critic(augment(x))``: what every loss sees in place of the bare critic.

    The wrapper holds no parameters; ``critic`` may be DDP-wrapped (D steps) or the bare module
    with frozen weights (G steps), so both G's and D's updates go through the augmentation, as
    DiffAugment and ADA require.
    """

    def __init__(self, critic: nn.Module | Callable, augment: Augment) -> None:
        super().__init__()
        self.critic = critic
        self.augment = augment

    def forward(self, x: torch.Tensor, *args):
        return self.critic(self.augment(x), *args)


class AdaController:
    """ADA's adaptive p (Karras et al. 2020, §3.1 and their ``training_loop.py``).

    Every ``interval`` D steps, with r_t = E[sign(D(real))] over those steps (mean across
    workers), p ← clip(p + sign(r_t − target) · images / (kimg · 1000), 0, 1), where ``images`` is
    the number of real images D saw since the last adjustment. So p can go from 0 to 1 in
    ``kimg`` thousand images. StyleGAN2-ADA uses kimg = 500 for runs of millions of images; the
    CPU runs here see ~10⁵ images, so the default is 100 [choice, recorded in the run params].

    For WGAN-GP the critic's output has no fixed zero, so r_t is a weaker signal than for the
    logistic losses the paper used; it still rises as the critic separates reals from fakes.

    Args:
        target: the r_t to hold (paper: 0.6).
        kimg: thousands of images for p to traverse [0, 1].
        interval: D steps between adjustments (paper: 4).
        p: the starting probability (paper: 0).
    """

    def __init__(self, target: float = 0.6, kimg: float = 100.0, interval: int = 4, p: float = 0.0) -> None:
        if not 0.0 < target < 1.0:
            raise BadInput(f"ada_target must be in (0, 1), got {target}")
        if kimg <= 0 or interval < 1:
            raise BadInput(f"ada_kimg must be > 0 and interval >= 1, got {kimg}, {interval}")
        self.target, self.kimg, self.interval, self.p = target, kimg, interval, p
        self._sum, self._count, self._images, self._steps = 0.0, 0, 0, 0
        self.last_rt: float = float("nan")

    def accumulate(self, real_sign_sum: float, count: int) -> None:
        """Add one D step's Σ sign(D(real)) over ``count`` real images (this worker's)."""
        self._sum += float(real_sign_sum)
        self._count += int(count)
        self._images += int(count)
        self._steps += 1

    def due(self) -> bool:
        """``interval`` D steps have been accumulated since the last adjustment."""
        return self._steps >= self.interval

    def pending(self) -> bool:
        """Some D steps are accumulated but not yet applied (the training loop flushes them at
        each epoch's end, so a checkpoint never holds one worker's partial sums)."""
        return self._steps > 0

    def adjust(self, reduce: Callable[[list[float]], list[float]] = lambda v: v) -> float:
        """Move p from the accumulated signs; ``reduce`` sums [Σ sign, count, images] over workers."""
        total, count, images = reduce([self._sum, float(self._count), float(self._images)])
        if count > 0:
            self.last_rt = total / count
            step = images / (self.kimg * 1000.0)
            self.p = float(min(1.0, max(0.0, self.p + (1.0 if self.last_rt > self.target else -1.0) * step)))
        self._sum, self._count, self._images, self._steps = 0.0, 0, 0, 0
        return self.p

    def state_dict(self) -> dict:
        return {"p": self.p, "target": self.target, "kimg": self.kimg, "interval": self.interval,
                "sum": self._sum, "count": self._count, "images": self._images, "steps": self._steps,
                "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.target, self.kimg, self.interval = state["p"], state["target"], state["kimg"], state["interval"]
        self._sum, self._count, self._images, self._steps = state["sum"], state["count"], state["images"], state["steps"]
        self.last_rt = state["last_rt"]
