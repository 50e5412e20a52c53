"""Classifier metrics (wiring to scikit-learn), repeat-seed CIs and the paired permutation test; no stack."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy.stats import bootstrap
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from training.evaluate.classification import (
    CLASSIFICATION_METRICS,
    classification_metrics,
    confusion_figure,
    metric_value,
    predicted_labels,
    sanitize_metric_name,
)
from training.evaluate.compare import mean_ci, paired_permutation_test

Y2 = np.array([0, 0, 0, 1, 1, 1, 1, 0])
P2 = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.55, 0.45], [0.1, 0.9], [0.4, 0.6], [0.8, 0.2]])
Y3 = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
P3 = np.array([
    [0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3], [0.1, 0.8, 0.1],
    [0.5, 0.1, 0.4], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6], [0.4, 0.35, 0.25],
])


def _expected(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    k, pred = p.shape[1], p.argmax(1)
    auc = roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr", labels=range(k))
    return {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "kappa": cohen_kappa_score(y, pred, labels=range(k)),
        "roc_auc": auc,
        "log_loss": log_loss(y, p, labels=range(k)),
        "f1_macro": f1_score(y, pred, labels=range(k), average="macro", zero_division=0),
    }


@pytest.mark.parametrize(("y", "p", "names"), [(Y2, P2, ["healthy", "fracture"]), (Y3, P3, ["KL0", "KL1", "KL2"])])
def test_metrics_equal_sklearn(y: np.ndarray, p: np.ndarray, names: list[str]) -> None:
    out = classification_metrics(y, p, names)
    expected = _expected(y, p)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-12), key
        assert metric_value(key, y, p) == pytest.approx(value, rel=1e-12), key
    precision, recall, f1, support = precision_recall_fscore_support(y, p.argmax(1), labels=range(len(names)),
                                                                     zero_division=0)
    for i, name in enumerate(names):
        assert out[f"precision/{name}"] == pytest.approx(precision[i])
        assert out[f"recall/{name}"] == pytest.approx(recall[i])
        assert out[f"f1/{name}"] == pytest.approx(f1[i])
        assert out[f"support/{name}"] == support[i]
    assert set(out) == set(expected) | {f"{m}/{n}" for m in ("precision", "recall", "f1", "support") for n in names}
    assert all(type(v) is float for v in out.values())
    assert set(CLASSIFICATION_METRICS) == set(expected)


def test_hand_checked_values() -> None:
    # binary example: argmax is right on 6 of 8 images (rows 2 and 4 wrong)
    assert classification_metrics(Y2, P2, ["a", "b"])["accuracy"] == 0.75
    y = np.array([0, 1, 2, 2, 1, 0])
    perfect = np.eye(3)[y] * 0.97 + 0.01
    out = classification_metrics(y, perfect, ["a", "b", "c"])
    assert out["accuracy"] == out["balanced_accuracy"] == out["kappa"] == out["roc_auc"] == out["f1_macro"] == 1.0
    assert out["log_loss"] == pytest.approx(-math.log(0.98))
    assert predicted_labels(perfect).tolist() == y.tolist()
    assert CLASSIFICATION_METRICS["log_loss"].better == "lower"
    assert CLASSIFICATION_METRICS["accuracy"].better == "higher"


# scikit-learn's own warnings about the undefined cases the next two tests construct on purpose
_NO_PRED_CLASS = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
_ONE_CLASS_AUC = pytest.mark.filterwarnings("ignore:Only one class is present in y_true")


@_NO_PRED_CLASS
@_ONE_CLASS_AUC
def test_single_class_auc_is_nan_not_an_error() -> None:
    y = np.array([1, 1, 1, 1])
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    out = classification_metrics(y, p, ["neg", "pos"])
    assert math.isnan(out["roc_auc"]) and out["accuracy"] == 0.75
    assert out["support/neg"] == 0.0 and out["recall/neg"] == 0.0


@_NO_PRED_CLASS
@_ONE_CLASS_AUC
def test_absent_class_still_gets_per_class_keys() -> None:
    y = np.array([0, 1, 0, 1, 1])  # class 2 never occurs in this small test set
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.6, 0.1], [0.1, 0.7, 0.2]])
    out = classification_metrics(y, p, ["KL0", "KL1", "KL2"])
    for m in ("precision", "recall", "f1", "support"):
        assert f"{m}/KL2" in out
    assert out["support/KL2"] == 0.0 and out["precision/KL2"] == 0.0  # predicted once, wrongly
    assert out["log_loss"] == pytest.approx(log_loss(y, p, labels=range(3)))
    assert math.isnan(out["roc_auc"])  # one-vs-rest macro AUC is undefined for the absent class


def test_class_names_are_sanitized() -> None:
    assert sanitize_metric_name("KL 2/3") == "KL_2_3"
    assert sanitize_metric_name("fx-1.b_c") == "fx-1.b_c"
    out = classification_metrics(Y2, P2, ["no fracture", "fracture/displaced"])
    assert "precision/no_fracture" in out and "support/fracture_displaced" in out
    with pytest.raises(ValueError, match="collide"):
        classification_metrics(Y2, P2, ["a b", "a/b"])


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="unknown classification metric 'auc'.*accuracy"):
        metric_value("auc", Y2, P2)
    with pytest.raises(ValueError, match="3 class names"):
        classification_metrics(Y2, P2, ["a", "b", "c"])
    with pytest.raises(ValueError, match="range"):
        classification_metrics(Y2 + 1, P2, ["a", "b"])
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics(Y2, P2 * 0.5, ["a", "b"])


def test_mean_ci_matches_scipy_and_contains_the_mean() -> None:
    values = [0.7121, 0.7348, 0.7273, 0.7576, 0.7197]
    ci = mean_ci(values, seed=3)
    ref = bootstrap((np.array(values),), np.mean, n_resamples=10_000, confidence_level=0.95, method="percentile",
                    rng=3).confidence_interval
    assert (ci.low, ci.high) == (pytest.approx(ref.low, abs=1e-12), pytest.approx(ref.high, abs=1e-12))
    assert ci.low < ci.mean < ci.high and ci.mean == pytest.approx(np.mean(values))
    assert ci.n == 5 and ci.confidence == 0.95
    assert mean_ci(values, confidence=0.5, seed=3).high < ci.high


def test_mean_ci_degenerate_cases_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = mean_ci([0.75])
        same = mean_ci([0.7, 0.7, 0.7, 0.7, 0.7])
    assert (one.mean, one.low, one.high, one.n) == (0.75, 0.75, 0.75, 1)
    assert (same.low, same.high, same.n) == (0.7, 0.7, 5) and same.mean == pytest.approx(0.7)
    empty = mean_ci([math.nan])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.low, empty.high))


def test_mean_ci_drops_nan() -> None:
    with_nan = mean_ci([0.7, math.nan, 0.8, 0.75])
    assert with_nan == mean_ci([0.7, 0.8, 0.75])
    assert with_nan.n == 3 and with_nan.mean == pytest.approx(0.75)


def test_permutation_identical_models() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 30)
    p = rng.dirichlet(np.ones(3), 30)
    result = paired_permutation_test(y, p, p.copy(), n_resamples=200)
    assert result.statistic == 0.0 and result.p_value == 1.0
    assert (result.metric, result.n, result.n_resamples) == ("accuracy", 30, 200)


def test_permutation_detects_a_clearly_better_candidate() -> None:
    y = np.tile([0, 1], 30)  # 60 images
    candidate = np.eye(2)[y] * 0.8 + 0.1  # right on all
    baseline = candidate.copy()
    baseline[::2] = baseline[::2, ::-1]  # wrong on every other image: right on half
    result = paired_permutation_test(y, candidate, baseline, n_resamples=1000, seed=1)
    assert result.statistic == pytest.approx(0.5)
    assert result.p_value < 0.01
    reverse = paired_permutation_test(y, baseline, candidate, n_resamples=1000, seed=1)
    assert reverse.statistic == pytest.approx(-0.5) and reverse.p_value < 0.01


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_permutation_is_the_exact_paired_swap_test(metric: str) -> None:
    """Against brute force over all 2**8 image-wise swaps, tolerance 1e-9.

    With n_resamples >= 2**8 scipy enumerates every swap pattern (exact test). scipy's two-sided
    p-value is 2·min(one-sided p); the swap null is symmetric (swapping every image negates the
    statistic), so that equals the fraction of patterns with |T| >= |t_observed|, computed here.
    log_loss depends on the whole probability row, so it checks that a swap moves whole rows.
    """
    rng = np.random.default_rng(7)
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    right = np.eye(2)[y]
    candidate = np.where(np.arange(8)[:, None] == 2, 1 - right, right) * 0.7 + 0.15  # wrong on image 2
    baseline = np.where(np.isin(np.arange(8), [0, 3, 4, 6])[:, None], 1 - right, right) * 0.6 + 0.2
    candidate = 0.8 * candidate + 0.2 * rng.dirichlet([1, 1], 8)  # distinct per-image probabilities
    score = {"accuracy": lambda p: accuracy_score(y, p.argmax(1)), "log_loss": lambda p: log_loss(y, p)}[metric]

    observed = score(candidate) - score(baseline)
    null = []
    for swap in itertools.product([False, True], repeat=8):
        s = np.array(swap)[:, None]
        null.append(score(np.where(s, baseline, candidate)) - score(np.where(s, candidate, baseline)))
    exact = np.mean(np.abs(null) >= abs(observed) * (1 - 1e-12))

    result = paired_permutation_test(y, candidate, baseline, metric=metric, n_resamples=1000)
    assert result.n_resamples == 2**8
    assert result.statistic == pytest.approx(observed, abs=1e-12)
    assert result.p_value == pytest.approx(exact, abs=1e-9)
    assert 0 < result.p_value < 1  # a case that is neither trivial end


def test_permutation_shape_errors_name_the_argument() -> None:
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(ValueError, match="proba_candidate has 3 rows but y_true has 4"):
        paired_permutation_test(y, p[:3], p)
    with pytest.raises(ValueError, match="proba_baseline has 3 rows"):
        paired_permutation_test(y, p, p[:3])
    with pytest.raises(ValueError, match="proba_baseline has K=3"):
        paired_permutation_test(y, p, np.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match="y_true has 5"):
        paired_permutation_test([0, 1, 0, 1, 1], p, p)
    with pytest.raises(ValueError, match="unknown classification metric"):
        paired_permutation_test(y, p, p, metric="auc")


def test_confusion_figure_shows_sklearn_counts() -> None:
    fig = confusion_figure(Y3, P3, ["KL0", "KL1", "KL2"], title="real only, seed 0")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    expected = confusion_matrix(Y3, P3.argmax(1), labels=range(3))
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), expected)
    assert ax.get_title() == "real only, seed 0"
    assert any("%" in t.get_text() for t in ax.texts)
    labels_fig = confusion_figure(Y3, P3.argmax(1), ["KL0", "KL1", "KL2"])  # labels instead of probabilities
    np.testing.assert_array_equal(np.asarray(labels_fig.axes[0].images[0].get_array()), expected)
