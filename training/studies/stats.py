"""Reader-study statistics, as the seed papers report them.

Knee paper (000): balanced accuracy per reader and per group (mean ± SD over readers), per
class accuracy, the fooling rate of the most-fooling fake. Chest paper (003): accuracy per
reader group, a bootstrap with 10,000 draws, Fleiss' κ.

Conventions (recorded in every result, see :data:`CONVENTIONS`):

* **Positive class = synthetic.** Sensitivity = fakes called synthetic / fakes shown;
  specificity = reals called real / reals shown; balanced accuracy = their mean.
* **A timeout ("no answer") counts as wrong** in accuracy, sensitivity and specificity: a reader
  who cannot tell within the limit did not detect the image. Excluding timeouts instead would
  reward skipping hard images. Images a reader never reached (study closed early) are left out.
* **95 % bootstrap CI** of the balanced accuracy: ``scipy.stats.bootstrap`` with the fakes and
  the reals resampled separately (a stratified bootstrap, so every draw has both classes),
  10,000 resamples as in paper 003, percentile method (BCa is undefined when a reader is
  always right), fixed ``random_state``. A group's CI pools its readers' answers (it ignores
  clustering by reader; the mean ± SD over readers is reported beside it, as paper 000 does).
* **Binomial test**: correct answers out of counted answers, two-sided, against p = 0.5
  (``scipy.stats.binomtest``).
* **Fleiss' κ** (``statsmodels``) over the images every reader answered (real/synthetic);
  **Cohen's κ** (``sklearn``) for each pair of readers over the images both answered.
* **Fooling rate** of an image: readers who gave the wrong class / readers who answered it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

REAL, SYNTHETIC = "real", "synthetic"
CLASSES = (REAL, SYNTHETIC)
N_RESAMPLES = 10_000  # paper 003
CONFIDENCE = 0.95
CONVENTIONS = {
    "positive_class": SYNTHETIC,
    "timeout": "counted as a wrong answer; unreached images excluded",
    "ci": f"{int(CONFIDENCE * 100)} % stratified percentile bootstrap, {N_RESAMPLES} resamples",
    "binomial_test": "two-sided, p0 = 0.5",
    "fleiss_kappa": "images answered by every reader, categories real/synthetic",
    "fooling_rate": "wrong answers / answers (timeouts excluded)",
}


@dataclass(frozen=True)
class Answer:
    """One reader's verdict on one image (``answer`` None = timeout / no answer)."""

    reader: str
    group: str
    image: str
    truth: str
    answer: str | None
    confidence: int | None = None
    elapsed_s: float | None = None

    @property
    def correct(self) -> bool:
        return self.answer == self.truth


# -- the numbers of one set of answers ------------------------------------------------------------
def balanced_accuracy(truth: Sequence[str], answers: Sequence[str | None]) -> float:
    """Mean of sensitivity (synthetic) and specificity (real); nan when a class is absent."""
    sens, spec = _rate(truth, answers, SYNTHETIC), _rate(truth, answers, REAL)
    return (sens + spec) / 2


def _rate(truth: Sequence[str], answers: Sequence[str | None], cls: str) -> float:
    hits = [a == t for t, a in zip(truth, answers, strict=True) if t == cls]
    return float(np.mean(hits)) if hits else math.nan


def binomial_p(correct: int, n: int) -> float:
    """Two-sided exact binomial p of ``correct`` successes in ``n`` against 0.5."""
    from scipy.stats import binomtest

    return float(binomtest(correct, n, 0.5, alternative="two-sided").pvalue) if n else math.nan


