"""SSIM and MS-SSIM on uint8 images, batched in torch.

SSIM is Wang et al. 2004 exactly as ``skimage.metrics.structural_similarity(…,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``: an 11-tap
Gaussian window (σ 1.5, truncated at 3.5σ and renormalised), K1 = 0.01, K2 = 0.03, the map
averaged over the positions where the whole window fits (skimage filters the padded image and
crops the same border, so the values are identical; tested). skimage compares one pair at a
time; the memorization audit compares every synthetic image with every training image, so the
same formula runs here on batches.

MS-SSIM is Wang et al. 2003 as in ``pytorch_msssim.ms_ssim`` (which matches TensorFlow's
``tf.image.ssim_multiscale``): contrast-structure terms at the first L-1 scales, the full SSIM
at the last, 2x2 average pooling between scales, weights (0.0448, 0.2856, 0.3001, 0.2363,
0.1333). That library hard-codes five scales and so refuses images under 161 px; the 64-px
phantom fits three. Here L is the largest number of scales (≤ 5) for which the library's own
size condition holds, ``min(H, W) > (win - 1) · 2^(L-1)``, and below five the first L weights
are renormalised to sum to 1 (the usual truncation); the result reports L. At L = 5 the values
equal ``pytorch_msssim.ms_ssim`` (tested).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from infra.errors import BadInput

__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim", "ms_ssim_levels", "ssim", "ssim_matrix"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN_SIZE, WIN_SIGMA, K1, K2, DATA_RANGE = 11, 1.5, 0.01, 0.03, 255.0
C1, C2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2


def _window(dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(WIN_SIZE, dtype=torch.float64) - WIN_SIZE // 2
    g = torch.exp(-(x**2) / (2 * WIN_SIGMA**2))
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of (N, 1, H, W)."""
    x = F.conv2d(x, win.view(1, 1, 1, -1))
    return F.conv2d(x, win.view(1, 1, -1, 1))


def _as_gray(images: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [0, 255]; RGB is refused (radiographs are gray)."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise TypeError(f"SSIM expects uint8 images (data range 255), got {x.dtype}")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise BadInput(f"SSIM expects grayscale (N, H, W) images, got shape {tuple(x.shape)}")
    if min(x.shape[1:]) < WIN_SIZE:
        raise BadInput(f"SSIM needs images of at least {WIN_SIZE}x{WIN_SIZE} px, got {tuple(x.shape[1:])}")
    return x.unsqueeze(1).to(dtype)


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and contrast-structure term of float (N, 1, H, W) pairs."""
    mu_x, mu_y = _blur(x, win), _blur(y, win)
    var_x = _blur(x * x, win) - mu_x**2
    var_y = _blur(y * y, win) - mu_y**2
    cov = _blur(x * y, win) - mu_x * mu_y
    cs = (2 * cov + C2) / (var_x + var_y + C2)
    s = (2 * mu_x * mu_y + C1) / (mu_x**2 + mu_y**2 + C1) * cs
    return s.flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of image pairs ``a[i]``, ``b[i]`` (uint8, same shape) as float64 (N,)."""
    x, y = _as_gray(a, torch.float64), _as_gray(b, torch.float64)
    if x.shape != y.shape:
        raise BadInput(f"SSIM pairs must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return _ssim_cs(x, y, _window(torch.float64))[0].numpy()


def ssim_matrix(a: np.ndarray, b: np.ndarray, max_elements: int = 2**25) -> np.ndarray:
    """SSIM of every ``a[i]`` against every ``b[j]``: float32 (len(a), len(b)).

    Float32 and chunked so that at most ``max_elements`` pixels are in flight (~0.5 GB of
    temporaries); the statistics of ``b`` are filtered once, only the cross term per chunk.
    """
    x, y = _as_gray(a, torch.float32), _as_gray(b, torch.float32)
    if x.shape[1:] != y.shape[1:]:
        raise BadInput(f"SSIM needs one image size, got {tuple(x.shape[2:])} and {tuple(y.shape[2:])}")
    win = _window(torch.float32)
    mu_y = _blur(y, win)  # (Nb, 1, h, w)
    var_y = _blur(y * y, win) - mu_y**2
    out = torch.empty(len(x), len(y))
    step = max(1, max_elements // (len(y) * y.shape[2] * y.shape[3]))
    with torch.inference_mode():
        for start in range(0, len(x), step):
            xs = x[start : start + step]  # (c, 1, H, W)
            mu_x = _blur(xs, win)
            var_x = _blur(xs * xs, win) - mu_x**2
            prod = (xs.unsqueeze(1) * y.unsqueeze(0)).flatten(0, 1)  # (c*Nb, 1, H, W)
            cov = _blur(prod, win).view(len(xs), len(y), *mu_y.shape[2:]) - mu_x * mu_y.squeeze(1)
            # (c, 1, h, w) statistics of the chunk broadcast against (Nb, h, w) ones of b
            lum = (2 * mu_x * mu_y.squeeze(1) + C1) / (mu_x**2 + mu_y.squeeze(1) ** 2 + C1)
            cs = (2 * cov + C2) / (var_x + var_y.squeeze(1) + C2)
            out[start : start + len(xs)] = (lum * cs).flatten(2).mean(2)
    return out.numpy()


def ms_ssim_levels(height: int, width: int) -> int:
    """Scales MS-SSIM can use at this size (pytorch_msssim's condition, generalised)."""
    side = min(height, width)
    levels = max((n for n in range(1, len(MS_SSIM_WEIGHTS) + 1) if side > (WIN_SIZE - 1) * 2 ** (n - 1)), default=0)
    if levels == 0:
        raise BadInput(f"MS-SSIM needs images larger than {WIN_SIZE - 1} px on each side, got {height}x{width}")
    return levels


def ms_ssim(a: np.ndarray, b: np.ndarray, levels: int | None = None) -> np.ndarray:
    """MS-SSIM of image pairs ``a[i]``, ``b[i]`` (uint8, same shape) as float64 (N,)."""
    x, y = _as_gray(a, torch.float64), _as_gray(b, torch.float64)
    if x.shape != y.shape:
        raise BadInput(f"MS-SSIM pairs must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    fit = ms_ssim_levels(*x.shape[2:])
    levels = fit if levels is None else levels
    if not 1 <= levels <= fit:
        raise BadInput(f"{x.shape[2]}x{x.shape[3]} images allow 1..{fit} MS-SSIM scales, got {levels}")
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=torch.float64)
    if levels < len(MS_SSIM_WEIGHTS):  # the published five sum to 1.0001: keep them as published
        weights = weights / weights.sum()
    win = _window(torch.float64)
    terms = []
    for level in range(levels):
        s, cs = _ssim_cs(x, y, win)
        if level < levels - 1:
            terms.append(torch.relu(cs))
            padding = [d % 2 for d in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=padding), F.avg_pool2d(y, 2, padding=padding)
    terms.append(torch.relu(s))
    return torch.prod(torch.stack(terms) ** weights.view(-1, 1), dim=0).numpy()
