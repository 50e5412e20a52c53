"""The fracture thesis' DCGAN (Platin, UPenn; seed 004): 128×128×1, z = 100, BCE.

Paper counts, pinned in the tests: generator 12,784,512 and discriminator 2,795,776
parameters. Both match bias-free convolutions (BN supplies the shift), the layout of
Radford et al.'s reference DCGAN; the tables' layer lists are the widths below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from infra.errors import BadInput


def _up(in_ch: int, out_ch: int, first: bool) -> list[nn.Module]:
    """ConvT 4×4: z → 4×4 (stride 1, no padding) for the first layer, else ×2 (stride 2, pad 1)."""
    stride, pad = (1, 0) if first else (2, 1)
    return [nn.ConvTranspose2d(in_ch, out_ch, 4, stride, pad, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True)]


def _down(in_ch: int, out_ch: int, norm: bool, slope: float) -> list[nn.Module]:
    """Conv 4×4 stride 2 (halves the size), optional BN, LeakyReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    return layers + [nn.LeakyReLU(slope, inplace=True)]


class DcganGenerator(nn.Module):
    """z (N, latent_dim) → ConvT stack with BN + ReLU → ConvT to ``channels`` → tanh.

    Args:
        latent_dim: size of z (paper: 100).
        widths: channels at 4², 8², … (paper: 1024, 512, 256, 128, 64 → 128² output).
        channels: image channels (paper: 1).
    """

    def __init__(self, latent_dim: int = 100, widths: Sequence[int] = (1024, 512, 256, 128, 64), channels: int = 1) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        layers: list[nn.Module] = []
        in_ch = latent_dim
        for i, out_ch in enumerate(widths):
            layers += _up(in_ch, out_ch, first=i == 0)
            in_ch = out_ch
        layers += [nn.ConvTranspose2d(in_ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.image_size = 4 * 2 ** len(widths)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DcganDiscriminator(nn.Module):
    """Conv 4×4 stride-2 stack with LeakyReLU (BN from the third layer) → Conv 4×4 → one logit.

    The paper's sigmoid is folded into the loss (``BCEWithLogitsLoss``), which is the same
    function but numerically stable; it has no parameters, so the count is unchanged.

    Args:
        image_size: input side (paper: 128); must be ``4 · 2^len(widths)``.
        widths: convolution widths (paper: 32, 64, 128, 256, 512).
        norm_from: index of the first layer with BN (paper: 2, i.e. the 128-wide layer).
        channels: image channels.
        slope: LeakyReLU negative slope.
    """

    def __init__(
        self,
        image_size: int = 128,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        norm_from: int = 2,
        channels: int = 1,
        slope: float = 0.2,
    ) -> None:
        super().__init__()
        if image_size != 4 * 2 ** len(widths):
            raise BadInput(f"image_size {image_size} needs {image_size}/4 = 2^len(widths); got {len(widths)} widths")
        layers: list[nn.Module] = []
        in_ch = channels
        for i, out_ch in enumerate(widths):
            layers += _down(in_ch, out_ch, norm=i >= norm_from, slope=slope)
            in_ch = out_ch
        layers += [nn.Conv2d(in_ch, 1, 4, 1, 0, bias=False), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
