"""Classifier test metrics for "does synthetic data help": flat MLflow keys, a registry, a confusion figure.

The papers judge augmentation by the downstream classifier: the knee paper by test accuracy
(Table 5, 132 images), the radiograph paper by ROC AUC. Every formula here is scikit-learn's;
this module only fixes the conventions once, so every run logs the same keys the same way:

- ``labels=range(K)`` everywhere, so a class missing from a small test set still gets its
  per-class keys (support 0) and multi-class AUC / log loss do not silently shrink K.
- ``zero_division=0`` for precision/recall/F1 of a class that is never predicted or absent.
- ROC AUC is NaN, not an exception, when ``y_true`` holds one class (AUC is undefined there);
  for K > 2 it is the one-vs-rest macro average, which is NaN when any class is absent from
  ``y_true`` (scikit-learn's behaviour, with its warning).
- Class names become metric-key-safe (``[A-Za-z0-9_.-]``) through :func:`sanitize_metric_name`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from infra.errors import BadInput

if "matplotlib.pyplot" not in sys.modules:  # headless default; never switch (and close figures of) a live pyplot
    matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (after the backend choice)

__all__ = [
    "CLASSIFICATION_METRICS",
    "ClassificationMetric",
    "check_inputs",
    "classification_metrics",
    "confusion_figure",
    "get_metric",
    "metric_value",
    "multilabel_metrics",
    "predicted_labels",
    "sanitize_metric_name",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_ROW_SUM_ATOL = 1e-5  # float32 softmax rows sum to 1 within ~1e-7; sigmoid outputs do not


def sanitize_metric_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``.

    Args:
        name: a class name such as ``"KL 2/3"``; MLflow rejects some characters in metric keys,
            and a slash would also read as a key hierarchy, so ``"KL 2/3"`` becomes ``"KL_2_3"``.
    """
    safe = _UNSAFE.sub("_", str(name))
    if not safe:
        raise BadInput("an empty class name cannot name a metric key")
    return safe


def predicted_labels(proba: np.ndarray) -> np.ndarray:
    """The predicted class of each row of ``(N, K)`` class probabilities (argmax; ties → lowest index)."""
    proba = np.asarray(proba)
    if proba.ndim != 2:
        raise BadInput(f"proba must be (N, K) class probabilities, got shape {proba.shape}")
    return proba.argmax(axis=1)


def check_inputs(y_true: Sequence[int], proba: np.ndarray, n_classes: int | None = None,
                 name: str = "proba") -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, proba)`` as ``int64`` / ``float64`` arrays after checking they fit together.

    Args:
        y_true: ``N`` integer labels in ``range(K)``; a label outside it would be silently
            mis-scored under ``labels=range(K)``, so it is an error.
        proba: ``(N, K)`` probabilities whose rows sum to 1 (softmax), ``K >= 2``.
        n_classes: the expected ``K`` (``len(class_names)``), when the caller knows it.
        name: the argument name used in error messages (``proba_candidate`` …).
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if y.ndim != 1:
        raise BadInput(f"y_true must be 1-D labels, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise BadInput("y_true must hold integer class labels")
    y = y.astype(np.int64)
    if p.ndim != 2:
        raise BadInput(f"{name} must be (N, K) class probabilities, got shape {p.shape}")
    if p.shape[0] != len(y):
        raise BadInput(f"{name} has {p.shape[0]} rows but y_true has {len(y)} labels")
    if len(y) == 0:
        raise BadInput("y_true is empty")
    k = p.shape[1]
    if n_classes is not None and k != n_classes:
        raise BadInput(f"{name} has K={k} columns but there are {n_classes} class names")
    if k < 2:
        raise BadInput(f"{name} needs K >= 2 classes, got {k}")
    if y.min() < 0 or y.max() >= k:
        raise BadInput(f"y_true labels must be in range({k}), got min {y.min()} max {y.max()}")
    if not np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=_ROW_SUM_ATOL):
        raise BadInput(f"{name} rows must sum to 1 (softmax probabilities)")
    return y, p


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    if np.unique(y).size < 2:  # undefined; older scikit-learn raises, newer warns
        return float("nan")
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=range(p.shape[1])))


