"""How a generator is scored against its training reference: one protocol for training and the registry.

The fake side copies the real side (the knee paper's n_fake = n_real): as many images as the
reference holds, and for a conditional generator trained on all classes, the reference's own
class mix, in class order. The same seed gives the same images, so the FID a checkpoint got in
training is the FID its registered version gets again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infra.settings import Settings
from training.evaluate import ReferenceStats, evaluate, fake_features, memorization_audit
from training.nets.sampler import GeneratorSampler


def fakes_like(sampler: GeneratorSampler, ref: ReferenceStats, seed: int, settings: Settings | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images, their labels or None): ``ref.n`` samples in the reference's class mix.

    A multi-label generator copies the reference's label *sets*: each reference image's
    multi-hot findings (read from its dataset's manifest) condition one fake, grouped by set.
    """
    if sampler.conditional and sampler.is_multilabel:
        return _multilabel_fakes(sampler, ref, seed, settings)
    if sampler.conditional and sampler.class_index is None:
        counts = np.bincount(ref.labels, minlength=sampler.num_classes)
        parts = [(sampler.generate(int(c), seed=seed + k, label=k), np.full(int(c), k)) for k, c in enumerate(counts) if c]
        return np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts])
    labels = None if sampler.class_index is None else np.full(ref.n, sampler.class_index)
    return sampler.generate(ref.n, seed=seed), labels


def reference_conditions(ref: ReferenceStats, settings: Settings | None = None) -> np.ndarray:
    """(n, K) multi-hot findings of the reference's images, row i = ``ref.image_sha256[i]``."""
    from training.catalog.selection import catalog

    manifest = catalog(settings).manifest(ref.dataset)
    by_sha = {r.sha256: r for r in manifest.records}
    targets, _ = manifest.multi_hot([by_sha[sha] for sha in ref.image_sha256])
    return targets


def _multilabel_fakes(sampler: GeneratorSampler, ref: ReferenceStats, seed: int, settings: Settings | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    conditions = reference_conditions(ref, settings)
    sets, inverse = np.unique(conditions, axis=0, return_inverse=True)
    counts = np.bincount(inverse.ravel(), minlength=len(sets))
    parts = [(sampler.generate(int(c), seed=seed + k, label=[int(v) for v in sets[k]]), np.repeat(sets[k:k + 1], c, 0))
             for k, c in enumerate(counts) if c]
    return np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts])


@dataclass(frozen=True)
class GeneratorEvaluation:
    """FID, KID (bootstrap CI) and the memorization audit of one generator on one reference."""

    fid: dict
    kid: dict
    memorization: dict
    seed: int
    fake_features: np.ndarray | None = None  # (n, dims) Inception features of the samples (membership audit)

    @property
    def reference_key(self) -> str:
        return self.fid["reference_key"]


def evaluate_generator(
    sampler: GeneratorSampler, ref: ReferenceStats, seed: int, settings: Settings | None = None,
    progress=None, kid_bootstrap: int = 1000,
) -> GeneratorEvaluation:
    """Score ``sampler`` against ``ref`` with the training protocol (see the module docstring)."""
    fake, labels = fakes_like(sampler, ref, seed, settings)
    feats = fake_features(fake, ref, settings, progress=progress)  # one Inception pass for all three
    scores = evaluate(fake, ref, ["fid", "kid"], settings, kid_bootstrap=kid_bootstrap, seed=seed, feats=feats)
    # multi-hot rows are no class index: the audit then names each fake's nearest real's class
    audit = memorization_audit(fake, ref, fake_labels=None if labels is not None and labels.ndim == 2 else labels,
                               settings=settings, feats=feats)
    return GeneratorEvaluation(fid=scores["fid"], kid=scores["kid"], memorization=audit, seed=seed, fake_features=feats)