def bootstrap_ci(fake_correct: Sequence[bool], real_correct: Sequence[bool], seed: int = 0,
                 n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95 % CI of the balanced accuracy, resampling fakes and reals separately."""
    from scipy.stats import bootstrap

    fakes = np.asarray(fake_correct, dtype=float)
    reals = np.asarray(real_correct, dtype=float)
    if len(fakes) < 2 or len(reals) < 2:  # no spread to resample: undefined
        return math.nan, math.nan
    if fakes.min() == fakes.max() and reals.min() == reals.max():  # degenerate: every draw is equal
        value = (fakes[0] + reals[0]) / 2
        return float(value), float(value)

    def statistic(f, r, axis=-1):
        return (f.mean(axis=axis) + r.mean(axis=axis)) / 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "degenerate distribution" on tiny samples: the CI is still defined
        res = bootstrap((fakes, reals), statistic, paired=False, vectorized=True, n_resamples=n_resamples,
                        confidence_level=CONFIDENCE, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(answers: Sequence[Answer], seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, balanced accuracy (+ CI) and the binomial p of ``answers``."""
    truth = [a.truth for a in answers]
    given = [a.answer for a in answers]
    correct = sum(a.correct for a in answers)
    fakes = [a.correct for a in answers if a.truth == SYNTHETIC]
    reals = [a.correct for a in answers if a.truth == REAL]
    low, high = bootstrap_ci(fakes, reals, seed, n_resamples)
    return {
        "n": len(answers), "n_fake": len(fakes), "n_real": len(reals),
        "n_no_answer": sum(a.answer is None for a in answers), "correct": correct,
        "accuracy": correct / len(answers) if answers else math.nan,
        "sensitivity": _rate(truth, given, SYNTHETIC), "specificity": _rate(truth, given, REAL),
        "balanced_accuracy": balanced_accuracy(truth, given) if answers else math.nan,
        "ci_low": low, "ci_high": high, "p_value": binomial_p(correct, len(answers)),
    }


# -- agreement -----------------------------------------------------------------------------------
def fleiss_kappa_of_counts(table: np.ndarray) -> float:
    """Fleiss' κ of a subjects × categories count table (statsmodels)."""
    from statsmodels.stats.inter_rater import fleiss_kappa

    table = np.asarray(table)
    if table.shape[0] == 0:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(fleiss_kappa(table, method="fleiss"))


def fleiss_kappa(answers: Sequence[Answer]) -> tuple[float, int]:
    """(κ, images used) over the images every reader answered real/synthetic."""
    readers = sorted({a.reader for a in answers})
    by_image: dict[str, dict[str, str]] = {}
    for a in answers:
        if a.answer is not None:
            by_image.setdefault(a.image, {})[a.reader] = a.answer
    full = [v for v in by_image.values() if len(v) == len(readers)]
    if len(readers) < 2 or not full:
        return math.nan, len(full)
    table = np.array([[sum(x == c for x in v.values()) for c in CLASSES] for v in full])
    return fleiss_kappa_of_counts(table), len(full)


def cohen_kappas(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """Cohen's κ of each pair of readers over the images both answered (sklearn)."""
    from sklearn.metrics import cohen_kappa_score

    by_reader: dict[str, dict[str, str]] = {}
    for a in answers:
        if a.answer is not None:
            by_reader.setdefault(a.reader, {})[a.image] = a.answer
    out = []
    for r1, r2 in combinations(sorted({a.reader for a in answers}), 2):
        common = sorted(set(by_reader.get(r1, {})) & set(by_reader.get(r2, {})))
        x = [by_reader[r1][i] for i in common]
        y = [by_reader[r2][i] for i in common]
        if not common:
            kappa = math.nan
        elif x == y:
            kappa = 1.0  # perfect agreement (sklearn gives nan when both used one label only)
        else:
            with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                warnings.simplefilter("ignore")
                kappa = float(cohen_kappa_score(x, y, labels=list(CLASSES)))
        out.append({"reader_a": r1, "reader_b": r2, "n": len(common), "kappa": kappa})
    return out


# -- per image and against time -------------------------------------------------------------------
def per_image(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """Per image: truth, answers, wrong answers and the fooling rate; most-fooling first."""
    rows: dict[str, dict[str, Any]] = {}
    for a in answers:
        row = rows.setdefault(a.image, {"image": a.image, "truth": a.truth, "n_answers": 0, "n_fooled": 0,
                                         "n_no_answer": 0})
        if a.answer is None:
            row["n_no_answer"] += 1
        else:
            row["n_answers"] += 1
            row["n_fooled"] += int(not a.correct)
    for row in rows.values():
        row["fooling_rate"] = row["n_fooled"] / row["n_answers"] if row["n_answers"] else math.nan
    return sorted(rows.values(), key=lambda r: (-_num(r["fooling_rate"]), r["truth"], r["image"]))


def accuracy_vs_time(answers: Sequence[Answer], bins: int = 4) -> list[dict[str, Any]]:
    """Accuracy in ``bins`` quantile bins of the time taken per answer (answers with a time only)."""
    timed = sorted((a for a in answers if a.elapsed_s is not None), key=lambda a: a.elapsed_s)  # type: ignore[arg-type, return-value]
    if not timed:
        return []
    chunks = [list(c) for c in np.array_split(np.arange(len(timed)), min(bins, len(timed))) if len(c)]
    out = []
    for idx in chunks:
        part = [timed[i] for i in idx]
        out.append({"from_s": part[0].elapsed_s, "to_s": part[-1].elapsed_s, "n": len(part),
                    "accuracy": sum(a.correct for a in part) / len(part),
                    "median_s": float(np.median([a.elapsed_s for a in part]))})
    return out


def _num(x: float) -> float:
    return -1.0 if x is None or (isinstance(x, float) and math.isnan(x)) else x


# -- the whole study ---------------------------------------------------------------------------------
def analyse(answers: Sequence[Answer], seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """Everything the results page, the CLI and MLflow show, as plain JSON-able data."""
    readers = sorted({a.reader for a in answers})
    groups = sorted({a.group for a in answers})
    per_reader = []
    for r in readers:
        mine = [a for a in answers if a.reader == r]
        per_reader.append({"reader": r, "group": mine[0].group, **summarize(mine, seed, n_resamples)})
    per_group = []
    for g in groups:
        mine = [a for a in answers if a.group == g]
        ba = [p["balanced_accuracy"] for p in per_reader if p["group"] == g and not math.isnan(p["balanced_accuracy"])]
        per_group.append({"group": g, "n_readers": len({a.reader for a in mine}), **summarize(mine, seed, n_resamples),
                          "reader_ba_mean": float(np.mean(ba)) if ba else math.nan,
                          "reader_ba_sd": float(np.std(ba, ddof=1)) if len(ba) > 1 else math.nan})
    kappa, kappa_n = fleiss_kappa(answers)
    images = per_image(answers)
    fakes = [row for row in images if row["truth"] == SYNTHETIC]
    ba_all = [p["balanced_accuracy"] for p in per_reader if not math.isnan(p["balanced_accuracy"])]
    return {
        "overall": {**summarize(answers, seed, n_resamples), "n_readers": len(readers),
                    "reader_ba_mean": float(np.mean(ba_all)) if ba_all else math.nan,
                    "reader_ba_sd": float(np.std(ba_all, ddof=1)) if len(ba_all) > 1 else math.nan},
        "readers": per_reader, "groups": per_group,
        "fleiss_kappa": kappa, "fleiss_n_images": kappa_n, "cohen_kappa": cohen_kappas(answers),
        "images": images,
        "most_fooling_fake_rate": max((_num(r["fooling_rate"]) for r in fakes), default=math.nan),
        "accuracy_vs_time": accuracy_vs_time(answers),
        "conventions": CONVENTIONS,
    }


def json_safe(value: Any) -> Any:
    """NaN → None throughout (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
