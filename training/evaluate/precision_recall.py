"""Improved precision and recall (Kynkäänniemi et al. 2019) in Inception feature space.

FID mixes fidelity and coverage into one number; a generator that collapses onto a few good
images and one that covers everything blurrily can score alike. Precision = the fraction of
generated samples inside the real manifold; recall = the fraction of real samples inside the
generated manifold. A manifold is the union of balls around each sample whose radius is the
distance to its k-th nearest neighbour within its own set (k = 3 as in the paper; the sample
itself does not count as a neighbour).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors
from infra.errors import BadInput

__all__ = ["PrecisionRecall", "precision_recall"]


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int
    n_real: int
    n_fake: int

    def as_dict(self) -> dict:
        return asdict(self)


def _radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance from each sample to its k-th nearest *other* sample in the same set."""
    dist, _ = NearestNeighbors(n_neighbors=k).fit(feats).kneighbors()  # no X: self excluded
    return dist[:, -1]


def _coverage(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Fraction of ``queries`` within ``radii[j]`` of some ``centres[j]`` (chunked: O(chunk x n) memory)."""
    inside = [
        (block <= radii[None, :]).any(axis=1)
        for block in pairwise_distances_chunked(queries, centres, metric="euclidean")
    ]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> PrecisionRecall:
    """Improved precision/recall of two feature sets ``(m, d)`` and ``(n, d)``."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise BadInput(f"need two (N, d) feature sets of one d, got {real.shape} and {fake.shape}")
    if k < 1 or min(len(real), len(fake)) <= k:
        raise BadInput(f"k must be >= 1 and below each set's size, got k={k} for {len(real)} and {len(fake)}")
    return PrecisionRecall(
        precision=_coverage(fake, real, _radii(real, k)),
        recall=_coverage(real, fake, _radii(fake, k)),
        k=k, n_real=len(real), n_fake=len(fake),
    )
