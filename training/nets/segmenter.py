"""Segmentation networks: MONAI's U-Nets in one self-contained, servable wrapper.

:class:`ImageSegmenter` is what gets registered and served: it carries its class names
(index = label value, 0 = background), input size and preprocessing, so
``predict(uint8 images)`` returns label maps at each image's own size with nothing but the
pickled object. The networks are MONAI's (``monai.networks.nets.UNet`` and ``BasicUNet``,
2-D), not hand-written.

Preprocessing is the classifiers' (:mod:`training.nets.classifier`): grayscale by luma,
bilinear antialiased resize to ``image_size``, ``x / 127.5 - 1``. Masks for training are
resized with nearest neighbour. Predictions: logits are upsampled bilinearly to the input
image's size, then the argmax over classes is the label map (smoother edges than
upsampling the label map itself).

Presets (sizes for 2-CPU training; the knee-MRI paper's U-Net is not specified beyond
"U-Net", so these are choices, configurable by preset):

========================  ==========================================================  =====
preset                    network                                                     size
========================  ==========================================================  =====
``unet-small``            UNet channels (8, 16, 32), strides (2, 2), 1 residual unit    32
``unet``                  UNet channels (16, 32, 64, 128), strides (2, 2, 2), 2 units  128
``basicunet-small``       BasicUNet features (8, 8, 16, 32, 64, 8)                      32
========================  ==========================================================  =====
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infra.errors import BadInput
from training.nets.classifier import to_grayscale

__all__ = ["SEGMENTER_PRESETS", "ImageSegmenter", "SegmenterPreset", "get_segmenter_preset"]

_CHUNK = 32  # images per forward pass in predict (bounded memory)


@dataclass(frozen=True)
class SegmenterPreset:
    """A named network plus the optimisation defaults it was sized with."""

    name: str
    image_size: int
    build_net: Callable[[int], nn.Module]  # number of classes (incl. background) → network
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3

    def build(self, class_names: Sequence[str]) -> ImageSegmenter:
        return ImageSegmenter(self.build_net(len(class_names)), class_names, self.image_size, arch=self.name)


def _unet(channels: tuple[int, ...], strides: tuple[int, ...], res_units: int) -> Callable[[int], nn.Module]:
    def build(n_classes: int) -> nn.Module:
        from monai.networks.nets import UNet

        return UNet(spatial_dims=2, in_channels=1, out_channels=n_classes, channels=channels, strides=strides,
                    num_res_units=res_units)

    return build


def _basic_unet(features: tuple[int, ...]) -> Callable[[int], nn.Module]:
    def build(n_classes: int) -> nn.Module:
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=n_classes, features=features)

    return build


SEGMENTER_PRESETS: dict[str, SegmenterPreset] = {
    p.name: p for p in (
        SegmenterPreset("unet-small", 32, _unet((8, 16, 32), (2, 2), 1), epochs=10, batch_size=8, lr=3e-3),
        SegmenterPreset("unet", 128, _unet((16, 32, 64, 128), (2, 2, 2), 2), epochs=50, batch_size=16, lr=1e-3),
        SegmenterPreset("basicunet-small", 32, _basic_unet((8, 8, 16, 32, 64, 8)), epochs=10, batch_size=8, lr=3e-3),
    )
}


def get_segmenter_preset(name: str) -> SegmenterPreset:
    try:
        return SEGMENTER_PRESETS[name]
    except KeyError:
        raise BadInput(f"unknown segmenter preset {name!r}; known: {', '.join(sorted(SEGMENTER_PRESETS))}",
                       field="arch") from None


class ImageSegmenter(nn.Module):
    """A 2-D segmentation network with its classes, input size and preprocessing.

    Args:
        net: maps ``(N, 1, S, S)`` in ``[-1, 1]`` to ``(N, K, S, S)`` logits.
        class_names: ``K`` names, index = label value, ``class_names[0]`` the background.
        image_size: ``S``, the side the network sees.
        arch: preset name (informational).
    """

    def __init__(self, net: nn.Module, class_names: Sequence[str], image_size: int, arch: str = "") -> None:
        super().__init__()
        if len(class_names) < 2:
            raise BadInput("a segmenter needs the background and at least one class")
        self.net, self.class_names, self.image_size, self.arch = net, list(class_names), int(image_size), arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images (any sizes) → float ``(N, 1, S, S)`` in ``[-1, 1]``."""
        out = []
        for img in images:
            x = torch.from_numpy(to_grayscale(img))[None, None]
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                                  align_corners=False)
            out.append(x[0])
        return torch.stack(out) / 127.5 - 1.0

    def targets(self, masks: np.ndarray) -> torch.Tensor:
        """uint8 label maps ``(N, H, W)`` → int64 ``(N, S, S)``, resized with nearest neighbour."""
        y = torch.as_tensor(np.asarray(masks), dtype=torch.float32)[:, None]
        if y.shape[-2:] != (self.image_size, self.image_size):
            y = F.interpolate(y, size=(self.image_size, self.image_size), mode="nearest")
        return y[:, 0].long()

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy plus soft Dice (MONAI's ``DiceCELoss``, softmax, background included)."""
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True)(logits, target[:, None])

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 label maps, one per image at the image's own ``(H, W)``.

        Args:
            images: uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` images of any sizes.
        """
        self.eval()
        device = next(self.parameters()).device
        out: list[np.ndarray] = []
        for start in range(0, len(images), _CHUNK):
            part = list(images[start : start + _CHUNK])
            logits = self(self.preprocess(part).to(device))
            for img, lg in zip(part, logits):
                h, w = np.asarray(img).shape[:2]
                if (h, w) != tuple(lg.shape[-2:]):
                    lg = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                out.append(lg.argmax(0).to(torch.uint8).cpu().numpy())
        return out
