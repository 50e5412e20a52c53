"""Source layouts: what a folder of medical images holds, found without reading a pixel.

``synthray catalog ingest SRC --layout NAME`` starts here. Each adapter maps one on-disk
convention (a folder per class, Chen 2019's knee KL folders, MURA's CSVs, a plain CSV) onto
one ``Scan``: the items with the label, patient and split the source states, the classes in
label-index order, and the problems met on the way. Problems are collected, not raised, so
one bad row does not stop a 40 000-image ingest; only a source that cannot be read as the
layout at all raises ``LayoutError``. Pixels are the reader's business: zero-size,
unreadable and wrong-mode files are caught there, not here.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from infra.errors import BadInput
from infra.names import name_problem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Split folder / column spellings and the split they mean ("valid" is MURA's and Keras's).
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "test": "test"}


@dataclass(frozen=True)
class SourceItem:
    """One image file and the facts the layout states about it."""

    path: Path
    rel_path: str
    label_name: str
    patient_id: str | None
    split: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    #: Decodes this item instead of the PNG/JPEG reader (DICOM frames, NIfTI slices): a
    #: picklable callable ``(item) -> training.catalog.medical.Decoded`` that raises BadFile.
    reader: Callable[[SourceItem], Any] | None = None
    #: Multi-label layouts (``training.catalog.chest``): the image's positive findings (empty =
    #: "No Finding") and the findings the source marks uncertain and the policy keeps as such.
    findings: tuple[str, ...] | None = None
    uncertain: tuple[str, ...] = ()
    #: The item's segmentation mask (uint8 label map PNG, same size), when the layout pairs one.
    mask_path: Path | None = None
    #: Decodes the mask instead of the PNG reader (slices of NIfTI label volumes): a picklable
    #: callable ``(item) -> uint8 (H, W) label map`` that raises BadFile (``mask-unreadable``).
    mask_reader: Callable[[SourceItem], Any] | None = None


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file or row; the rest of the source is still usable."""

    rel_path: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Scan:
    """Everything a layout found under ``root``; ``classes[i]`` is the name of label ``i``."""

    root: Path
    layout: str
    items: list[SourceItem]
    classes: list[str]
    problems: list[Problem]
    #: The K findings of a multi-label layout (items carry ``findings``); None otherwise.
    findings: list[str] | None = None
    #: Names of the mask values (index = value, 0 = background) the source declares, if any.
    mask_classes: list[str] | None = None


class LayoutError(BadInput):
    """The source as a whole cannot be read in the requested layout: nothing to ingest."""


def scan(src: str | Path, layout: str, patient_regex: str | None = None, **options: Any) -> Scan:
    """Scan ``src`` with the named layout (a key of ``LAYOUTS``); ``options`` are the
    layout's own keyword arguments (the medical layouts' window, salt, slice axis …)."""
    try:
        adapter = LAYOUTS[layout]
    except KeyError:
        known = ", ".join(sorted(LAYOUTS))
        raise LayoutError(f"unknown layout {layout!r}; known layouts: {known}") from None
    return adapter(src, patient_regex=patient_regex, **options)


# --- imagefolder ---------------------------------------------------------------------------


def scan_imagefolder(src: str | Path, patient_regex: str | None = None) -> Scan:
    """``SRC/<class>/**/<image>``: torchvision's ImageFolder, the lowest common denominator.

    Patients are only known when ``patient_regex`` can find them in the file names.
    """
    root = _directory(src)
    patient_of = _patient_matcher(patient_regex)
    all_dirs = {d.name: d for d in _visible(root.iterdir()) if d.is_dir()}
    class_dirs = {name: d for name, d in all_dirs.items() if name_problem(name) is None}
    items = [
        _item(root, path, name, patient_of(path.stem))
        for name, class_dir in class_dirs.items()
        for path in _images(class_dir)
    ]
    problems = [
        Problem(_rel(root, path), "unlabelled", "image lies directly in the source folder, "
                "outside any class folder")
        for path in _images(root, recursive=False)
    ] + [
        Problem(_rel(root, path), "bad-label", f"class folder {name!r} {name_problem(name)}")
        for name, d in all_dirs.items() if name not in class_dirs
        for path in _images(d)
    ]
    return _scan(root, "imagefolder", items, _class_order(class_dirs), problems)


