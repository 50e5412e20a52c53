"""Segmentation metrics: per-class Dice and IoU from MONAI, with 95 % bootstrap confidence intervals.

The scores are MONAI's ``DiceMetric`` and ``MeanIoU`` (Dice = 2|P∩T| / (|P| + |T|),
IoU = |P∩T| / |P∪T|), computed per image and per foreground class on one-hot label maps;
the background (value 0) is not scored.

Empty-class convention (MONAI's ``ignore_empty=False``): a class absent from both the
truth and the prediction of an image scores **1** (the model rightly drew nothing), and a
class absent from the truth but predicted scores **0** (a hallucinated structure). So every
image has a score for every class, false positives on images without a structure count
against the model, and no image drops out of a mean.

Intervals: the mean over images of each class's score, with a 95 % percentile bootstrap
over images (``scipy.stats.bootstrap``, 2000 resamples, seeded); one image gives a
degenerate interval equal to its score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["EMPTY_CLASS_CONVENTION", "bootstrap_ci", "overlay_grid", "per_image_scores", "segmentation_metrics"]

EMPTY_CLASS_CONVENTION = "absent in truth and prediction = 1, absent in truth but predicted = 0 (MONAI ignore_empty=False)"
BOOTSTRAP_RESAMPLES = 2000


def per_image_scores(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Dice and IoU of every image and foreground class.

    Args:
        pred, truth: integer label maps ``(N, H, W)`` with values in ``0 .. n_classes-1``.
        n_classes: number of classes including the background (value 0).

    Returns:
        ``{"dice": (N, n_classes-1), "iou": (N, n_classes-1)}`` float64 arrays, column ``c-1``
        for class ``c``, following the module's empty-class convention.

    Raises:
        ValueError: shapes differ, or a value is outside ``0 .. n_classes-1``.
    """
    import torch
    from monai.metrics import DiceMetric, MeanIoU
    from monai.networks.utils import one_hot

    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must both be (N, H, W)")
    for name, arr in (("prediction", pred), ("truth", truth)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} has values outside 0..{n_classes - 1}")
    if n_classes < 2:
        raise ValueError("n_classes counts the background and at least one class")
    p = one_hot(torch.as_tensor(pred.astype(np.int64))[:, None], n_classes, dim=1, dtype=torch.float64)
    t = one_hot(torch.as_tensor(truth.astype(np.int64))[:, None], n_classes, dim=1, dtype=torch.float64)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t)
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)(p, t)
    return {"dice": dice.double().numpy(), "iou": iou.double().numpy()}


def bootstrap_ci(values: np.ndarray, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (scipy.stats.bootstrap)."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    res = bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, classes: Sequence[str], seed: int = 0) -> dict:
    """Per-class and mean-over-classes Dice and IoU with 95 % bootstrap CIs over images.

    Args:
        pred, truth: label maps ``(N, H, W)``.
        classes: class names, index = value, ``classes[0]`` the background (not scored).
        seed: seeds the bootstrap.

    Returns:
        Flat dict: ``dice/{class}``, ``dice/{class}/ci_low``, ``dice/{class}/ci_high`` (same for
        ``iou``), then ``dice`` and ``iou`` (mean over foreground classes, per image, then over
        images) with their CIs, and ``n_images``.
    """
    scores = per_image_scores(pred, truth, len(classes))
    out: dict[str, float] = {}
    for metric, table in scores.items():
        for c, name in enumerate(classes[1:]):
            low, high = bootstrap_ci(table[:, c], seed)
            out[f"{metric}/{name}"] = float(table[:, c].mean())
            out[f"{metric}/{name}/ci_low"], out[f"{metric}/{name}/ci_high"] = low, high
        mean = table.mean(axis=1)
        low, high = bootstrap_ci(mean, seed)
        out[metric], out[f"{metric}/ci_low"], out[f"{metric}/ci_high"] = float(mean.mean()), low, high
    out["n_images"] = float(len(pred))
    return out


def overlay_grid(images: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, per_row: int = 4,
                 scale: int = 3) -> np.ndarray:
    """uint8 RGB grid for judging masks by eye: each image in gray, truth outlines green, prediction red.

    Args:
        images: uint8 ``(N, H, W)``; truth / pred: label maps ``(N, H, W)`` (truth may be None).
        per_row: tiles per row; scale: nearest-neighbour magnification (small images).
    """
    from skimage.segmentation import find_boundaries
    from skimage.util import montage

    tiles = []
    for i, img in enumerate(np.asarray(images)):
        rgb = np.repeat(np.asarray(img, np.uint8)[..., None], 3, axis=-1)
        rgb = rgb.repeat(scale, 0).repeat(scale, 1)
        if truth is not None:
            rgb[find_boundaries(np.asarray(truth[i]).repeat(scale, 0).repeat(scale, 1), mode="inner")] = (0, 220, 0)
        rgb[find_boundaries(np.asarray(pred[i]).repeat(scale, 0).repeat(scale, 1), mode="inner")] = (230, 30, 30)
        tiles.append(rgb)
    if not tiles:
        return np.zeros((8, 8, 3), np.uint8)
    cols = min(per_row, len(tiles))
    rows = -(-len(tiles) // cols)
    return montage(np.stack(tiles), grid_shape=(rows, cols), padding_width=2, fill=(0, 0, 0),
                   channel_axis=-1).astype(np.uint8)
