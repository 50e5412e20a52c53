"""Membership-inference audit of a generator: "was this patient's image in the training set?"

The attacker holds candidate images and asks, for each, whether it was a training member.
Members are the generator's training selection (its registration reference); non-members are
the same dataset's held-out patients (the ``val`` and ``test`` splits, with the same classes):
the catalog's splits are drawn over patients (:mod:`training.catalog.splits`), so no
non-member shares a patient with a member and the labels are exact.

Attacks (black-box, the standard ones for generative models):

* **dcr** — distance to the closest synthetic record (Chen et al. 2020, "GAN-Leaks", full
  black-box; Hilprecht et al. 2019's Monte-Carlo attack is its soft form): a member's score is
  minus its Euclidean distance to the nearest of the generator's samples, in the memorization
  audit's Inception feature space. A model that reproduces training images puts samples on top
  of members and not of non-members. This is the attack every registered generator gets: it needs
  only samples, so it also runs on demand against any registered version.
* **critic** — the discriminator's score (Hayes et al. 2019, "LOGAN", white-box): an overfitted
  discriminator rates its training images higher than unseen ones. Run where the discriminator is
  available (at registration, from the training checkpoint; on demand when the version's
  ``checkpoint`` tag still resolves).

Shokri et al. 2017's shadow-model attack is not implemented: it needs shadow GANs trained on
disjoint data, which scarce radiology sets do not have.

Reported per attack: ROC AUC and the TPR at 1 % FPR (Carlini et al. 2022, "Membership inference
attacks from first principles": an attack that is right about a few members is dangerous even at
AUC ≈ 0.5, so the low-FPR point is read alongside AUC), both from scikit-learn's
``roc_auc_score``/``roc_curve``, each with a percentile bootstrap CI (``scipy.stats.bootstrap``,
members and non-members resampled separately, so every draw keeps both classes; the AUC's draws
use ``scipy.stats.mannwhitneyu``, whose U / (m·n) is the same AUC, vectorised). With m
non-members the smallest FPR step is 1/m: with fewer than 100 non-members "TPR at 1 % FPR" is the
TPR at FPR = 0 (members scored above every non-member), as ``roc_curve`` interpolates nothing.

Libraries checked (none installed here, none added): privacy-meter 1.0.1 audits classifiers
(loss/shadow-model attacks on a target model's outputs), not generators' samples; synthcity 0.2.12
and DOMIAS 0.0.5 implement DCR/DOMIAS for *tabular* generators and pin their own torch and
sklearn. The DCR attack is a nearest-neighbour query plus a ROC, which scikit-learn provides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from infra.errors import BadInput

if TYPE_CHECKING:
    from infra.settings import Settings
    from training.evaluate.reference import ReferenceStats

__all__ = ["MEMBERSHIP_PREFIX", "attack_metrics", "critic_scores", "dcr_scores", "holdout_reference",
           "membership_audit"]

MEMBERSHIP_PREFIX = "eval/membership/"
LOW_FPR = 0.01
HOLDOUT_SPLITS = ("val", "test")


def dcr_scores(candidates: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    """Minus the Euclidean distance of each candidate (m, d) to its nearest synthetic feature (k, d)."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=1).fit(np.asarray(synthetic, np.float64)).kneighbors(
        np.asarray(candidates, np.float64))
    return -dist[:, 0]