# --- chen-kl -------------------------------------------------------------------------------

KL_GRADES = ("0", "1", "2", "3", "4")
CHEN_CLASSES = tuple(f"KL{grade}" for grade in KL_GRADES)
#: OAI patient ids are 7 digits at the start of the file name (``9003175_1.png``, ``9003175L.png``).
CHEN_PATIENT_REGEX = r"^(?P<patient>\d{7})"


def scan_chen_kl(src: str | Path, patient_regex: str | None = None) -> Scan:
    """Chen et al. 2019 knee KL data: ``SRC/{train,val,test}/{0..4}/*.png`` (299x299 crops).

    All five grades are classes even when a folder is absent, so label ``i`` is always KL
    grade ``i``. Other top-level folders (the dataset's ``auto_test/`` re-crops the test
    knees automatically) are not splits and are left alone.
    """
    root = _directory(src)
    patient_of = _patient_matcher(patient_regex or CHEN_PATIENT_REGEX)
    split_dirs = [d for d in _visible(root.iterdir()) if d.is_dir() and d.name in SPLIT_NAMES]
    if not split_dirs:
        raise LayoutError(f"{src} has none of the split folders train/, val/ (or valid/), test/")
    items: list[SourceItem] = []
    problems: list[Problem] = []
    for split_dir in split_dirs:
        split = SPLIT_NAMES[split_dir.name]
        for path in _images(split_dir):
            folder, *rest = path.relative_to(split_dir).parts
            if rest and folder in KL_GRADES:
                items.append(_item(root, path, f"KL{folder}", patient_of(path.stem), split))
                continue
            where = f"in folder {folder!r}" if rest else "directly in the split folder"
            problems.append(Problem(_rel(root, path), "unlabelled",
                                    f"image lies {where}, not in a KL grade folder 0-4"))
    return _scan(root, "chen-kl", items, CHEN_CLASSES, problems)


# --- mura ----------------------------------------------------------------------------------

MURA_DIR = "MURA-v1.1"
MURA_CLASSES = ("negative", "positive")
#: CSV prefix -> split; MURA ships train and valid, the test set is held back by Stanford.
MURA_SPLITS = {"train": "train", "valid": "val"}
_MURA_VERDICT = re.compile(r"_(positive|negative)$")


def scan_mura(src: str | Path, patient_regex: str | None = None) -> Scan:
    """MURA v1.1: SRC is ``MURA-v1.1/`` or its parent; the CSVs say which images count.

    Rows read ``MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative/image1.png``; rel_paths
    keep that form (relative to the parent of ``MURA-v1.1/``) so they match the CSVs. The
    study label comes from ``*_labeled_studies.csv``; the folder suffix is a cross-check and
    the fallback for studies that file does not list.
    """
    if patient_regex is not None:
        raise LayoutError("layout 'mura' takes no patient regex: patients are the "
                          "patientNNNNN folders")
    base = _mura_base(_directory(src))
    items: list[SourceItem] = []
    problems: list[Problem] = []
    for prefix, split in MURA_SPLITS.items():
        study_labels = _mura_study_labels(base, prefix, problems)
        _scan_mura_split(base, prefix, split, study_labels, items, problems)
    return _scan(base, "mura", items, MURA_CLASSES, problems)


def _mura_base(root: Path) -> Path:
    """The folder MURA's CSV paths are relative to: the parent of ``MURA-v1.1/``."""
    if (root / MURA_DIR).is_dir():
        return root
    if root.name == MURA_DIR:
        return root.parent
    raise LayoutError(f"{root} neither is nor contains a {MURA_DIR}/ folder")


