"""Multi-label chest X-ray layouts: NIH ChestX-ray14 and CheXpert CSVs, where an image has a *set* of findings.

``nih-cxr14`` (Wang et al. 2017): ``Data_Entry_2017.csv`` with ``Image Index`` (a file name,
found anywhere under the CSV's folder, e.g. NIH's ``images_001/images/``) and ``Finding
Labels`` (findings joined with ``|``; ``No Finding`` alone is the empty set). ``Patient ID``
groups the splits; ``View Position`` becomes an attribute. The vocabulary is NIH's 14 findings:
any other token is that row's problem, named by file, line and field.

``chexpert`` (Irvin et al. 2019): ``train.csv``/``valid.csv`` with ``Path`` and one column per
observation holding ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) or blank (not
mentioned, read as negative, the paper's and the common practice). Every column other than
``Path`` and the metadata (``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA``) is a finding, in
CSV order. Paths are relative to the CSV's folder or, as in the released CSVs (which start
``CheXpert-v1.0-small/…``), to its parent. Patients are the ``patientNNNNN`` path segment.

Uncertain labels (CheXpert's ``-1``) follow ``uncertain`` (the paper's U-Zeros, U-Ones and
U-Ignore; default ``zeros``, the policy every consumer can use, a choice):

- ``zeros``: negative; ``ones``: positive;
- ``ignore``: negative in the label set, and listed in the record's ``uncertain`` field, which
  classifier training turns into a loss weight of 0 (masked out of the BCE). A conditional
  GAN has no "unknown" condition, so it sees those findings as 0.

Neither layout fixes splits: ingest draws patient-level splits stratified by label set. Each
item's ``label_name`` is filled in by the ingest (the label set's name); the layout states the
findings in ``SourceItem.findings``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from training.catalog.layouts import (
    IMAGE_SUFFIXES,
    LayoutError,
    Problem,
    Scan,
    SourceItem,
    _csv_header,
    _rel,
    _scan,
)
from training.catalog.multilabel import NO_FINDING

#: NIH ChestX-ray14's 14 findings, in the order of the dataset's paper (Wang et al. 2017, Table 1 order).
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NIH_REQUIRED = ("Image Index", "Finding Labels")
CHEXPERT_METADATA = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
_CHEXPERT_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": 0}
_PATIENT = re.compile(r"(?:^|/)(patient\d+)(?:/|$)")


def _table(src: str | Path) -> Path:
    table = Path(os.path.abspath(Path(src).expanduser()))
    if not table.is_file():
        raise LayoutError(f"CSV {src} does not exist (give the CSV file itself as SRC)", field="src")
    return table


def _records(table: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str], list[str]]]:
    """(line, stripped cells by column, header) of each row; a missing required column ends the scan."""
    import csv

    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise LayoutError(f"CSV {table} is empty; it needs a header with columns {', '.join(required)}")
        header = [name.strip() for name in reader.fieldnames]
        for column in required:
            if column not in header:
                raise LayoutError(f"CSV {table} has no {column!r} column (header: {','.join(header)})", field=column)
        reader.fieldnames = header
        for row in reader:
            if None in row:  # more cells than the header has columns: a malformed row
                yield reader.line_num, {}, header
                continue
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}, header


# --- nih-cxr14 -------------------------------------------------------------------------------


def scan_nih(src: str | Path, patient_regex: str | None = None) -> Scan:
    """NIH ChestX-ray14 ``Data_Entry_2017.csv`` (see the module docstring)."""
    if patient_regex is not None:
        raise LayoutError("layout 'nih-cxr14' takes no patient regex: patients are the 'Patient ID' column")
    table = _table(src)
    root = table.parent
    files = _index_images(root)
    items: list[SourceItem] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, cells, _ in _records(table, NIH_REQUIRED):
        ref = f"{table.name}:{line}"
        if not cells:
            problems.append(Problem(ref, "malformed", "row has more cells than the header has columns"))
            continue
        name = cells["Image Index"]
        findings, why = parse_nih_findings(cells["Finding Labels"])
        if why:
            problems.append(Problem(ref, "bad-label", f"field 'Finding Labels': {why}"))
            continue
        if not name or "/" in name or "\\" in name:
            problems.append(Problem(ref, "malformed", f"field 'Image Index' {name!r} is not a file name"))
            continue
        if name in seen:
            problems.append(Problem(ref, "duplicate", f"{name} is already listed on line {seen[name]}"))
            continue
        seen[name] = line
        path = files.get(name)
        if path is None:
            problems.append(Problem(name, "missing", f"{ref} lists it but it is not under {root}"))
            continue
        attributes = {k: cells[c] for k, c in (("view_position", "View Position"), ("follow_up", "Follow-up #"))
                      if cells.get(c)}
        items.append(SourceItem(path, _rel(root, path), "", cells.get("Patient ID") or None, None, attributes,
                                findings=findings))
    return _scan_multilabel(root, "nih-cxr14", items, list(NIH_FINDINGS), problems)


def parse_nih_findings(text: str) -> tuple[tuple[str, ...], str]:
    """``"Effusion|Pneumonia"`` → (the findings, sorted as in NIH_FINDINGS), "" ; or ((), why not)."""
    tokens = [t.strip() for t in text.split("|")]
    if not text or any(not t for t in tokens):
        return (), f"{text!r} is empty or has an empty entry between '|'"
    if NO_FINDING in tokens:
        return ((), "") if tokens == [NO_FINDING] else ((), f"{text!r} combines '{NO_FINDING}' with findings")
    unknown = [t for t in tokens if t not in NIH_FINDINGS]
    if unknown:
        return (), f"unknown finding {unknown[0]!r} (NIH findings: {', '.join(NIH_FINDINGS)}, or '{NO_FINDING}')"
    return tuple(f for f in NIH_FINDINGS if f in tokens), ""


def _index_images(root: Path) -> dict[str, Path]:
    """File name → path of every image under ``root`` (NIH spreads them over images_0NN/images/)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if (path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                and not any(p.startswith(".") for p in path.relative_to(root).parts)):
            found.setdefault(path.name, path)
    return found