def critic_scores(critic, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The discriminator's realness score of uint8 images (N, H, W), as in training ([-1, 1] input).

    An AC-GAN discriminator returns (source, class logits): the source logit is the score.
    """
    import torch

    critic = critic.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.asarray(images[start:start + batch_size], np.float32) / 127.5 - 1).unsqueeze(1)
            score = critic(x)
            out.append((score[0] if isinstance(score, tuple) else score).reshape(len(x)).double().numpy())
    return np.concatenate(out)


def _tpr_at(labels: np.ndarray, scores: np.ndarray, fpr_max: float) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= fpr_max].max())


def attack_metrics(member: np.ndarray, nonmember: np.ndarray, *, bootstrap: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> dict:
    """AUC and TPR at 1 % FPR of scores (higher = "member"), each with a percentile bootstrap CI.

    Args:
        member, nonmember: attack scores of members and non-members (each >= 2).
        bootstrap: resamples for the CIs (0 = none).
        confidence: CI level.
        seed: resampling seed.
    """
    from scipy.stats import bootstrap as scipy_bootstrap
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    member, nonmember = np.asarray(member, np.float64), np.asarray(nonmember, np.float64)
    if len(member) < 2 or len(nonmember) < 2:
        raise BadInput(f"a membership attack needs >= 2 members and >= 2 non-members, got {len(member)} and "
                       f"{len(nonmember)}")

    def joined(m, nm):
        return np.r_[np.ones(len(m)), np.zeros(len(nm))], np.r_[m, nm]

    def auc(m, nm, axis=-1):
        # AUC = U / (m n), Mann-Whitney's U of members over non-members (ties count 1/2): equal to
        # roc_auc_score (pinned by a test) and vectorised over resamples, so 1000 draws take ~25 ms
        return mannwhitneyu(m, nm, axis=axis).statistic / (np.shape(m)[axis] * np.shape(nm)[axis])

    def tpr(m, nm):
        return _tpr_at(*joined(m, nm), LOW_FPR)

    out = {"auc": float(roc_auc_score(*joined(member, nonmember))), "tpr_at_1pct_fpr": float(tpr(member, nonmember)),
           "n_members": len(member), "n_nonmembers": len(nonmember), "confidence": confidence, "bootstrap": bootstrap}
    for name, statistic, vectorized in (("auc", auc, True), ("tpr_at_1pct_fpr", tpr, False)):
        if bootstrap:
            ci = scipy_bootstrap((member, nonmember), statistic, n_resamples=bootstrap, paired=False,
                                 vectorized=vectorized, confidence_level=confidence, method="percentile",
                                 rng=np.random.default_rng(seed)).confidence_interval
            out[f"{name}_ci"] = [float(ci.low), float(ci.high)]
        else:
            out[f"{name}_ci"] = None
    return out


def holdout_reference(members: ReferenceStats, settings: Settings | None = None,
                      splits: tuple[str, ...] = HOLDOUT_SPLITS) -> tuple[np.ndarray, list[ReferenceStats]]:
    """Inception features of the held-out patients matching ``members``' selection (its classes).

    Returns (features (m, dims), the per-split references, for their pixels). Raises BadInput when
    ``members`` is not a ``train`` selection or no held-out split has >= 2 images of its classes.
    """
    from training.evaluate.reference import reference_statistics

    spec = members.spec
    if spec.get("split") != "train":
        raise BadInput(f"membership audit needs a train-split reference (members) to take held-out patients "
                       f"from; {members.key} has split={spec.get('split')!r}")
    refs, feats = [], []
    for split in splits:
        try:
            ref = reference_statistics(members.dataset, split=split, labels=spec.get("labels"), settings=settings,
                                       dims=members.dims)
        except BadInput:  # this split has fewer than 2 images of these classes (or none)
            continue
        refs.append(ref)
        feats.append(ref.features)
    if not refs:
        raise BadInput(f"dataset {members.dataset} has no held-out ({'/'.join(splits)}) images of these classes: "
                       "no non-members to audit membership against")
    return np.concatenate(feats), refs


def membership_audit(
    synthetic: np.ndarray,
    members: ReferenceStats,
    *,
    member_rows: np.ndarray | None = None,
    critic: Callable | None = None,
    settings: Settings | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    store=None,
) -> dict:
    """Run the attacks (module docstring) and write ``eval/membership/<id>/summary.json``.

    Args:
        synthetic: (k, dims) Inception features of the generator's samples (e.g. the registration's
            evaluation samples).
        members: a train-split reference holding the training images (features cached).
        member_rows: the rows of ``members`` the generator was trained on (default: all); the
            others (a ``limit`` or balanced run leaves some train-split images unused) are left
            out, being neither members nor held-out patients.
        critic: the trained discriminator, for the ``critic`` attack (pixels are read from the catalog).
        bootstrap, seed: CI resampling.
        store: object store for the summary (default: the settings').
    Returns:
        ``{"attacks": {"dcr": {...}, "critic": {...}?}, "auc": max over attacks, ...}`` (JSON-safe).
    """
    from infra.object_store import ObjectStore
    from infra.settings import get_settings
    from training.evaluate.reference import reference_images

    settings = settings or get_settings()
    if members.features is None:
        raise BadInput(f"reference {members.key} carries no features; load it with reference_statistics()")
    synthetic = np.asarray(synthetic, np.float64)
    if synthetic.ndim != 2 or synthetic.shape[1] != members.dims or len(synthetic) < 1:
        raise BadInput(f"synthetic features must be (k >= 1, {members.dims}), got {synthetic.shape}")
    rows = np.arange(members.n) if member_rows is None else np.asarray(member_rows, dtype=np.int64)
    held_feats, held_refs = holdout_reference(members, settings)
    attacks = {"dcr": attack_metrics(dcr_scores(members.features[rows], synthetic), dcr_scores(held_feats, synthetic),
                                     bootstrap=bootstrap, seed=seed)}
    if critic is not None:
        held_pixels = np.concatenate([reference_images(r, settings=settings) for r in held_refs])
        attacks["critic"] = attack_metrics(critic_scores(critic, reference_images(members, rows, settings)),
                                           critic_scores(critic, held_pixels), bootstrap=bootstrap, seed=seed)
    worst = max(attacks, key=lambda a: attacks[a]["auc"])
    summary = {
        "dataset": members.dataset, "members_key": members.key, "nonmember_keys": [r.key for r in held_refs],
        "n_members": len(rows), "n_nonmembers": len(held_feats), "n_synthetic": len(synthetic),
        "attacks": attacks, "worst_attack": worst, "auc": attacks[worst]["auc"], "auc_ci": attacks[worst]["auc_ci"],
        "tpr_at_1pct_fpr": max(a["tpr_at_1pct_fpr"] for a in attacks.values()),
    }
    digest = hashlib.sha256(members.key.encode())
    digest.update(np.ascontiguousarray(synthetic).tobytes())
    digest.update(rows.tobytes())
    digest.update(json.dumps([sorted(attacks), bootstrap, seed]).encode())
    key = f"{MEMBERSHIP_PREFIX}{digest.hexdigest()[:24]}/summary.json"
    store = store or ObjectStore(settings)
    summary["artifact"] = store.uri(key)
    store.put_bytes(key, json.dumps(summary, indent=1).encode(), content_type="application/json")
    return summary
