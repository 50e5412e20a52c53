"""Seeded, stratified, patient-level splits, named subsets and the leakage check.

A patient never appears in two splits: splits are drawn over *groups* (patients; an image
without a patient id is its own group) with scikit-learn's ``StratifiedGroupKFold``, which
keeps class proportions as close as whole patients allow. Fractions become folds: with
0.8/0.1/0.1 there are 10 folds, 8 go to train, 1 to val, 1 to test.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from training.catalog.multilabel import finding_index
from training.catalog.store import Catalog, CatalogError, ImageRecord, Manifest
from infra.seeds import random_state
from infra.errors import BadInput

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
_MAX_FOLDS = 20


def fold_plan(fractions: Mapping[str, float]) -> tuple[int, dict[str, int]]:
    """Smallest fold count k ≤ 20 that expresses every fraction as a whole number of folds."""
    if set(fractions) - set(SPLITS) or not fractions:
        raise BadInput(f"split fractions must name some of {', '.join(SPLITS)}, got {dict(fractions)}")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise BadInput(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    exact = {s: Fraction(f).limit_denominator(_MAX_FOLDS) for s, f in fractions.items()}
    if any(abs(float(exact[s]) - f) > 1e-6 for s, f in fractions.items()):
        raise BadInput(f"split fractions must be multiples of 1/k for some k <= {_MAX_FOLDS}, got {dict(fractions)}")
    k = math.lcm(*(f.denominator for f in exact.values()))
    return k, {s: int(f * k) for s, f in exact.items()}


def assign_splits(
    labels: Sequence[int],
    patients: Sequence[str | None],
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[str]:
    """Split name per item: seeded, stratified by label, never splitting a patient.

    Args:
        labels: class index per item.
        patients: patient/study id per item; None makes the item its own group.
        fractions: split → fraction (multiples of 1/k, k ≤ 20).
        seed: shuffles the patients before the stratified assignment.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if len(labels) != len(patients):
        raise BadInput(f"{len(labels)} labels but {len(patients)} patient ids")
    k, folds_per_split = fold_plan(fractions)
    groups = [p if p is not None else f"\0item{i}" for i, p in enumerate(patients)]
    if k == 1:
        return [next(s for s, n in folds_per_split.items() if n)] * len(labels)
    if len(set(groups)) < k:
        raise BadInput(
            f"{len(set(groups))} patients are too few for splits {dict(fractions)}: they need at least {k}"
        )
    owner = [s for s, n in folds_per_split.items() for _ in range(n)]  # fold index → split
    if max(Counter(labels).values()) < k:
        # Every class is smaller than the fold count (many rare multi-label sets in a small
        # set): scikit-learn refuses to stratify at all, so the split is by patient only.
        labels = [0] * len(labels)
    out = [""] * len(labels)
    with warnings.catch_warnings():
        # Rare classes with fewer members than folds are expected in medical sets.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        # all bits of the seed (a bare int seeds a RandomState, which refuses seeds >= 2**32)
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=random_state(seed))
        for fold, (_, test_idx) in enumerate(cv.split(list(range(len(labels))), list(labels), groups)):
            for i in test_idx:
                out[i] = owner[fold]
    return out


# -- selections ---------------------------------------------------------------------------
def select(manifest: Manifest, selector: str) -> list[ImageRecord]:
    """Records matching ``selector``: comma-separated ``key=value`` / ``key!=value`` terms, ANDed.

    Keys: ``split``, ``label`` (class name or index), ``subset``, or any record attribute the
    version has (``modality``, ``body_part``, ``view_position`` … of the dicom layout), matched
    exactly. An empty selector is all records. Example: ``split=train,subset!=rejected,modality=CR``.

    Membership in a multi-label version's label set: ``label~Pneumonia`` (ASCII; the
    mathematical ``label∋Pneumonia`` is accepted too) and its negation ``label!~Pneumonia``
    (``label∌Pneumonia``); the finding is a name or index of ``Manifest.findings``. On a
    multi-label version ``label=…`` matches one exact label set (``label=No Finding``,
    ``label=Effusion+Pneumonia``, see :mod:`training.catalog.multilabel`).
    """
    records = manifest.records
    attributes = {k for r in manifest.records for k in r.attributes}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if (member := _membership(term)) is not None:
            negate, value = member
            index = finding_index(manifest.findings, value, f"selector term {term!r}")
            records = [r for r in records if (index in (r.label_set or ())) != negate]
            continue
        key, negate, value = _term(term, attributes)
        if key in attributes and key not in _SELECTOR_KEYS:
            hit = lambda r, k=key, v=value: r.attributes.get(k) == v  # noqa: E731
        elif key == "split":
            hit = lambda r, v=value: r.split == v  # noqa: E731
        elif key == "label":
            label = _label_index(manifest, value)
            hit = lambda r, v=label: r.label == v  # noqa: E731
        else:
            members = set(manifest.subset(value))
            hit = lambda r, m=members: r.sha256 in m  # noqa: E731
        records = [r for r in records if hit(r) != negate]
    return records


