"""Small layer factories shared by the GAN architectures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SamePad2d(nn.Module):
    """Keras/TensorFlow ``padding="same"`` for a strided convolution.

    PyTorch's ``padding="same"`` only supports stride 1. TF pads ``max((out-1)*s + k - in, 0)``
    pixels with the odd one on the right/bottom; the knee paper's critic relies on exactly
    these output sizes (214 → 107 → 54 → 27 → 14 → 7).

    Args:
        kernel_size: convolution kernel size.
        stride: convolution stride.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def _pads(self, size: int) -> tuple[int, int]:
        out = math.ceil(size / self.stride)
        total = max((out - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        return F.pad(x, (left, right, top, bottom))


def same_size(size: int, stride: int, n: int) -> int:
    """Spatial size after ``n`` 'same'-padded convolutions of ``stride``."""
    for _ in range(n):
        size = math.ceil(size / stride)
    return size


def conv_same(in_ch: int, out_ch: int, kernel_size: int, stride: int, bias: bool = True) -> nn.Sequential:
    """A convolution with TF 'same' padding."""
    return nn.Sequential(SamePad2d(kernel_size, stride), nn.Conv2d(in_ch, out_ch, kernel_size, stride, bias=bias))


class CenterCrop(nn.Module):
    """Crop ``pixels`` from every border (Keras ``Cropping2D``)."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.pixels = pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pixels
        return x[..., p:-p, p:-p] if p else x


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
