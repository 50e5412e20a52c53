"""Pooled Inception statistics of a federation, merged exactly from the sites' (n, μ, Σ).

Each site computes the Inception mean and covariance of its own images (pytorch-fid's rule:
``np.mean``, ``np.cov`` with ddof = 1, in float64) and sends only those. The server merges
them into the statistics of the union of all sites' images, which no single process ever holds.

The merge is the pairwise update of Chan, Golub & LeVeque, "Updating formulae and a pairwise
algorithm for computing sample variances" (COMPSTAT 1982; Stanford CS report STAN-CS-79-773,
1979), eq. 2.1, applied to the co-moment matrix M = (n − 1)·Σ instead of a variance:

    n = n_a + n_b,   δ = μ_b − μ_a,
    μ = μ_a + δ·n_b / n,
    M = M_a + M_b + δ δᵀ · n_a n_b / n,   Σ = M / (n − 1).

Exact in real arithmetic; in float64 it agrees with ``np.cov`` of the pooled features to
~1e-15 relative (tested against the pooled computation to 1e-10). No maintained library
exposes this merge for full covariance matrices (scikit-learn's incremental mean/variance is
private and diagonal only), so the formula lives here, with its source.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce

import numpy as np

from infra.errors import BadInput


@dataclass(frozen=True, eq=False)
class GaussianStats:
    """Sample count, mean (d,) and unbiased covariance (d, d) of one site's features, float64."""

    n: int
    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        """Statistics of (n, d) features by pytorch-fid's rule (training.evaluate.fid.statistics)."""
        from training.evaluate.fid import statistics

        mu, sigma = statistics(np.asarray(features, dtype=np.float64))
        return cls(len(features), mu, sigma)

    def __post_init__(self) -> None:
        if self.n < 2:
            raise BadInput(f"a site needs at least 2 images for a covariance, got n={self.n}")
        if self.mu.ndim != 1 or self.sigma.shape != (len(self.mu), len(self.mu)):
            raise BadInput(f"statistics shapes disagree: mu {self.mu.shape}, sigma {self.sigma.shape}")


def merge_pair(a: GaussianStats, b: GaussianStats) -> GaussianStats:
    """Statistics of the union of two disjoint samples (Chan, Golub & LeVeque, eq. 2.1)."""
    if a.mu.shape != b.mu.shape:
        raise BadInput(f"cannot merge {a.mu.shape[0]}-d and {b.mu.shape[0]}-d statistics")
    n = a.n + b.n
    delta = b.mu - a.mu
    mu = a.mu + delta * (b.n / n)
    comoment = (a.n - 1) * a.sigma + (b.n - 1) * b.sigma + np.outer(delta, delta) * (a.n * b.n / n)
    return GaussianStats(n, mu, comoment / (n - 1))


def merge(parts: Iterable[GaussianStats]) -> GaussianStats:
    """Statistics of the union of the sites' samples (a left fold of :func:`merge_pair`)."""
    parts = list(parts)
    if not parts:
        raise BadInput("no site statistics to merge")
    return reduce(merge_pair, parts)
