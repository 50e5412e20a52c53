"""Progressive GANs: PGGAN (Karras et al. 2018), the knee-MRI Enhanced-GAN (Waqas et al. 2022;
seed 001) and the chest paper's conditional PGGAN (Han et al. 2020; seed 003).

Both networks hold every stage from the start (PGGAN's official code does the same) and read
the current ``stage`` and fade-in ``alpha`` from two buffers, so a checkpoint's state dict
restores the resolution a generator was at, and the EMA copy (which copies buffers) follows
the raw generator. :meth:`ProgressiveGenerator.grow` / :meth:`ProgressiveCritic.grow` set them.

Topology (PGGAN Table 2, with the seed papers' changes; widths ``nf(r) = min(fmap_base / (r/2),
fmap_max)``, PGGAN's 8192 / 512 by default: 512 up to 32², then 256, 128, 64, 32, 16):

- G: z (pixel-normalised) ‖ condition → dense to ``start``² × nf → LReLU → [PN] → conv3×3 →
  LReLU → [PN]; each later stage: nearest ×2 → (conv3×3 → LReLU → [PN]) × 2; a 1×1 toRGB per
  stage, linear (PGGAN and Han et al.: linear output, no tanh).
- Fade-in (PGGAN §3, Fig. 2): during stage s's fade-in the output is
  ``lerp(up(toRGB_{s-1}(x)), toRGB_s(block_s(x)), α)``; D mirrors it with
  ``lerp(fromRGB_{s-1}(avgpool(img)), block_s(fromRGB_s(img)), α)``. At α = 1 the old path is
  not computed.
- D: fromRGB 1×1 → LReLU; each stage: conv3×3 → LReLU → conv3×3 → LReLU → avgpool 2; the last
  block: minibatch-stddev → conv3×3 → LReLU → dense → LReLU → dense to 1 (+ K class logits: the
  AC-GAN head of Han et al., one logit per finding for multi-label BCE).
- Enhanced-GAN: one SAGAN block on the input of the ``attention_at`` stage (256 in the paper:
  "between the 128 and 256 stages"), in G only ("one" block); it is used from that stage's
  fade-in on, where γ = 0 makes it the identity.

Normalisation choices (the Enhanced-GAN ablation switches): G ``norm="pn"`` (equalised layers +
pixel norm, PGGAN) or ``"sn"`` (spectrally normalised layers, no pixel norm); D ``norm="none"``
(equalised layers, PGGAN), ``"sn"`` (spectral norm, Enhanced-GAN) or ``"pn"`` (equalised + pixel
norm after each activation, the paper's PN/PN variant).

Condition convention (multi-label): ``labels`` is a float (B, K) multi-hot tensor; a long (B,)
class index is accepted too and one-hot encoded (single-label catalogs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infra.errors import BadInput
from training.nets.progressive_layers import MinibatchStddev, PixelNorm, SelfAttention, conv, linear


def widths(resolutions: list[int], fmap_base: int, fmap_max: int) -> dict[int, int]:
    """Channels at each resolution: ``min(fmap_base // (r // 2), fmap_max)`` (PGGAN's ``nf``)."""
    return {r: max(1, min(fmap_base // max(1, r // 2), fmap_max)) for r in resolutions}


def _resolutions(start: int, end: int) -> list[int]:
    if start < 4 or end < start or (end // start) & (end // start - 1) or end % start:
        raise BadInput(f"progressive growth needs start >= 4 and end = start · 2^k, got {start} → {end}")
    return [start * 2**i for i in range(int(math.log2(end // start)) + 1)]


def condition(labels: torch.Tensor | None, num_classes: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, K) float condition from multi-hot (B, K) floats or long (B,) class indices."""
    if not num_classes:
        return None
    if labels is None:
        raise BadInput(f"this generator is conditional on {num_classes} labels; pass labels")
    if labels.dim() == 1:
        return F.one_hot(labels.long(), num_classes).to(dtype)
    if labels.shape[1] != num_classes:
        raise BadInput(f"labels has {labels.shape[1]} columns, this network has {num_classes}")
    return labels.to(dtype)


class _Growing(nn.Module):
    """Shared stage/alpha buffers and their setter."""

    resolutions: list[int]

    def _init_growth(self) -> None:
        self.register_buffer("stage", torch.tensor(len(self.resolutions) - 1))
        self.register_buffer("alpha", torch.tensor(1.0))

    def grow(self, stage: int, alpha: float) -> None:
        """Set the active stage (0 = ``start``²) and the fade-in weight α ∈ [0, 1] of its new block."""
        if not 0 <= stage < len(self.resolutions) or not 0.0 <= alpha <= 1.0 or (stage == 0 and alpha < 1):
            raise BadInput(f"stage must be in 0..{len(self.resolutions) - 1} and alpha in [0, 1] "
                           f"(1 at stage 0), got {stage}, {alpha}")
        self.stage.fill_(stage)
        self.alpha.fill_(alpha)

    @property
    def resolution(self) -> int:
        return self.resolutions[int(self.stage)]


class ProgressiveGenerator(_Growing):
    """z (B, latent_dim) [, labels (B, K)] → image (B, channels, r, r) at the current stage's r.

    Args:
        latent_dim: size of z (PGGAN and Han et al.: 512).
        num_classes: K of the multi-hot condition concatenated to z (0 = unconditional).
        start, end: first and last resolution (knee: 8 → 256; chest: 4 → 1024).
        channels: image channels (knee: 1, or 2 with the cartilage mask).
        fmap_base, fmap_max: width rule (see :func:`widths`).
        norm: ``pn`` (equalised LR + pixel norm) or ``sn`` (spectral norm).
        attention_at: resolution whose stage input gets the SA block (None: no attention).
        slope: LeakyReLU slope (0.2).
    """

    def __init__(self, latent_dim: int = 512, num_classes: int = 0, start: int = 4, end: int = 1024,
                 channels: int = 1, fmap_base: int = 8192, fmap_max: int = 512, norm: str = "pn",
                 attention_at: int | None = None, slope: float = 0.2) -> None:
        super().__init__()
        if norm not in ("pn", "sn"):
            raise BadInput(f"generator norm must be pn or sn, got {norm!r}")
        self.resolutions = _resolutions(start, end)
        if attention_at is not None and attention_at not in self.resolutions[1:]:
            raise BadInput(f"attention_at must be one of {self.resolutions[1:]}, got {attention_at}")
        self.latent_dim, self.num_classes, self.channels = latent_dim, num_classes, channels
        self.image_size, self.start = end, start
        self.norm = norm
        nf = widths(self.resolutions, fmap_base, fmap_max)
        layer = "eq" if norm == "pn" else "sn"
        pn = PixelNorm() if norm == "pn" else nn.Identity()
        act = nn.LeakyReLU(slope)
        self.latent_norm = pn
        self.dense = linear(latent_dim + num_classes, nf[start] * start * start, layer, gain=math.sqrt(2) / 4)
        self.base = nn.Sequential(act, pn, conv(nf[start], nf[start], 3, layer), act, pn)
        blocks, to_rgb = [nn.Identity()], [conv(nf[start], channels, 1, layer, gain=1.0)]
        for prev, r in zip(self.resolutions, self.resolutions[1:]):
            blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                        conv(nf[prev], nf[r], 3, layer), act, pn,
                                        conv(nf[r], nf[r], 3, layer), act, pn))
            to_rgb.append(conv(nf[r], channels, 1, layer, gain=1.0))
        self.blocks, self.to_rgb = nn.ModuleList(blocks), nn.ModuleList(to_rgb)
        self.attention_stage = None if attention_at is None else self.resolutions.index(attention_at)
        self.attention = None if attention_at is None else SelfAttention(nf[attention_at // 2], layer)
        self._nf = nf
        self._init_growth()

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.attention is not None and i == self.attention_stage:
            x = self.attention(x)
        return self.blocks[i](x)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        s, alpha = int(self.stage), float(self.alpha)
        v = self.latent_norm(z)
        c = condition(labels, self.num_classes, v.dtype)
        if c is not None:
            v = torch.cat([v, c], dim=1)
        x = self.base(self.dense(v).view(z.shape[0], self._nf[self.start], self.start, self.start))
        for i in range(1, s):
            x = self._block(i, x)
        if s == 0:
            return self.to_rgb[0](x)
        new = self.to_rgb[s](self._block(s, x))
        if alpha >= 1.0:
            return new
        low = F.interpolate(self.to_rgb[s - 1](x), scale_factor=2, mode="nearest")
        return torch.lerp(low, new, alpha)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The modules stage ``stage`` uses at α = 1 (for per-stage parameter counts)."""
        mods: list[nn.Module] = [self.dense, self.base, *self.blocks[1 : stage + 1], self.to_rgb[stage]]
        if self.attention is not None and stage >= self.attention_stage:
            mods.append(self.attention)
        return mods


class ProgressiveCritic(_Growing):
    """image (B, channels, r, r) at the current stage's r → score (B,) [, class logits (B, K)].

    Args:
        num_classes: K of the AC-GAN head (0 = no head; the chest preset: 14 findings).
        start, end, channels, fmap_base, fmap_max, slope: as the generator.
        norm: ``none`` (equalised LR, PGGAN), ``sn`` (spectral norm, Enhanced-GAN) or ``pn``.
        mbstd_group: minibatch-stddev group size (PGGAN: 4).
    """

    def __init__(self, num_classes: int = 0, start: int = 4, end: int = 1024, channels: int = 1,
                 fmap_base: int = 8192, fmap_max: int = 512, norm: str = "none", mbstd_group: int = 4,
                 slope: float = 0.2) -> None:
        super().__init__()
        if norm not in ("none", "sn", "pn"):
            raise BadInput(f"critic norm must be none, sn or pn, got {norm!r}")
        self.resolutions = _resolutions(start, end)
        self.num_classes, self.start, self.image_size, self.norm = num_classes, start, end, norm
        nf = widths([start // 2, *self.resolutions], fmap_base, fmap_max)
        layer = "sn" if norm == "sn" else "eq"
        pn = PixelNorm() if norm == "pn" else nn.Identity()
        act = nn.LeakyReLU(slope)
        self.from_rgb = nn.ModuleList([nn.Sequential(conv(channels, nf[r], 1, layer), act, pn) for r in self.resolutions])
        blocks: list[nn.Module] = [nn.Identity()]
        for prev, r in zip(self.resolutions, self.resolutions[1:]):
            blocks.append(nn.Sequential(conv(nf[r], nf[r], 3, layer), act, pn, conv(nf[r], nf[prev], 3, layer), act, pn,
                                        nn.AvgPool2d(2)))
        self.blocks = nn.ModuleList(blocks)
        self.final = nn.Sequential(
            MinibatchStddev(mbstd_group), conv(nf[start] + 1, nf[start], 3, layer), act, pn, nn.Flatten(),
            linear(nf[start] * start * start, nf[start // 2], layer), act,
            linear(nf[start // 2], 1 + num_classes, layer, gain=1.0),
        )
        self._init_growth()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s, alpha = int(self.stage), float(self.alpha)
        if x.shape[-1] != self.resolutions[s]:
            raise BadInput(f"critic is at {self.resolutions[s]}px (stage {s}), got {x.shape[-1]}px images")
        h = self.from_rgb[s](x)
        if s > 0:
            h = self.blocks[s](h)
            if alpha < 1.0:
                h = torch.lerp(self.from_rgb[s - 1](F.avg_pool2d(x, 2)), h, alpha)
            for i in range(s - 1, 0, -1):
                h = self.blocks[i](h)
        out = self.final(h)
        return (out[:, 0], out[:, 1:]) if self.num_classes else out[:, 0]

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The modules stage ``stage`` uses at α = 1 (for per-stage parameter counts)."""
        return [self.from_rgb[stage], *self.blocks[1 : stage + 1], self.final]


def stage_parameter_count(net: ProgressiveGenerator | ProgressiveCritic, stage: int) -> int:
    """Trainable parameters a stage uses at α = 1 (spectral norm's u, v vectors are buffers)."""
    seen: set[int] = set()
    total = 0
    for module in net.stage_modules(stage):
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
