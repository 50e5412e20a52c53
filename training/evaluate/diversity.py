"""Diversity (MS-SSIM of random same-class pairs) and the PGGAN paper's AM and Mode scores.

MS-SSIM diversity follows the radiograph paper (Han et al. 2020): the mean MS-SSIM over
random pairs of images of one class; lower means more diverse (their pneumonia class: 0.18 ±
0.09 synthetic vs 0.24 ± 0.12 real). Compare a synthetic set with the real set at one image
size and one number of scales, because both change the value.

Pair sampling [choice]: draw an image uniformly among those whose class has at least two
images, then a different image of its class uniformly; seeded. So classes weigh in by size.

AM and Mode scores are exactly Eqs. 4 and 5 of Waqas et al. 2022 (seed paper 001), with a
domain classifier the caller passes in (the paper trains one on real slices; ImageNet
Inception means little for radiographs):

    AM   = KL(p(y*) ‖ p(y)) + E_x H(y|x)                        (lower is better)
    Mode = exp(E_x KL(p(y|x) ‖ p(y)) − KL(p(y*) ‖ p(y)))        (higher is better)

p(y|x) is the classifier's class distribution for generated image x, p(y) = E_x p(y|x) its
marginal over the generated set, p(y*) the empirical label distribution of the training
data. Natural logarithms. Note Eq. 5's second KL is KL(p(y*)‖p(y)) as printed, whereas Che
et al.'s original Mode score uses KL(p(y)‖p(y*)) and p(y*) in the first term; we follow the
paper the platform reproduces. A training class the generator never produces makes
KL(p(y*)‖p(y)) infinite, and the scores say so (inf / 0.0) instead of hiding it behind an
epsilon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.special import entr, rel_entr

from training.evaluate.ssim import ms_ssim, ms_ssim_levels
from infra.errors import BadInput

__all__ = [
    "ClassifierScores",
    "Diversity",
    "am_score",
    "classifier_scores",
    "label_distribution",
    "mode_score",
    "ms_ssim_diversity",
    "same_class_pairs",
]

#: ``classifier(uint8 images (B, H, W)) -> class probabilities (B, C)``
Classifier = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Diversity:
    mean: float
    std: float
    n_pairs: int
    levels: int  # MS-SSIM scales used (depends on image size)
    per_class: dict[int, dict[str, float]] = field(default_factory=dict)  # label -> mean, std, n_pairs

    def as_dict(self) -> dict:
        return asdict(self)


def same_class_pairs(labels: Sequence[int], n_pairs: int, seed: int = 0) -> np.ndarray:
    """``(n_pairs, 2)`` indices of distinct images of one class (see the module's pair rule)."""
    labels = np.asarray(labels)
    counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
    eligible = np.flatnonzero([counts[c] >= 2 for c in labels])
    if len(eligible) == 0:
        raise BadInput("MS-SSIM diversity needs a class with at least two images")
    rng = np.random.default_rng(seed)
    first = rng.choice(eligible, size=n_pairs)
    pairs = np.empty((n_pairs, 2), dtype=np.int64)
    for row, i in enumerate(first):
        others = np.flatnonzero(labels == labels[i])
        others = others[others != i]
        pairs[row] = i, others[rng.integers(len(others))]
    return pairs


def ms_ssim_diversity(
    images: np.ndarray,
    labels: Sequence[int] | None = None,
    n_pairs: int = 1000,
    seed: int = 0,
    batch: int = 256,
) -> Diversity:
    """Mean ± std MS-SSIM of ``n_pairs`` random same-class pairs of uint8 (N, H, W) images."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise BadInput(f"expected grayscale uint8 (N, H, W) images, got shape {images.shape}")
    labels = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels)
    if len(labels) != len(images):
        raise BadInput(f"{len(labels)} labels for {len(images)} images")
    if n_pairs < 1:
        raise BadInput(f"n_pairs must be >= 1, got {n_pairs}")
    pairs = same_class_pairs(labels, n_pairs, seed)
    levels = ms_ssim_levels(*images.shape[1:])
    values = np.concatenate([
        ms_ssim(images[pairs[s : s + batch, 0]], images[pairs[s : s + batch, 1]], levels)
        for s in range(0, n_pairs, batch)
    ])
    pair_labels = labels[pairs[:, 0]]
    per_class = {
        int(c): {"mean": float(values[pair_labels == c].mean()), "std": float(values[pair_labels == c].std()),
                 "n_pairs": int((pair_labels == c).sum())}
        for c in np.unique(pair_labels)
    }
    return Diversity(float(values.mean()), float(values.std()), n_pairs, levels, per_class)


# -- AM and Mode scores (paper 001, Eqs. 4-5) ---------------------------------------------------


def label_distribution(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """p(y*): the empirical label distribution of the training data."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise BadInput(f"training labels must be in [0, {num_classes}), got {np.unique(labels)[:10]}")
    return np.bincount(labels, minlength=num_classes) / labels.size


def _check_probs(probs: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, prior = np.asarray(probs, np.float64), np.asarray(prior, np.float64)
    if probs.ndim != 2 or prior.shape != (probs.shape[1],):
        raise BadInput(f"need p(y|x) as (N, C) and p(y*) as (C,), got {probs.shape} and {prior.shape}")
    for name, p in (("p(y|x) rows", probs), ("p(y*)", prior)):
        if (p < 0).any() or not np.allclose(p.sum(-1), 1, atol=1e-5):
            raise BadInput(f"{name} must be probability distributions (non-negative, summing to 1)")
    return probs, prior


def am_score(probs: np.ndarray, prior: np.ndarray) -> float:
    """Eq. 4: KL(p(y*)‖p(y)) + E_x H(y|x). ``probs`` = p(y|x) of generated images, ``prior`` = p(y*)."""
    probs, prior = _check_probs(probs, prior)
    marginal = probs.mean(0)
    return float(rel_entr(prior, marginal).sum() + entr(probs).sum(1).mean())


def mode_score(probs: np.ndarray, prior: np.ndarray) -> float:
    """Eq. 5: exp(E_x KL(p(y|x)‖p(y)) − KL(p(y*)‖p(y)))."""
    probs, prior = _check_probs(probs, prior)
    marginal = probs.mean(0)
    return float(np.exp(rel_entr(probs, marginal).sum(1).mean() - rel_entr(prior, marginal).sum()))


@dataclass(frozen=True)
class ClassifierScores:
    am: float
    mode: float
    n: int
    num_classes: int

    def as_dict(self) -> dict:
        return asdict(self)


def classifier_scores(
    images: np.ndarray,
    classifier: Classifier,
    train_labels: Sequence[int],
    num_classes: int,
    batch_size: int = 64,
) -> ClassifierScores:
    """AM and Mode scores of generated uint8 images under the caller's domain classifier."""
    if len(images) == 0:
        raise BadInput("no images")
    probs = np.concatenate([
        np.asarray(classifier(images[s : s + batch_size]), np.float64) for s in range(0, len(images), batch_size)
    ])
    prior = label_distribution(train_labels, num_classes)
    return ClassifierScores(am_score(probs, prior), mode_score(probs, prior), len(images), num_classes)
