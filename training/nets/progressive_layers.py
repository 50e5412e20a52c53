"""Layers of the progressive GANs (Karras et al. 2018, PGGAN; Zhang et al. 2019, SAGAN).

- :class:`EqualizedConv2d` / :class:`EqualizedLinear`: *equalised learning rate* (PGGAN §4.1).
  Weights are stored N(0, 1) and scaled at run time by the He constant ``gain / √fan_in``, so
  Adam's per-parameter step size means the same relative change for every layer.
- :class:`PixelNorm`: ``b = a / √(mean_c(a²) + ε)`` per pixel over channels, ε = 1e-8 (PGGAN §4.2).
- :class:`MinibatchStddev`: the feature-averaged std over groups of 4 appended as one channel
  (PGGAN §3).
- :class:`SelfAttention`: SAGAN's block (Zhang et al. 2019, §3, Eq. 1-3): 1×1 convolutions f, g,
  h; β = softmax(fᵀg) over positions; ``y = γ·o + x`` with γ a learned scalar starting at 0.
- :func:`conv` / :func:`linear`: the layer of a normalisation choice: ``eq`` equalised LR,
  ``sn`` a plain layer under ``torch.nn.utils.parametrizations.spectral_norm`` (Miyato et al.
  2018; one power iteration per training forward). Spectral norm already fixes each layer's
  scale, so an SN layer is not also equalised.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from infra.errors import BadInput

Norm = Literal["pn", "sn", "none"]


class EqualizedConv2d(nn.Module):
    """Conv2d with N(0, 1) weights scaled by ``gain / √(in·k·k)`` at run time; zero bias.

    Args:
        in_ch, out_ch: channels.
        kernel_size: square kernel; "same" padding (k // 2).
        gain: He gain (√2 before a LeakyReLU; 1 for the linear toRGB/output layers, PGGAN's code).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = gain / math.sqrt(in_ch * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """Linear layer with N(0, 1) weights scaled by ``gain / √in`` at run time; zero bias."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def conv(in_ch: int, out_ch: int, kernel_size: int, layer: Literal["eq", "sn"], gain: float = math.sqrt(2)) -> nn.Module:
    """A "same"-padded convolution: equalised (``eq``) or spectrally normalised (``sn``)."""
    if layer == "eq":
        return EqualizedConv2d(in_ch, out_ch, kernel_size, gain)
    if layer == "sn":
        return spectral_norm(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2))
    raise BadInput(f"layer must be eq or sn, got {layer!r}")


def linear(in_features: int, out_features: int, layer: Literal["eq", "sn"], gain: float = math.sqrt(2)) -> nn.Module:
    """A dense layer: equalised (``eq``) or spectrally normalised (``sn``)."""
    if layer == "eq":
        return EqualizedLinear(in_features, out_features, gain)
    if layer == "sn":
        return spectral_norm(nn.Linear(in_features, out_features))
    raise BadInput(f"layer must be eq or sn, got {layer!r}")


class PixelNorm(nn.Module):
    """Per-pixel feature vector normalisation over channels (PGGAN Eq. in §4.2), ε = 1e-8.

    Input (N, C, ...); the output has unit mean square over C at every position.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class MinibatchStddev(nn.Module):
    """Append the mean (over features and pixels) std over groups of ``group_size`` samples.

    PGGAN §3 / its ``minibatch_stddev_layer``: groups of 4 (the largest divisor of the batch
    not above it when the batch is not a multiple), one extra channel. (N, C, H, W) → (N, C+1, H, W).
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        y = x.reshape(g, n // g, c, h, w).float()
        y = (y.var(dim=0, unbiased=False) + self.eps).sqrt()  # (n/g, C, H, W)
        y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # (n/g,)
        y = y.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, y], dim=1)


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019, Eq. 1-3): ``y = γ·o + x``, γ starts at 0.

    f(x) = W_f x and g(x) = W_g x (C → C/8), h(x) = W_h x (C → C), all 1×1 convolutions;
    β_{j,i} = softmax_i(f(x_i)ᵀ g(x_j)) over the N = H·W positions, o_j = Σ_i β_{j,i} h(x_i).
    Written with ``scaled_dot_product_attention`` (scale 1, SAGAN has no 1/√d), which picks a
    memory-efficient kernel: at 128×128 the N×N map would be 1 GiB per image in float32.

    Args:
        channels: C (≥ 8).
        layer: ``eq`` or ``sn`` for the three 1×1 convolutions (SAGAN used SN in G and D).
    """

    def __init__(self, channels: int, layer: Literal["eq", "sn"] = "eq") -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.f = conv(channels, inner, 1, layer, gain=1.0)
        self.g = conv(channels, inner, 1, layer, gain=1.0)
        self.h = conv(channels, channels, 1, layer, gain=1.0)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        key = self.f(x).flatten(2).transpose(1, 2)  # (N, HW, C/8): f(x_i)
        query = self.g(x).flatten(2).transpose(1, 2)  # g(x_j)
        value = self.h(x).flatten(2).transpose(1, 2)  # h(x_i)
        o = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (N, HW, C)
        return self.gamma * o.transpose(1, 2).reshape(n, c, hh, ww) + x
