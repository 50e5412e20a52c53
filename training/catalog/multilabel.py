"""Multi-label versions: the finding vector, label-set names and per-finding counts.

A multi-label version (NIH ChestX-ray14 / CheXpert layouts, :mod:`training.catalog.chest`)
stores its K findings once (``Manifest.findings``, the multi-hot order) and, per record, the
indices of the positive findings (``label_set``) and, with ``--uncertain ignore``, of the
uncertain ones (``uncertain``). Each record's single label is its *label set*: ``classes`` are
the sets that occur, named by their findings joined with ``+`` (``"Effusion+Pneumonia"``;
the empty set is ``"No Finding"``), ordered by size, then by finding order. So the patient-level
splits are stratified by label set, ``--balance`` balances label sets, exports get one folder
per set, and ``label=Effusion+Pneumonia`` selects an exact set while ``label~Pneumonia``
tests membership (:func:`training.catalog.splits.select`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

from infra.errors import BadInput
from infra.names import MAX_NAME
from training.catalog.layouts import Scan
from training.catalog.store import ImageRecord

NO_FINDING = "No Finding"
SET_JOIN = "+"


def label_set_name(indices: Sequence[int], findings: Sequence[str]) -> str:
    """The class name of a label set: its findings joined with ``+``; ``No Finding`` when empty.

    A set whose name would exceed the name limit (many long CheXpert findings) is named by its
    finding indices instead (``#0+3+5+…``), still one stable name per set.
    """
    if not indices:
        return NO_FINDING
    name = SET_JOIN.join(findings[i] for i in sorted(indices))
    return name if len(name) <= MAX_NAME else "#" + SET_JOIN.join(str(i) for i in sorted(indices))


def multilabel_scan(found: Scan, merges: Mapping[str, Sequence[str]], chosen: Sequence[str] | None
                    ) -> tuple[Scan, list[str], dict[str, dict[str, list[int]]]]:
    """(scan with label-set names as labels, the finding vector, rel_path → record fields).

    Args:
        found: a multi-label layout's scan (``found.findings`` set).
        merges: must be empty (label sets are not merged).
        chosen: ``--classes``: the findings to keep, in this order (others are dropped from each
            set, so a 3-finding conditional GAN can train on NIH); None keeps the layout's.

    Raises:
        BadInput: a merge, or a chosen finding the layout does not have (field ``classes``).
    """
    if merges:
        raise BadInput(f"--merge does not apply to the multi-label layout {found.layout!r}", field="merges")
    findings = list(chosen) if chosen else list(found.findings or [])
    if unknown := [f for f in findings if f not in (found.findings or [])]:
        raise BadInput(f"--classes: {unknown[0]!r} is not a finding of layout {found.layout!r} "
                       f"(findings: {', '.join(found.findings or [])})", field="classes")
    if len(set(findings)) != len(findings):
        raise BadInput(f"--classes names a finding twice: {findings}", field="classes")
    fields: dict[str, dict[str, list[int]]] = {}
    items = []
    for item in found.items:
        positive = sorted(findings.index(f) for f in item.findings or () if f in findings)
        unsure = sorted(findings.index(f) for f in item.uncertain if f in findings)
        fields[item.rel_path] = {"label_set": positive, **({"uncertain": unsure} if unsure else {})}
        items.append(replace(item, label_name=label_set_name(positive, findings)))
    sets = {tuple(v["label_set"]) for v in fields.values()}
    classes = [label_set_name(s, findings) for s in sorted(sets, key=lambda s: (len(s), s))]
    return replace(found, items=items, classes=classes), findings, fields


def per_finding(records: Sequence[ImageRecord], findings: Sequence[str]) -> dict[str, dict[str, int]]:
    """Positives (and uncertain ones) per finding, for the ingest report."""
    positive = Counter(i for r in records for i in r.label_set or [])
    unsure = Counter(i for r in records for i in r.uncertain or [])
    return {f: {"positive": positive[i], **({"uncertain": unsure[i]} if unsure[i] else {})}
            for i, f in enumerate(findings)}


def finding_index(findings: Sequence[str] | None, value: str, what: str) -> int:
    """Index of a finding given by name or index; BadInput naming the finding otherwise."""
    if not findings:
        raise BadInput(f"{what}: the dataset is single-label; membership needs a multi-label version")
    if value in findings:
        return list(findings).index(value)
    if value.isascii() and value.isdigit() and int(value) < len(findings):
        return int(value)
    raise BadInput(f"{what}: {value!r} is not a finding (findings: {', '.join(findings)})")
