"""KID (unbiased MMD², bootstrap CI) and improved precision/recall on feature sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import polynomial_kernel as sk_polynomial_kernel

from training.evaluate.kid import kid, mmd2_unbiased, polynomial_kernel
from training.evaluate.precision_recall import precision_recall


def test_kernel_is_kids_cubic_polynomial() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 16)), rng.standard_normal((7, 16))
    np.testing.assert_allclose(polynomial_kernel(x, y), sk_polynomial_kernel(x, y, degree=3, gamma=1 / 16, coef0=1))


def test_point_estimate_is_the_u_statistic() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((9, 4)) + 0.2
    k = lambda a, b: (a @ b / 4 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(a, b) for a in x for b in y) / (6 * 9)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert kid(x, y, bootstrap=0).kid == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_unbiased_on_two_samples_of_one_distribution() -> None:
    """Across 200 independent pairs of samples from one distribution the estimates average to
    0 within 4 standard errors, while the biased (V-statistic) estimate is clearly positive."""
    rng = np.random.default_rng(2)
    mix = rng.standard_normal((32, 32)) / 6
    estimates, biased = [], []
    for _ in range(200):
        x, y = (np.abs(rng.standard_normal((40, 32)) @ mix) for _ in range(2))
        estimates.append(mmd2_unbiased(x, y))
        kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    mean, se = np.mean(estimates), np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean) < 4 * se, (mean, se)
    assert np.mean(biased) > 10 * se


def test_ci_covers_zero_for_one_distribution_and_excludes_it_for_two() -> None:
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((64, 64)) / 8
    x, y = (np.abs(rng.standard_normal((250, 64)) @ mix) for _ in range(2))
    same = kid(x, y, bootstrap=500, seed=0)
    assert same.ci_low < 0 < same.ci_high
    assert same.ci_low <= same.kid <= same.ci_high
    shifted = kid(x, y + 0.3, bootstrap=500, seed=0)
    assert shifted.ci_low > 0 and shifted.kid > same.kid
    assert (same.n_real, same.n_fake, same.dims, same.bootstrap) == (250, 250, 64, 500)
    assert kid(x, y, bootstrap=500, seed=0) == same  # seeded


def test_kid_rejects_bad_input() -> None:
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="feature sets"):
        kid(x, np.zeros((5, 4)))
    with pytest.raises(ValueError, match=">= 2 samples"):
        kid(x, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="bootstrap"):
        kid(x, x, bootstrap=1)


def test_precision_recall_extremes() -> None:
    rng = np.random.default_rng(4)
    real = rng.standard_normal((200, 8))
    same = precision_recall(real, real.copy())
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = precision_recall(real, rng.standard_normal((150, 8)) + 100)
    assert (far.precision, far.recall) == (0.0, 0.0)


def test_precision_recall_separates_fidelity_from_coverage() -> None:
    """A generator that collapses onto one corner of the real data: high precision, low recall."""
    rng = np.random.default_rng(5)
    real = rng.standard_normal((600, 4))
    collapsed = real[real[:, 0] > 1.0][:, :] + rng.normal(0, 0.01, (int((real[:, 0] > 1.0).sum()), 4))
    result = precision_recall(real, collapsed, k=3)
    assert result.precision > 0.9 and result.recall < 0.4
    assert (result.k, result.n_real, result.n_fake) == (3, 600, len(collapsed))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real, collapsed[:3], k=3)