def _mura_study_labels(base: Path, prefix: str, problems: list[Problem]) -> dict[str, str]:
    """Study folder (no trailing slash) -> class name, from ``<prefix>_labeled_studies.csv``."""
    table = base / MURA_DIR / f"{prefix}_labeled_studies.csv"
    rel_table = _rel(base, table)
    if not table.is_file():
        problems.append(Problem(rel_table, "missing",
                                "labels file is missing; study labels come from folder names"))
        return {}
    labels: dict[str, str] = {}
    for line, cells in _csv_rows(table):
        value = cells[1] if len(cells) > 1 else ""
        if value not in ("0", "1"):
            problems.append(Problem(f"{rel_table}:{line}", "unlabelled",
                                    f"label {value!r} is neither 0 (normal) nor 1 (abnormal)"))
            continue
        labels[cells[0].rstrip("/")] = MURA_CLASSES[int(value)]
    return labels


def _scan_mura_split(base: Path, prefix: str, split: str, study_labels: dict[str, str],
                     items: list[SourceItem], problems: list[Problem]) -> None:
    """Add the images ``<prefix>_image_paths.csv`` lists to ``items`` (or ``problems``)."""
    table = base / MURA_DIR / f"{prefix}_image_paths.csv"
    if not table.is_file():
        raise LayoutError(f"{table} is missing; layout 'mura' needs it to know the images")
    first_line: dict[str, int] = {}
    for line, cells in _csv_rows(table):
        rel = PurePosixPath(cells[0]).as_posix()
        if rel in first_line:
            problems.append(Problem(rel, "duplicate", f"{table.name} lists it on lines "
                                    f"{first_line[rel]} and {line}"))
            continue
        first_line[rel] = line
        found = _mura_image(base, rel, split, study_labels, f"{table.name} line {line}")
        _collect(found, items, problems)


def _mura_image(base: Path, rel: str, split: str, study_labels: dict[str, str],
                where: str) -> SourceItem | Problem:
    """One listed image as an item, or the reason it cannot be one."""
    parts = PurePosixPath(rel).parts
    if len(parts) != 6 or parts[0] != MURA_DIR:
        return Problem(rel, "unlabelled", f"{where} is not "
                       f"{MURA_DIR}/<split>/<body part>/<patient>/<study>/<image>")
    path = base / rel
    if not path.is_file():
        return Problem(rel, "missing", f"{where} lists it but it is not on disk")
    _, _, body_part, patient, study_dir, _ = parts
    label, why_not = _mura_label(study_dir, study_labels.get(PurePosixPath(rel).parent.as_posix()))
    if label is None:
        return Problem(rel, "unlabelled", why_not)
    attributes = {"body_part": body_part, "study": study_dir.partition("_")[0]}
    return _item(base, path, label, patient, split, attributes)


def _mura_label(study_dir: str, listed: str | None) -> tuple[str | None, str]:
    """(label, why there is none): the labeled_studies label, checked against the folder."""
    match = _MURA_VERDICT.search(study_dir)
    folder = match.group(1) if match else None
    if listed and folder and listed != folder:
        return None, f"labeled_studies says {listed} but the study folder says {folder}"
    if listed or folder:
        return listed or folder, ""
    return None, "study is not in labeled_studies and its folder has no _positive/_negative suffix"


# --- csv -----------------------------------------------------------------------------------

CSV_REQUIRED = ("path", "label")
CSV_COLUMNS = (*CSV_REQUIRED, "patient_id", "split", "mask")


def scan_csv(src: str | Path, patient_regex: str | None = None) -> Scan:
    """A CSV with a header and columns ``path,label[,patient_id][,split][,mask]``: any other layout.

    Paths (and ``mask`` paths, a uint8 label-map PNG per image) are relative to the CSV's
    folder (absolute ones allowed). ``patient_regex`` fills
    in patients for rows without a ``patient_id``. Other non-empty columns become attributes.
    Classes are every label a row declares, so a missing file does not shift label indices.
    """
    table = Path(os.path.abspath(Path(src).expanduser()))
    if not table.is_file():
        raise LayoutError(f"CSV {src} does not exist")
    root, patient_of = table.parent, _patient_matcher(patient_regex)
    items: list[SourceItem] = []
    problems: list[Problem] = []
    declared: set[str] = set()
    first_line: dict[str, int] = {}
    for line, cells in _csv_records(table):
        ref = f"{table.name}:{line}"
        if not cells["path"] or not cells["label"]:
            empty = "path" if not cells["path"] else "label"
            problems.append(Problem(ref, "unlabelled", f"row has an empty {empty}"))
            continue
        if (why := name_problem(cells["label"])) is not None:
            # a label becomes a folder (export) and an object-key part: one path component only
            problems.append(Problem(ref, "bad-label", f"label {cells['label']!r} {why}"))
            continue
        declared.add(cells["label"])
        path = Path(os.path.normpath(root / cells["path"]))
        rel = _rel(root, path)
        if rel in first_line:
            problems.append(Problem(ref, "duplicate", f"{rel} is already listed on line "
                                    f"{first_line[rel]}; this row is ignored"))
            continue
        first_line[rel] = line
        _collect(_csv_item(root, path, cells, ref, patient_of), items, problems)
    return _scan(root, "csv", items, _class_order(declared), problems)