_SELECTOR_KEYS = ("split", "label", "subset")
#: Membership operators of a ``label`` term: (spelling, negated), longest first.
_MEMBERSHIP = (("!~", True), ("∌", True), ("~", False), ("∋", False))


def _membership(term: str) -> tuple[bool, str] | None:
    """(negated, finding) of a ``label~F`` / ``label∋F`` / ``label!~F`` / ``label∌F`` term, else None."""
    for op, negated in _MEMBERSHIP:
        key, found, value = term.partition(op)
        if found and key.strip() == "label" and "=" not in key:
            if not value.strip():
                raise BadInput(f"selector term {term!r} is invalid: name a finding after {op!r}")
            return negated, value.strip()
    return None


def _term(term: str, attributes: set[str] = frozenset()) -> tuple[str, bool, str]:
    negate = "!=" in term
    key, _, value = term.partition("!=" if negate else "=")
    key, value = key.strip(), value.strip()
    if (key not in _SELECTOR_KEYS and key not in attributes) or not value:
        extra = f", or an attribute ({', '.join(sorted(attributes))})" if attributes else ""
        raise BadInput(f"selector term {term!r} is invalid: use split=…, label=… or subset=…{extra} (or !=), "
                       f"or label~FINDING for membership in a multi-label set")
    return key, negate, value


def _label_index(manifest: Manifest, value: str) -> int:
    if value in manifest.classes:
        return manifest.classes.index(value)
    if value.isdigit() and int(value) < len(manifest.classes):
        return int(value)
    raise BadInput(f"label {value!r} is not a class of {manifest.ref} (classes: {', '.join(manifest.classes)})")


# -- leakage check ------------------------------------------------------------------------
@dataclass(frozen=True)
class Overlap:
    """What two selections share. Empty means they are safe to use as train vs. test."""

    patients: frozenset[str]
    images: frozenset[str]

    @property
    def disjoint(self) -> bool:
        return not (self.patients or self.images)

    def __str__(self) -> str:
        if self.disjoint:
            return "disjoint: no shared patient, no shared image"
        sample = ", ".join(sorted(self.patients)[:5])
        return (
            f"NOT disjoint: {len(self.patients)} shared patient(s)"
            + (f" (e.g. {sample})" if sample else "")
            + f", {len(self.images)} shared image hash(es)"
        )


def overlap(a: Sequence[ImageRecord], b: Sequence[ImageRecord]) -> Overlap:
    """Shared patient ids and image hashes between two record selections."""
    patients = {r.patient_id for r in a if r.patient_id} & {r.patient_id for r in b if r.patient_id}
    images = {r.sha256 for r in a} & {r.sha256 for r in b}
    return Overlap(frozenset(patients), frozenset(images))


def assert_disjoint(a: Sequence[ImageRecord], b: Sequence[ImageRecord], what: str) -> None:
    """Raise CatalogError when two selections share a patient or an image (data leakage)."""
    found = overlap(a, b)
    if not found.disjoint:
        raise CatalogError(f"{what}: {found}")


def split_overlap(records: Sequence[ImageRecord]) -> dict[tuple[str, str], Overlap]:
    """Overlap of every pair of splits present in ``records``."""
    by_split: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_split.setdefault(r.split, []).append(r)
    names = sorted(by_split)
    return {(x, y): overlap(by_split[x], by_split[y]) for i, x in enumerate(names) for y in names[i + 1 :]}


# -- derived versions ---------------------------------------------------------------------
def derive(
    catalog: Catalog,
    ref: str,
    name: str | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    subsets: Mapping[str, str] | None = None,
) -> Manifest:
    """Publish a new version that re-splits ``ref`` and/or declares named subsets.

    Versions are immutable, so a new split is a new version over the same stored images
    (nothing is downloaded or re-uploaded).

    Args:
        catalog: where ``ref`` lives.
        ref: source version.
        name: dataset name of the new version (default: the same dataset).
        fractions: new split fractions (None keeps the current splits).
        seed: seeds the new split.
        subsets: subset name → selector (see ``select``), evaluated after re-splitting.
    """
    source = catalog.manifest(ref)
    records = source.records
    note = f"derived from {source.ref}"
    if fractions is not None:
        splits = assign_splits([r.label for r in records], [r.patient_id for r in records], fractions, seed)
        records = [replace(r, split=s) for r, s in zip(records, splits)]
        note += f"; re-split {dict(fractions)} seed {seed}"
    staged = replace(source, records=records)
    declared = {**source.subsets, **{k: [r.sha256 for r in select(staged, v)] for k, v in (subsets or {}).items()}}
    if subsets:
        note += "; subsets " + ", ".join(f"{k}={v}" for k, v in subsets.items())
    return catalog.publish_records(
        name or source.name, records, source.classes, description=f"{source.description} | {note}",
        subsets=declared, preprocessing=source.preprocessing, findings=source.findings,
        mask_classes=source.mask_classes,
    )
