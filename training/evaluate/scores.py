"""Several metrics of one synthetic set against one reference, with the Inception pass done once.

Training evaluates every few epochs and the gate wants FID, KID and precision/recall side by
side; pushing the same images through Inception three times would triple the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infra.settings import Settings
from training.evaluate.kid import KidResult, kid
from training.evaluate.precision_recall import PrecisionRecall, precision_recall
from training.evaluate.reference import ReferenceStats, fake_features, fid_from_reference_features
from infra.errors import BadInput
from infra.progress import CountProgress

__all__ = ["EVALUATIONS", "evaluate", "kid_to_reference", "precision_recall_to_reference"]

EVALUATIONS = ("fid", "kid", "precision_recall")


def _real(ref: ReferenceStats) -> np.ndarray:
    if ref.features is None:
        raise BadInput(f"reference {ref.key} carries no features; load it with reference_statistics()")
    return ref.features.astype(np.float64)


def kid_to_reference(
    fake: np.ndarray, ref: ReferenceStats, settings: Settings | None = None, batch_size: int = 50,
    *, bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> KidResult:
    """KID of uint8 synthetic images against the reference's cached features."""
    feats = fake_features(fake, ref, settings, batch_size)
    return _kid(feats, ref, bootstrap, confidence, seed)


def _kid(feats: np.ndarray, ref: ReferenceStats, bootstrap: int, confidence: float, seed: int) -> KidResult:
    result = kid(_real(ref), feats, bootstrap=bootstrap, confidence=confidence, seed=seed)
    return KidResult(**{**result.as_dict(), "reference_key": ref.key, "weights_sha256": ref.weights_sha256})


def precision_recall_to_reference(
    fake: np.ndarray, ref: ReferenceStats, settings: Settings | None = None, batch_size: int = 50, k: int = 3,
) -> PrecisionRecall:
    """Improved precision/recall of uint8 synthetic images against the reference's features."""
    return precision_recall(_real(ref), fake_features(fake, ref, settings, batch_size), k)


def evaluate(
    fake: np.ndarray,
    ref: ReferenceStats,
    metrics: Sequence[str] = EVALUATIONS,
    settings: Settings | None = None,
    batch_size: int = 50,
    progress: CountProgress | None = None,
    *,
    fid_bootstrap: int = 0,
    kid_bootstrap: int = 1000,
    k: int = 3,
    seed: int = 0,
    feats: np.ndarray | None = None,
) -> dict:
    """``{"fid": {...}, "kid": {...}, "precision_recall": {...}}`` for the requested metrics.

    ``feats`` are ``fake``'s Inception features when the caller already has them.
    """
    unknown = set(metrics) - set(EVALUATIONS)
    if unknown:
        raise BadInput(f"unknown metrics {sorted(unknown)}; choose from {', '.join(EVALUATIONS)}")
    if feats is None:
        feats = fake_features(fake, ref, settings, batch_size, progress)
    out: dict[str, dict] = {}
    if "fid" in metrics:
        out["fid"] = fid_from_reference_features(feats, ref, bootstrap=fid_bootstrap, seed=seed).as_dict()
    if "kid" in metrics:
        out["kid"] = _kid(feats, ref, kid_bootstrap, 0.95, seed).as_dict()
    if "precision_recall" in metrics:
        out["precision_recall"] = precision_recall(_real(ref), feats, k).as_dict()
    return out