def _csv_item(root: Path, path: Path, cells: dict[str, str], ref: str,
              patient_of: Callable[[str], str | None]) -> SourceItem | Problem:
    """One row with a path and a label as an item, or the reason it cannot be one."""
    split = cells.get("split", "")
    if split and split not in SPLIT_NAMES:
        return Problem(ref, "unlabelled", f"split {split!r} is not one of train, val, test")
    if not path.is_file():
        return Problem(_rel(root, path), "missing", f"{ref} lists it but it is not on disk")
    patient = cells.get("patient_id") or patient_of(path.stem)
    extra = {k: v for k, v in cells.items() if v and k not in CSV_COLUMNS}
    item = _item(root, path, cells["label"], patient, SPLIT_NAMES.get(split), extra)
    if mask := cells.get("mask"):
        mask_path = Path(os.path.normpath(root / mask))
        if not mask_path.is_file():
            return Problem(_rel(root, path), "missing-mask", f"{ref} lists mask {mask} but it is not on disk")
        item = replace(item, mask_path=mask_path)
    return item


# --- image-mask ----------------------------------------------------------------------------

MASK_CLASSES_FILE = "classes.txt"


def scan_image_mask(src: str | Path, patient_regex: str | None = None) -> Scan:
    """``SRC/images/`` + ``SRC/masks/``: images and their label-map PNGs, matched by file stem.

    ``images/`` is an image folder (``images/<class>/…``); images lying directly in it get the
    class ``image`` (a segmentation set without image labels). ``masks/`` holds one uint8 PNG
    per image anywhere below it, named by the image's stem; ``masks/classes.txt`` names the
    mask values, one per line, line 1 = value 0 (the background). An image without a mask is
    still an item (``--require-mask`` at ingest refuses it); a mask stem used twice, or a mask
    without an image, is a problem.
    """
    root = _directory(src)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise LayoutError(f"{src} has no {folder.name}/ folder (layout image-mask: images/ + masks/)")
    patient_of = _patient_matcher(patient_regex)
    problems: list[Problem] = []
    masks: dict[str, Path] = {}
    for path in _images(masks_dir):
        if path.stem in masks:
            problems.append(Problem(_rel(root, path), "duplicate-mask",
                                    f"mask stem {path.stem!r} is also {_rel(root, masks[path.stem])}"))
        else:
            masks[path.stem] = path
    items: list[SourceItem] = []
    for path in _images(images_dir):
        folder, *rest = path.relative_to(images_dir).parts
        label = folder if rest else "image"
        if (why := name_problem(label)) is not None:
            problems.append(Problem(_rel(root, path), "bad-label", f"class folder {label!r} {why}"))
            continue
        items.append(replace(_item(root, path, label, patient_of(path.stem)), mask_path=masks.get(path.stem)))
    stems = {i.path.stem for i in items}
    problems += [Problem(_rel(root, p), "orphan-mask", "no image in images/ has this stem")
                 for stem, p in sorted(masks.items()) if stem not in stems]
    mask_classes = None
    if (listed := masks_dir / MASK_CLASSES_FILE).is_file():
        mask_classes = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    scan = _scan(root, "image-mask", items, _class_order({i.label_name for i in items}), problems)
    return replace(scan, mask_classes=mask_classes)


