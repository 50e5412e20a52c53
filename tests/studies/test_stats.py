"""Reader-study statistics against values computed by hand or published."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.studies import stats
from training.studies.stats import Answer

# Fleiss (1971) as reproduced in the classic worked example: 10 subjects, 14 raters, 5 categories.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def test_fleiss_kappa_of_the_worked_example() -> None:
    # P̄ = 0.378, P̄e = 0.213 → κ = (0.378 − 0.213) / (1 − 0.213) = 0.210
    assert stats.fleiss_kappa_of_counts(FLEISS_TABLE) == pytest.approx(0.2099, abs=5e-4)


def _answers(reader: str, truth_answer: list[tuple[str, str | None]], group: str = "g") -> list[Answer]:
    return [Answer(reader, group, f"i{k}", t, a, elapsed_s=float(k)) for k, (t, a) in enumerate(truth_answer)]


# 4 fakes: 3 called synthetic; 6 reals: 4 called real.
HAND = [("synthetic", "synthetic")] * 3 + [("synthetic", "real")] + [("real", "real")] * 4 + [("real", "synthetic")] * 2


def test_balanced_accuracy_and_binomial_p_by_hand() -> None:
    s = stats.summarize(_answers("r01", HAND), n_resamples=2000)
    assert s["sensitivity"] == pytest.approx(3 / 4)
    assert s["specificity"] == pytest.approx(4 / 6)
    assert s["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)  # 0.7083
    assert s["accuracy"] == pytest.approx(0.7)
    # 7 of 10 correct: P(X >= 7) = (120 + 45 + 10 + 1) / 1024 = 0.171875, two-sided 0.34375
    assert s["p_value"] == pytest.approx(0.34375)
    assert 0 <= s["ci_low"] <= s["balanced_accuracy"] <= s["ci_high"] <= 1


def test_a_timeout_counts_as_wrong_and_is_reported() -> None:
    answers = _answers("r01", [("synthetic", None), ("synthetic", "synthetic"), ("real", "real"), ("real", "real")])
    s = stats.summarize(answers, n_resamples=500)
    assert s["n_no_answer"] == 1 and s["sensitivity"] == 0.5 and s["specificity"] == 1.0
    assert s["accuracy"] == 0.75


def test_bootstrap_is_stratified_and_degenerate_safe() -> None:
    assert stats.bootstrap_ci([True] * 5, [True] * 5) == (1.0, 1.0)
    low, high = stats.bootstrap_ci([True, True, False, False], [True, False, False, False], seed=1, n_resamples=4000)
    assert 0.0 <= low < 0.375 < high <= 1.0
    assert stats.bootstrap_ci([True, False], [True, False], seed=3) == stats.bootstrap_ci([True, False], [True, False], seed=3)


def test_cohen_kappa_by_hand() -> None:
    a = ["synthetic", "synthetic", "synthetic", "real", "real", "real", "real", "real", "synthetic", "real"]
    b = ["synthetic", "synthetic", "real", "real", "real", "real", "real", "synthetic", "synthetic", "real"]
    truth = ["synthetic"] * 5 + ["real"] * 5
    answers = ([Answer("r01", "g", f"i{k}", truth[k], a[k]) for k in range(10)]
               + [Answer("r02", "g", f"i{k}", truth[k], b[k]) for k in range(10)])
    (pair,) = stats.cohen_kappas(answers)
    # p_o = 0.8, p_e = 0.4·0.4 + 0.6·0.6 = 0.52 → κ = 0.28 / 0.48
    assert pair["n"] == 10 and pair["kappa"] == pytest.approx(0.28 / 0.48)
    kappa, used = stats.fleiss_kappa(answers)
    assert used == 10 and kappa == pytest.approx(0.5833, abs=2e-3)  # two raters, equal marginals ≈ Cohen


def test_per_image_fooling_rate_and_the_whole_analysis() -> None:
    answers = _answers("r01", HAND, "radiologist") + _answers("r02", [(t, t) for t, _ in HAND], "surgeon")
    result = stats.analyse(answers, n_resamples=500)
    assert result["overall"]["n_readers"] == 2 and result["overall"]["n"] == 20
    assert {g["group"] for g in result["groups"]} == {"radiologist", "surgeon"}
    surgeon = next(g for g in result["groups"] if g["group"] == "surgeon")
    assert surgeon["balanced_accuracy"] == 1.0 and surgeon["p_value"] == pytest.approx(2 / 1024)
    top = result["images"][0]
    assert top["fooling_rate"] == 0.5 and top["n_answers"] == 2
    assert result["most_fooling_fake_rate"] == 0.5
    assert sum(b["n"] for b in result["accuracy_vs_time"]) == 20
    clean = stats.json_safe({"x": math.nan, "y": [math.nan, 1.0]})
    assert clean == {"x": None, "y": [None, 1.0]}