# --- chexpert --------------------------------------------------------------------------------


def scan_chexpert(src: str | Path, patient_regex: str | None = None, uncertain: str = "zeros") -> Scan:
    """CheXpert ``train.csv``/``valid.csv`` with the ``uncertain`` policy (see the module docstring)."""
    check_policy(uncertain)
    table = _table(src)
    items: list[SourceItem] = []
    problems: list[Problem] = []
    findings: list[str] | None = None
    base: Path | None = None
    seen: dict[str, int] = {}
    for line, cells, header in _records(table, ("Path",)):
        if findings is None:
            findings = [c for c in header if c not in CHEXPERT_METADATA]
            if not findings:
                raise LayoutError(f"CSV {table} has no finding columns besides {', '.join(CHEXPERT_METADATA)}")
        ref = f"{table.name}:{line}"
        if not cells:
            problems.append(Problem(ref, "malformed", "row has more cells than the header has columns"))
            continue
        positive, unsure, why = _chexpert_row(cells, findings, uncertain)
        if why:
            problems.append(Problem(ref, "bad-label", why))
            continue
        rel = cells["Path"]
        if not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
            problems.append(Problem(ref, "malformed", f"field 'Path' {rel!r} is not a relative path"))
            continue
        base = base or _chexpert_base(table, rel)
        path = base / rel
        if rel in seen:
            problems.append(Problem(ref, "duplicate", f"{rel} is already listed on line {seen[rel]}"))
            continue
        seen[rel] = line
        if not path.is_file():
            problems.append(Problem(rel, "missing", f"{ref} lists it but it is not on disk"))
            continue
        match = _PATIENT.search(rel)
        attributes = {k: cells[c] for k, c in (("sex", "Sex"), ("age", "Age"), ("view", "Frontal/Lateral"),
                                               ("ap_pa", "AP/PA")) if cells.get(c)}
        items.append(SourceItem(path, rel, "", match.group(1) if match else None, None, attributes,
                                findings=positive, uncertain=unsure))
    return _scan_multilabel(base or table.parent, "chexpert", items, findings or [], problems)


def check_policy(uncertain: str) -> str:
    if uncertain not in UNCERTAIN_POLICIES:
        raise LayoutError(f"--uncertain {uncertain!r} is not a policy: choose {', '.join(UNCERTAIN_POLICIES)}",
                          field="uncertain")
    return uncertain


def _chexpert_row(cells: dict[str, str], findings: list[str], policy: str
                  ) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(positive findings, uncertain findings kept as such, why the row is bad or "")."""
    positive, unsure = [], []
    for finding in findings:
        value = _CHEXPERT_VALUES.get(cells.get(finding, ""))
        if value is None:
            return (), (), f"field {finding!r}: {cells[finding]!r} is not 1, 0, -1 (uncertain) or blank"
        if value == 1 or (value == -1 and policy == "ones"):
            positive.append(finding)
        elif value == -1 and policy == "ignore":
            unsure.append(finding)
    return tuple(positive), tuple(unsure), ""


def _chexpert_base(table: Path, rel: str) -> Path:
    """The folder CheXpert paths are relative to: the CSV's, or its parent's (released CSVs)."""
    return table.parent if (table.parent / rel).exists() or not (table.parent.parent / rel).exists() \
        else table.parent.parent


def _scan_multilabel(root: Path, layout: str, items: list[SourceItem], findings: list[str],
                     problems: list[Problem]) -> Scan:
    scan = _scan(root, layout, items, [], problems)
    return Scan(scan.root, scan.layout, scan.items, [], scan.problems, findings=findings)


__all__ = ["NIH_FINDINGS", "NO_FINDING", "UNCERTAIN_POLICIES", "check_policy", "parse_nih_findings",
           "scan_chexpert", "scan_nih"]