def _labels(p: np.ndarray) -> range:
    return range(p.shape[1])


@dataclass(frozen=True)
class ClassificationMetric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]  # (y_true int (N,), proba float (N, K)) -> value
    better: str  # "higher" | "lower"
    description: str


CLASSIFICATION_METRICS: dict[str, ClassificationMetric] = {m.name: m for m in (
    ClassificationMetric("accuracy", lambda y, p: float(accuracy_score(y, predicted_labels(p))), "higher",
                         "fraction of test images whose argmax class is right (knee paper, Table 5)"),
    ClassificationMetric("balanced_accuracy", lambda y, p: float(balanced_accuracy_score(y, predicted_labels(p))),
                         "higher", "mean per-class recall over the classes present; robust to imbalance"),
    ClassificationMetric("kappa", lambda y, p: float(cohen_kappa_score(y, predicted_labels(p), labels=_labels(p))),
                         "higher", "Cohen's kappa of argmax predictions vs labels (chance-corrected agreement)"),
    ClassificationMetric("roc_auc", _roc_auc, "higher",
                         "ROC AUC of proba[:, 1] (binary) or one-vs-rest macro (K > 2); NaN with one class"),
    ClassificationMetric("f1_macro", lambda y, p: float(precision_recall_fscore_support(
        y, predicted_labels(p), labels=_labels(p), average="macro", zero_division=0)[2]), "higher",
        "unweighted mean F1 over all K classes (zero_division=0)"),
    ClassificationMetric("log_loss", lambda y, p: float(log_loss(y, p, labels=_labels(p))), "lower",
                         "mean cross-entropy of the probabilities (knee paper's 'test loss')"),
)}


def get_metric(name: str) -> ClassificationMetric:
    """The registry entry ``name``; a ValueError listing the known names otherwise."""
    try:
        return CLASSIFICATION_METRICS[name]
    except KeyError:
        raise BadInput(f"unknown classification metric {name!r}; known: "
                         f"{', '.join(sorted(CLASSIFICATION_METRICS))}") from None


def metric_value(name: str, y_true: Sequence[int], proba: np.ndarray) -> float:
    """One registered metric of ``(N, K)`` probabilities against labels.

    Args:
        name: a key of :data:`CLASSIFICATION_METRICS`; the paired test takes it by name so a
            comparison says in its record which metric it compared.
        y_true: ``N`` labels in ``range(K)``.
        proba: ``(N, K)`` class probabilities, rows summing to 1.
    """
    metric = get_metric(name)
    y, p = check_inputs(y_true, proba)
    return metric.fn(y, p)


def classification_metrics(y_true: Sequence[int], proba: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """All test metrics of one classifier as flat float keys, ready for ``mlflow.log_metrics``.

    Keys: ``accuracy``, ``balanced_accuracy``, ``kappa``, ``roc_auc``, ``log_loss``, ``f1_macro``
    and per class ``precision/{name}``, ``recall/{name}``, ``f1/{name}``, ``support/{name}``.

    Args:
        y_true: ``N`` labels in ``range(K)``.
        proba: ``(N, K)`` class probabilities (softmax rows); AUC and log loss need the scores,
            not only the argmax.
        class_names: ``K`` names, in column order; sanitized into the per-class keys, and two
            names that sanitize to the same key are an error rather than a silent overwrite.
    """
    names = [sanitize_metric_name(n) for n in class_names]
    if len(set(names)) != len(names):
        raise BadInput(f"class names collide after sanitizing: {list(class_names)} -> {names}")
    y, p = check_inputs(y_true, proba, n_classes=len(names))
    out = {name: m.fn(y, p) for name, m in CLASSIFICATION_METRICS.items()}
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted_labels(p), labels=_labels(p), zero_division=0)
    for i, name in enumerate(names):
        out[f"precision/{name}"] = float(precision[i])
        out[f"recall/{name}"] = float(recall[i])
        out[f"f1/{name}"] = float(f1[i])
        out[f"support/{name}"] = float(support[i])
    return out


