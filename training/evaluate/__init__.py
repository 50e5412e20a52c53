"""Evaluation metrics for synthetic images: one module for training, the registry and services.

- :mod:`.fid` — FID on arrays, equal to ``python -m pytorch_fid`` (rule written there).
- :mod:`.reference` — real-side statistics cached in the object store, keyed by content.
- :mod:`.kid`, :mod:`.precision_recall` — small-n honest companions to FID.
- :mod:`.memorization` — nearest training image of each synthetic one, vs real→real.
- :mod:`.nearcopy` — the same rule per served image: the near-copy filter and its index.
- :mod:`.membership` — membership-inference attacks (DCR, critic) with AUC / TPR@1%FPR and CIs.
- :mod:`.ssim`, :mod:`.diversity` — SSIM/MS-SSIM, same-class diversity, AM and Mode scores.
- :mod:`.registry` — which way each metric is better, for gates.

Typical use (what the training loop does every k epochs)::

    ref = reference_statistics("phantom-knee@abc123", split="train", labels=[0])
    result = fid_to_reference(fake_uint8, ref)   # FidResult: fid, n_real, n_fake, reference_key…
"""

from training.evaluate.diversity import (
    ClassifierScores,
    Diversity,
    am_score,
    classifier_scores,
    label_distribution,
    mode_score,
    ms_ssim_diversity,
)
from training.evaluate.scores import evaluate, kid_to_reference, precision_recall_to_reference
from training.evaluate.fid import (
    EXTRACTION_RULE,
    RESIZE_RULE,
    FidResult,
    compute_fid,
    features,
    fid_weights,
    frechet_distance,
    inception,
    publish_weights,
    statistics,
)
from training.evaluate.kid import KidResult, kid
from training.evaluate.memorization import memorization_audit
from training.evaluate.precision_recall import PrecisionRecall, precision_recall
from training.evaluate.reference import (
    ReferenceStats,
    fake_features,
    fid_to_reference,
    reference_images,
    reference_statistics,
)
from training.evaluate.directions import METRICS, Metric, better
from training.evaluate.ssim import ms_ssim, ssim

__all__ = [
    "METRICS",
    "EXTRACTION_RULE",
    "RESIZE_RULE",
    "ClassifierScores",
    "Diversity",
    "FidResult",
    "KidResult",
    "Metric",
    "PrecisionRecall",
    "ReferenceStats",
    "am_score",
    "better",
    "classifier_scores",
    "compute_fid",
    "evaluate",
    "fake_features",
    "features",
    "fid_to_reference",
    "fid_weights",
    "frechet_distance",
    "inception",
    "kid",
    "kid_to_reference",
    "label_distribution",
    "memorization_audit",
    "mode_score",
    "ms_ssim",
    "ms_ssim_diversity",
    "precision_recall",
    "precision_recall_to_reference",
    "publish_weights",
    "reference_images",
    "reference_statistics",
    "ssim",
    "statistics",
]
