"""Statistics for "does synthetic data help": repeat-seed intervals and a paired permutation test.

Why: the knee paper's whole augmentation effect (71.21 % → 75.76 % test accuracy, Table 5) is
6 of 132 test images, and one image is 0.76 pp; a single run per cell cannot tell that from
seed noise. Two questions, two tools (the radiograph paper's: bootstrap with 10,000 draws,
permutation test with 1,000):

- :func:`mean_ci` — how much does a cell's metric move across training seeds? Percentile
  bootstrap CI of the mean over the R repeat values (R = 5 seeds by default in a sweep).
- :func:`paired_permutation_test` — on one fixed test set, is model A's metric different
  from model B's beyond what the test images allow? Paired by image: under H0 the two models
  are exchangeable on each image, so each permutation swaps the two models' probability rows
  image by image (``scipy.stats.permutation_test``, ``permutation_type="samples"``).

The first speaks to training variance, the second to test-set variance; report both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import bootstrap, permutation_test

from training.evaluate.classification import check_inputs, get_metric
from infra.errors import BadInput

__all__ = ["MeanCI", "PairedTest", "mean_ci", "paired_permutation_test", "paired_score_test"]


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int  # values behind it, after dropping NaN
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> MeanCI:
    """Mean of repeat values (one per training seed) with a percentile bootstrap interval.

    With n = 1, or all values equal, the interval is the point (low = high = mean): there is no
    spread to resample, and saying so beats scipy's NaN and warning. With R = 5 seeds the
    percentile interval is narrow-biased (it cannot reach past the extreme values); it shows
    what the seeds did, not a population guarantee.

    Args:
        values: one metric value per repeat; NaN (e.g. an AUC undefined on a one-class test
            set) is dropped, and ``n`` counts what is left.
        confidence: two-sided level of the interval.
        n_resamples: bootstrap draws (the radiograph paper's 10,000).
        seed: the draws' seed, so a report reproduces to the digit.
    """
    if not 0 < confidence < 1:
        raise BadInput(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise BadInput(f"n_resamples must be >= 1, got {n_resamples}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(np.mean(x))
    if x.size == 1 or np.all(x == x[0]):
        return MeanCI(mean, mean, mean, int(x.size), confidence)
    res = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                    vectorized=True, rng=seed)
    return MeanCI(mean, float(res.confidence_interval.low), float(res.confidence_interval.high), int(x.size),
                  confidence)


@dataclass(frozen=True)
class PairedTest:
    metric: str
    statistic: float  # metric(candidate) - metric(baseline)
    p_value: float  # two-sided
    n_resamples: int  # permutations evaluated; 2**n when that is <= the number asked (exact test)
    n: int  # test images

    def as_dict(self) -> dict:
        return asdict(self)


def paired_permutation_test(y_true: Sequence[int], proba_candidate: np.ndarray, proba_baseline: np.ndarray,
                            metric: str = "accuracy", n_resamples: int = 1000, seed: int = 0) -> PairedTest:
    """Two-sided paired permutation test of ``metric(candidate) - metric(baseline)`` on one test set.

    Both models must have scored the same images in the same order. scipy's ``"samples"``
    permutation swaps values *within* each pair; the data handed to it are image indices into
    the stacked ``[candidate; baseline]`` rows (``i`` and ``i + N``), so a swap exchanges the two
    models' whole probability rows for image ``i`` and the statistic is any registered metric,
    not only a per-image mean. When ``n_resamples >= 2**N`` scipy enumerates every swap pattern
    (exact test); otherwise the p-value is ``(count + 1) / (n_resamples + 1)``, never 0.

    Args:
        y_true: ``N`` labels in ``range(K)``, shared by both models.
        proba_candidate: ``(N, K)`` probabilities of the model trained with synthetic images.
        proba_baseline: ``(N, K)`` probabilities of the model it is compared against.
        metric: a key of ``CLASSIFICATION_METRICS`` (classification.py); the statistic's sign is "candidate minus
            baseline", so for ``log_loss`` (lower is better) an improvement is negative.
        n_resamples: random swap patterns (the radiograph paper's 1,000).
        seed: the permutations' seed.
    """
    fn = get_metric(metric).fn
    if n_resamples < 1:
        raise BadInput(f"n_resamples must be >= 1, got {n_resamples}")
    y, cand = check_inputs(y_true, proba_candidate, name="proba_candidate")
    _, base = check_inputs(y, proba_baseline, n_classes=cand.shape[1], name="proba_baseline")
    n = len(y)
    stacked = np.concatenate([cand, base])
    order = np.arange(n)

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if not (np.array_equal(a % n, order) and np.array_equal(b % n, order)):  # guards the pairing
            raise RuntimeError("permutation left image order; scipy's 'samples' semantics changed")
        return fn(y, stacked[a]) - fn(y, stacked[b])

    observed = statistic(order, order + n)
    if not math.isfinite(observed):  # e.g. roc_auc on a one-class test set: nothing to test
        return PairedTest(metric, float(observed), math.nan, 0, n)
    res = permutation_test((order, order + n), statistic, permutation_type="samples", vectorized=False,
                           n_resamples=n_resamples, alternative="two-sided", rng=seed)
    return PairedTest(metric, float(res.statistic), float(res.pvalue), int(len(res.null_distribution)), n)


def paired_score_test(candidate: Sequence[float], baseline: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                      metric: str = "score") -> PairedTest:
    """Two-sided paired permutation test of ``mean(candidate) - mean(baseline)`` for per-unit scores.

    For metrics that are means of per-unit scores (segmentation Dice per image): unit ``i``'s
    two scores are exchangeable under H0, so each permutation swaps them
    (``scipy.stats.permutation_test``, ``permutation_type="samples"``), exactly as
    :func:`paired_permutation_test` swaps probability rows. Exact when ``n_resamples >= 2**N``.

    Args:
        candidate, baseline: ``N`` scores of the same units in the same order.
        n_resamples: random swap patterns.
        seed: the permutations' seed.
        metric: the name reported in :class:`PairedTest`.
    """
    a, b = np.asarray(candidate, np.float64).ravel(), np.asarray(baseline, np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise BadInput(f"candidate ({a.size}) and baseline ({b.size}) must be the same non-empty units")
    if n_resamples < 1:
        raise BadInput(f"n_resamples must be >= 1, got {n_resamples}")
    res = permutation_test((a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                           permutation_type="samples", vectorized=True, n_resamples=n_resamples,
                           alternative="two-sided", rng=seed)
    return PairedTest(metric, float(res.statistic), float(res.pvalue), int(len(res.null_distribution)), int(a.size))
