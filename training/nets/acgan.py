"""The spine paper's AC-GAN (Röglin et al. 2022; seed 002): 64×64×1, z = 100 plus the label.

The paper fixes the topology, not the sizes; these are the choices (configurable):

- generator: the label enters as a one-hot vector concatenated to z (Odena et al. 2017
  embed it; with K ≤ 10 classes one-hot is the same information without a learned table),
  a dense layer to 8×8×256 with ReLU, then three 5×5 transposed convolutions (stride 2:
  8 → 16 → 32 → 64) with ReLU between them, BN on the output only, tanh;
- discriminator: four 3×3 convolutions with doubling widths 32 → 256, stride 2 on the 1st
  and 3rd, BN on all but the first and the last, LeakyReLU(0.2); then two linear heads on
  the flattened features: a source logit (the paper's sigmoid lives in the loss) and K
  class logits (softmax in the cross-entropy).

Multi-label conditions (the chest paper's multi-hot findings, seed 003): the generator also
takes ``labels`` as a float (B, K) tensor of 0/1 entries, concatenated to z as it is, and the
K class logits are then trained with binary cross-entropy per finding
(:class:`training.gan.losses.AcganLoss`). Integer labels (B,) stay one-hot: a one-hot vector
*is* a multi-hot vector with one finding, so the same network serves both, and fractional
entries (a condition moving from 0 to 1 in a label transition) are accepted as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from infra.errors import BadInput


def condition_vector(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) condition of class indices (B,) (one-hot) or of multi-hot (B, K) float labels.

    Raises:
        BadInput: a (B, K') condition with K' != K.
    """
    if labels.ndim == 2 and labels.is_floating_point():
        if labels.shape[1] != num_classes:
            raise BadInput(f"labels must have {num_classes} entries per image, got {labels.shape[1]}", field="labels")
        return labels
    return F.one_hot(labels, num_classes)


class AcganGenerator(nn.Module):
    """(z, label) → dense → 3 × ConvT5×5 stride 2 → BN → tanh.

    Args:
        num_classes: K.
        latent_dim: size of z (paper: 100).
        base_size: side after the dense layer (64 / 2³ = 8).
        widths: channels after the dense layer and after each hidden ConvT; the image channel
            count is appended (default 256, 128, 64 → 1).
        channels: image channels.
    """

    def __init__(
        self, num_classes: int, latent_dim: int = 100, base_size: int = 8,
        widths: Sequence[int] = (256, 128, 64), channels: int = 1,
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise BadInput(f"the spine AC-GAN has 3 transposed convolutions, so widths needs 3 entries, got {len(widths)}")
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.base_shape = (widths[0], base_size, base_size)
        self.stem = nn.Sequential(nn.Linear(latent_dim + num_classes, widths[0] * base_size**2), nn.ReLU(True))
        chans = [*widths, channels]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1))
            layers.append(nn.ReLU(True) if i < 2 else nn.BatchNorm2d(cout))
        self.net = nn.Sequential(*layers, nn.Tanh())
        self.image_size = base_size * 8

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [-1, 1] of z (B, latent_dim) and labels: class indices (B,)
        or multi-hot conditions (B, K) float."""
        x = torch.cat([z, condition_vector(labels, self.num_classes).to(z.dtype)], dim=1)
        return self.net(self.stem(x).view(z.shape[0], *self.base_shape))


class AcganDiscriminator(nn.Module):
    """4 × Conv3×3 (stride 2, 1, 2, 1) with LeakyReLU, BN on the middle two → source and class heads.

    Args:
        num_classes: K.
        image_size: input side (paper: 64).
        widths: convolution widths (default 32, 64, 128, 256: doubling).
        channels: image channels.
        slope: LeakyReLU negative slope.
    """

    def __init__(
        self, num_classes: int, image_size: int = 64, widths: Sequence[int] = (32, 64, 128, 256),
        channels: int = 1, slope: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, side = channels, image_size
        for i, out_ch in enumerate(widths):
            stride = 2 if i % 2 == 0 else 1
            layers.append(nn.Conv2d(in_ch, out_ch, 3, stride, 1))
            if 0 < i < len(widths) - 1:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(slope, inplace=True))
            in_ch, side = out_ch, (side + 1) // stride if stride == 2 else side
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.source = nn.Linear(in_ch * side * side, 1)
        self.classes = nn.Linear(in_ch * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.source(h).squeeze(1), self.classes(h)
