"""AM and Mode scores of synthetic images under a *registered* domain classifier (knee-MRI paper 001).

The formulas are :func:`training.evaluate.diversity.am_score` / ``mode_score`` (Eqs. 4-5);
this module supplies their two inputs:

- p(y|x): the classifier's class probabilities of each synthetic image (any registered
  :class:`~training.nets.classifier.ImageClassifier` with a softmax or binary-sigmoid head,
  e.g. the paper's domain classifier trained on slice index with ``synthray train classifier
  --label-from attribute=slice_index``; a multi-label head has no class distribution and is
  refused);
- p(y*): the empirical label distribution of the classifier's training data: the ``train``
  split of the dataset its version is tagged with, labelled as it was trained (its
  ``label_from`` tag), unless the caller gives the prior (``--prior``) or another dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from infra.errors import BadInput
from infra.settings import Settings
from training.evaluate.diversity import ClassifierScores, am_score, label_distribution, mode_score

__all__ = ["DomainClassifier", "am_mode_scores", "load_domain_classifier", "training_prior"]


@dataclass(frozen=True)
class DomainClassifier:
    """A registered classifier with what AM/Mode need to know about its training."""

    uri: str
    model: object  # ImageClassifier
    dataset: str | None  # tag "dataset" of the version (name@version), if any
    label_from: str | None  # tag "label_from" (attribute=NAME), if it was not trained on classes

    @property
    def classes(self) -> list[str]:
        return list(self.model.class_names)


def load_domain_classifier(uri: str, settings: Settings | None = None) -> DomainClassifier:
    """The classifier at ``uri`` (``models:/NAME@alias`` or ``models:/NAME/V``) and its training tags.

    Raises:
        BadInput: a multi-label classifier (its sigmoids are no class distribution).
    """
    from training.registry.classifiers import load_classifier
    from training.registry.generators import _client, resolve_version

    spec = uri.removeprefix("models:/")
    version = resolve_version(_client(settings), spec)
    model = load_classifier(uri if uri.startswith("models:/") else f"models:/{uri}", settings)
    if getattr(model, "head", "softmax") == "multilabel":
        raise BadInput(f"{uri} has a multi-label head: AM and Mode scores need a class distribution per image",
                       field="classifier")
    tags = dict(version.tags or {})
    return DomainClassifier(uri, model, tags.get("dataset"), tags.get("label_from"))


def training_prior(classes: Sequence[str], dataset: str, label_from: str | None, split: str = "train",
                   settings: Settings | None = None) -> np.ndarray:
    """p(y*) over ``classes``: the label distribution of ``dataset``'s ``split``, labelled by
    ``label_from`` (``attribute=NAME``) or by class, as the classifier was trained.

    Raises:
        BadInput: the split is empty, or its labels do not match the classifier's classes.
    """
    from training.catalog.selection import catalog
    from training.classify.trainer import training_targets

    manifest = catalog(settings).manifest(dataset)
    records = manifest.select(split=split)
    if not records:
        raise BadInput(f"dataset {manifest.ref} has no images in split {split!r} for the prior p(y*)")
    names, (labels,) = training_targets(manifest, [records], label_from)
    if labels.ndim != 1:
        raise BadInput(f"{manifest.ref} is multi-label: AM and Mode scores need one class per image")
    if list(names) != list(classes):
        raise BadInput(f"the classifier's classes {list(classes)} are not {manifest.ref}'s "
                       f"{'values of ' + label_from if label_from else 'classes'} {names}", field="classifier")
    return label_distribution(labels, len(classes))


def am_mode_scores(images: np.ndarray, classifier: DomainClassifier, prior: np.ndarray,
                   batch_size: int = 64) -> tuple[ClassifierScores, np.ndarray]:
    """(AM and Mode of uint8 ``images`` (N, H, W) under ``classifier`` with p(y*) = ``prior``, p(y|x) (N, K))."""
    if len(images) == 0:
        raise BadInput("no images to score")
    prior = np.asarray(prior, np.float64)
    if prior.shape != (len(classifier.classes),):
        raise BadInput(f"the prior has {prior.size} entries; {classifier.uri} has {len(classifier.classes)} classes "
                       f"{classifier.classes}", field="prior")
    probs = np.concatenate([classifier.model.predict_proba(images[s : s + batch_size])
                            for s in range(0, len(images), batch_size)])
    scores = ClassifierScores(am_score(probs, prior), mode_score(probs, prior), len(images), len(prior))
    return scores, probs