def _csv_records(table: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, stripped cells by column name) of each row of a CSV with a header."""
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = _csv_header(table, reader.fieldnames)
        for row in reader:   # cells beyond the header sit under key None: dropped
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}


def _csv_header(table: Path, fieldnames: Iterable[str] | None) -> list[str]:
    """The stripped header; a missing one or a missing required column ends the scan."""
    if fieldnames is None:
        raise LayoutError(f"CSV {table} is empty; it needs a header with columns "
                          f"{','.join(CSV_REQUIRED)}")
    header = [name.strip() for name in fieldnames]
    for column in CSV_REQUIRED:
        if column not in header:
            raise LayoutError(f"CSV {table} has no {column!r} column (header: {','.join(header)})")
    return header


# --- shared helpers ------------------------------------------------------------------------


def _directory(src: str | Path) -> Path:
    """``src`` as an absolute directory (symlinks kept, so paths stay as the user sees them)."""
    root = Path(os.path.abspath(Path(src).expanduser()))
    if not root.exists():
        raise LayoutError(f"source {src} does not exist")
    if not root.is_dir():
        raise LayoutError(f"source {src} is not a directory")
    return root


def _visible(paths: Iterable[Path]) -> list[Path]:
    """Sorted, without hidden entries (``.DS_Store``, ``.git``, macOS ``._`` forks)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def _images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted, skipping anything hidden or under a hidden dir."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _patient_matcher(regex: str | None) -> Callable[[str], str | None]:
    """File stem -> patient id via ``regex`` (group ``patient``, else group 1, else the match)."""
    if regex is None:
        return lambda stem: None
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise LayoutError(f"patient regex {regex!r} is invalid: {err}") from None
    group: str | int = "patient" if "patient" in pattern.groupindex else 1 if pattern.groups else 0

    def patient_of(stem: str) -> str | None:
        match = pattern.search(stem)
        return (match.group(group) or None) if match else None

    return patient_of


def _class_order(names: Collection[str]) -> list[str]:
    """Sorted names; numerically when all are integers, so "2" comes before "10"."""
    if all(re.fullmatch(r"[0-9]+", n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _rel(root: Path, path: Path) -> str:
    """POSIX path relative to ``root``; absolute POSIX for a path outside it (CSV layout)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _item(root: Path, path: Path, label: str, patient: str | None, split: str | None = None,
          attributes: dict[str, str] | None = None) -> SourceItem:
    return SourceItem(path, _rel(root, path), label, patient, split, attributes or {})


def _collect(found: SourceItem | Problem, items: list[SourceItem],
             problems: list[Problem]) -> None:
    if isinstance(found, SourceItem):
        items.append(found)
    else:
        problems.append(found)


def _csv_rows(table: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of a header-less CSV, skipping blank lines."""
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        for row in reader:
            cells = [cell.strip() for cell in row]
            if any(cells):
                yield reader.line_num, cells


def _scan(root: Path, layout: str, items: list[SourceItem], classes: Sequence[str],
          problems: list[Problem]) -> Scan:
    return Scan(root, layout, sorted(items, key=lambda i: i.rel_path), list(classes), problems)


def _lazy(module: str, function: str) -> Callable[..., Scan]:
    """A layout whose module (and its pydicom / nibabel) is imported only when used."""

    def adapter(src: str | Path, **options: Any) -> Scan:
        import importlib

        return getattr(importlib.import_module(module), function)(src, **options)

    return adapter


LAYOUTS: dict[str, Callable[..., Scan]] = {
    "imagefolder": scan_imagefolder,
    "chen-kl": scan_chen_kl,
    "mura": scan_mura,
    "csv": scan_csv,
    "image-mask": scan_image_mask,
    "dicom": _lazy("training.catalog.dicom", "scan_dicom"),
    "nifti": _lazy("training.catalog.nifti", "scan_nifti"),
    "nifti-mask": _lazy("training.catalog.nifti", "scan_nifti_mask"),
    "nih-cxr14": _lazy("training.catalog.chest", "scan_nih"),
    "chexpert": _lazy("training.catalog.chest", "scan_chexpert"),
}
