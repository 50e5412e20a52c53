"""The knee paper's WGAN-GP (Prezja et al. 2022, Sci. Rep., Table 7 and the critic table).

Paper preset: z = 50, 210×210×1 output; generator 6,104,194 trainable parameters
(6,304,900 with BN running statistics), critic 6,335,861. Both networks are generic in
their widths and sizes so that a small preset of the same topology runs on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.nets.layers import CenterCrop, conv_same, same_size
from infra.errors import BadInput


class KneeGenerator(nn.Module):
    """Dense → BN → ELU → reshape, then (Upsample×2, Conv3×3 no-bias, ELU) stages, BN, tanh, crop.

    Args:
        latent_dim: size of z ~ N(0, I) (paper: 50).
        base_size: spatial size after the reshape (paper: 14).
        base_channels: channels after the reshape (paper: 512).
        widths: output channels of each upsampling stage; the last one is the image
            channel count and has no ELU (paper: 128, 128, 128, 1).
        crop: pixels cropped from each border at the end (paper: 7, 224 → 210).
        elu_alpha: ELU α (paper: 0.2).
        bn_momentum: PyTorch BN momentum (Keras' default 0.99 is 0.01 here). Short runs
            use a larger value so eval-mode running statistics catch up within few steps.
    """

    def __init__(
        self,
        latent_dim: int = 50,
        base_size: int = 14,
        base_channels: int = 512,
        widths: Sequence[int] = (128, 128, 128, 1),
        crop: int = 7,
        elu_alpha: float = 0.2,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.base_shape = (base_channels, base_size, base_size)
        features = base_channels * base_size * base_size
        self.stem = nn.Sequential(
            nn.Linear(latent_dim, features, bias=False),
            nn.BatchNorm1d(features, eps=1e-3, momentum=bn_momentum),  # Keras BN eps
            nn.ELU(elu_alpha),
        )
        stages: list[nn.Module] = []
        in_ch = base_channels
        for i, out_ch in enumerate(widths):
            stages += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)]
            if i < len(widths) - 1:
                stages.append(nn.ELU(elu_alpha))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.BatchNorm2d(in_ch, eps=1e-3, momentum=bn_momentum), nn.Tanh(), CenterCrop(crop))
        self.out_channels = in_ch
        self.image_size = base_size * 2 ** len(widths) - 2 * crop

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z).view(z.shape[0], *self.base_shape)
        return self.head(self.stages(x))


class KneeCritic(nn.Module):
    """ZeroPad → (Conv5×5 stride 2 'same', ELU[, Dropout]) × n → Flatten → Dropout → Dense.

    No normalisation layers: batch statistics would break the per-sample gradient penalty.

    Args:
        image_size: input height/width (paper: 210).
        in_channels: image channels (paper: 1).
        widths: convolution widths (paper: 64, 128, 256, 312, 422).
        dropouts: dropout after each convolution, 0 for none (paper: 0.3 after the 2nd and 3rd).
        final_dropout: dropout before the dense layer (paper: 0.2).
        zero_pad: zero padding before the first convolution (paper: 2, 210 → 214).
        elu_alpha: ELU α.
    """

    def __init__(
        self,
        image_size: int = 210,
        in_channels: int = 1,
        widths: Sequence[int] = (64, 128, 256, 312, 422),
        dropouts: Sequence[float] = (0.0, 0.3, 0.3, 0.0, 0.0),
        final_dropout: float = 0.2,
        zero_pad: int = 2,
        elu_alpha: float = 0.2,
    ) -> None:
        super().__init__()
        if len(dropouts) != len(widths):
            raise BadInput(f"dropouts has {len(dropouts)} entries but widths has {len(widths)}")
        layers: list[nn.Module] = [nn.ZeroPad2d(zero_pad)]
        in_ch = in_channels
        for out_ch, p in zip(widths, dropouts):
            layers += [conv_same(in_ch, out_ch, 5, 2), nn.ELU(elu_alpha)]
            if p:
                layers.append(nn.Dropout(p))
            in_ch = out_ch
        side = same_size(image_size + 2 * zero_pad, 2, len(widths))
        layers += [nn.Flatten(), nn.Dropout(final_dropout), nn.Linear(in_ch * side * side, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