def multilabel_metrics(targets: np.ndarray, proba: np.ndarray, finding_names: Sequence[str]) -> dict[str, float]:
    """Per-finding test metrics of a multi-label head (chest paper, seed 003: per-finding AUROC).

    Keys: ``auroc/{finding}`` (scikit-learn's ``roc_auc_score`` over the images whose label for
    that finding is known; NaN when they hold one class only), ``auroc_mean`` (mean of the
    finite ones, NaN if none), ``accuracy`` (share of known (image, finding) entries predicted
    right at p ≥ 0.5) and ``positives/{finding}``.

    Args:
        targets: ``(N, K)`` 1 / 0, and -1 where the finding is uncertain and masked out
            (``--uncertain ignore``).
        proba: ``(N, K)`` independent sigmoid probabilities.
        finding_names: ``K`` names, in column order.
    """
    targets, proba = np.asarray(targets, np.float64), np.asarray(proba, np.float64)
    if targets.shape != proba.shape or targets.ndim != 2 or targets.shape[1] != len(finding_names):
        raise BadInput(f"need (N, K) targets and probabilities for {len(finding_names)} findings, "
                       f"got {targets.shape} and {proba.shape}")
    names = [sanitize_metric_name(n) for n in finding_names]
    known = targets >= 0
    out: dict[str, float] = {}
    for k, name in enumerate(names):
        y, p = targets[known[:, k], k], proba[known[:, k], k]
        out[f"auroc/{name}"] = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
        out[f"positives/{name}"] = float((y == 1).sum())
    finite = [v for k, v in out.items() if k.startswith("auroc/") and np.isfinite(v)]
    out["auroc_mean"] = float(np.mean(finite)) if finite else float("nan")
    out["accuracy"] = float(((proba >= 0.5) == (targets == 1))[known].mean()) if known.any() else float("nan")
    return out


def confusion_figure(y_true: Sequence[int], proba_or_pred: np.ndarray, class_names: Sequence[str],
                     title: str = "") -> Figure:
    """A confusion-matrix figure: counts coloured, each cell also as a percentage of its true class.

    The figure is not registered with pyplot (no global state in long training loops); log it
    with ``mlflow.log_figure(fig, "confusion.png")``; ``plt.close(fig)`` is harmless.

    Args:
        y_true: ``N`` labels in ``range(K)``.
        proba_or_pred: ``(N, K)`` probabilities (argmax is taken) or ``N`` predicted labels, so
            callers holding either can use it.
        class_names: ``K`` axis labels, in column order; ``K`` fixes the matrix size even when a
            class is absent from both labels and predictions.
        title: the axes title, e.g. the run's cell ("+200 % synthetic, seed 3").
    """
    k = len(class_names)
    arr = np.asarray(proba_or_pred)
    pred = predicted_labels(arr) if arr.ndim == 2 else arr.astype(np.int64)
    y = np.asarray(y_true, dtype=np.int64)
    if pred.shape != y.shape:
        raise BadInput(f"proba_or_pred has {len(pred)} rows but y_true has {len(y)} labels")
    counts = confusion_matrix(y, pred, labels=range(k))
    rates = confusion_matrix(y, pred, labels=range(k), normalize="true")  # rows of absent classes: 0
    fig = Figure(figsize=(1.2 * k + 2.5, 1.2 * k + 2.0), layout="constrained")
    ax = fig.add_subplot()
    disp = ConfusionMatrixDisplay(counts, display_labels=list(class_names))
    disp.plot(ax=ax, colorbar=False, values_format="d", cmap="Blues", xticks_rotation=45 if k > 3 else "horizontal")
    for (i, j), text in np.ndenumerate(disp.text_):
        text.set_text(f"{counts[i, j]}\n{rates[i, j]:.0%}")
    if title:
        ax.set_title(title)
    return fig
