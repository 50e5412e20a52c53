"""``--layout nifti``: NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) as 2-D slice records, via nibabel.

Each volume is reoriented to the closest canonical RAS+ orientation
(``nibabel.as_closest_canonical``: voxel axis 0 → patient right, 1 → anterior,
2 → superior), then cut along ``slice_axis`` (``x`` sagittal, ``y`` coronal, ``z`` axial).
A slice is shown as radiology viewers do: superior (or anterior, for axial slices) at the
top, ``np.rot90`` of the RAS+ slice.

Intensities: one window per volume, from the ``percentiles`` of all its voxels, mapped onto
the 16-bit scale. A slice is *empty* (skipped, counted in the report) when less than
``min_foreground`` of its pixels are brighter than ``foreground_level`` of that window.

Patients: each volume is one patient, unless a CSV (``path,patient_id[,label]``, paths
relative to the CSV) maps volumes to patients. Patient ids and volume names enter the
catalog only as salted pseudonyms (``training.catalog.medical``); a record's
``source_path`` is ``VOLUME/zNNNN``. Spacing (mm, canonical axis order) and the volume's
original orientation code (e.g. ``LAS``) are kept as attributes.

``--layout nifti-mask`` (:func:`scan_nifti_mask`): ``SRC/images/`` holds the image volumes as
above and ``SRC/masks/`` one label volume per image volume with the same stem
(``images/case1.nii.gz`` + ``masks/case1.nii.gz``; ``.nii`` and ``.nii.gz`` match each other),
``masks/classes.txt`` naming the label values (line 1 = value 0, the background). A label
volume is reoriented the same way and cut at exactly the image's kept slices, so slice and
mask share one grid; it is never windowed (labels are values, not intensities).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from training.catalog.layouts import MASK_CLASSES_FILE, LayoutError, Problem, Scan, SourceItem, _directory, _scan
from training.catalog.medical import Decoded, frame_sha256, pseudonym, quantize, to_unit

SUFFIXES = (".nii", ".nii.gz")
AXES = {"x": 0, "y": 1, "z": 2}
LABEL_BY = ("folder", "none")
SINGLE_CLASS = "all"
DEFAULT_PERCENTILES = (0.5, 99.5)
FOREGROUND_LEVEL = 0.05
MIN_FOREGROUND = 0.01


@functools.lru_cache(maxsize=8)  # image and label volume of a few volumes being sliced at once
def _canonical(path: str, mtime_ns: int) -> tuple[np.ndarray, str, tuple[float, ...], str]:
    """(RAS+ float32 voxels, original axcodes, canonical spacing in mm, file sha256); cached
    so the readers of one volume's slices load it once."""
    import nibabel as nib

    data = Path(path).read_bytes()
    img = nib.load(path)
    original = "".join(nib.aff2axcodes(img.affine))
    canonical = nib.as_closest_canonical(img)
    voxels = np.asarray(canonical.get_fdata(dtype=np.float32))
    while voxels.ndim > 3 and voxels.shape[-1] == 1:
        voxels = voxels[..., 0]
    spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return voxels, original, spacing, hashlib.sha256(data).hexdigest()


def load_volume(path: Path) -> tuple[np.ndarray, str, tuple[float, ...], str]:
    """A NIfTI file as (RAS+ voxels (X, Y, Z) float32, original orientation code, spacing mm, sha256).

    Raises:
        BadInput: not a readable 3-D NIfTI volume.
    """
    from infra.errors import BadInput

    try:
        out = _canonical(str(path), os.stat(path).st_mtime_ns)
    except Exception as exc:  # nibabel's ImageFileError, gzip/zlib errors, truncated data …
        raise BadInput(f"not a readable NIfTI volume ({type(exc).__name__})") from None
    if out[0].ndim != 3:
        raise BadInput(f"is {out[0].ndim}-D (shape {out[0].shape}); only 3-D volumes are sliced")
    return out


def slice_of(voxels: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along canonical ``axis``, rotated for display (superior/anterior up)."""
    return np.rot90(voxels[(slice(None),) * axis + (index,)])  # a view: np.take copied 35 MB per slice


def nonempty_slices(unit: np.ndarray, axis: int, foreground_level: float = FOREGROUND_LEVEL,
                    min_foreground: float = MIN_FOREGROUND) -> list[int]:
    """Indices along ``axis`` of the slices of a [0, 1] volume that are not empty (see module doc)."""
    other = tuple(a for a in range(unit.ndim) if a != axis)
    fraction = (unit > foreground_level).mean(axis=other)
    return [int(i) for i in np.flatnonzero(fraction >= min_foreground)]


@dataclass(frozen=True)
class NiftiReader:
    """Slice ``index`` along ``axis`` of a volume through the volume's window (picklable)."""

    axis: str
    index: int
    low: float
    high: float
    percentiles: tuple[float, float]

    def __call__(self, item: SourceItem) -> Decoded:
        from infra.errors import BadInput
        from training.catalog.ingest import BadFile

        try:
            voxels, original, _, sha = load_volume(item.path)
        except BadInput as exc:
            raise BadFile("unreadable", f"{item.rel_path}: {exc}") from None
        image = slice_of(voxels, AXES[self.axis], self.index)
        pixels = quantize(to_unit(image, self.low, self.high), 16)
        steps = [
            {"step": "nifti-slice", "axis": self.axis, "index": self.index, "reoriented_from": original,
             "to": "RAS+ (closest canonical), rot90 for display"},
            {"step": "nifti-window", "percentiles": list(self.percentiles), "low": self.low, "high": self.high},
        ]
        return Decoded(np.ascontiguousarray(pixels), 16, "NIfTI", frame_sha256(sha, self.index), steps)


def scan_nifti(
    src: str | Path, patient_regex: str | None = None, *, salt: bytes, slice_axis: str = "z",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES, min_foreground: float = MIN_FOREGROUND,
    foreground_level: float = FOREGROUND_LEVEL, patients_csv: str | Path | None = None, label_by: str = "none",
) -> Scan:
    """Every NIfTI volume under ``src`` (a folder, or one file) as one item per non-empty slice.

    Args:
        src: folder searched recursively for ``*.nii`` / ``*.nii.gz``, or a single volume.
        patient_regex: refused (volumes are patients, or the CSV says).
        salt: per-dataset salt of the pseudonyms.
        slice_axis: ``x``, ``y`` or ``z`` of the canonical RAS+ volume.
        percentiles: (low, high) percentiles of the volume's voxels that make its window.
        min_foreground, foreground_level: the empty-slice rule (module docstring).
        patients_csv: optional CSV ``path,patient_id[,label]`` mapping volumes to patients.
        label_by: ``none`` (one class ``all``) or ``folder`` (first folder under ``src``);
            a ``label`` column of ``patients_csv`` wins over both.
    """
    if patient_regex is not None:
        raise LayoutError("layout 'nifti' takes no patient regex: each volume is a patient, or --patients CSV says")
    if slice_axis not in AXES:
        raise LayoutError(f"--slice-axis {slice_axis!r} is not one of x, y, z")
    if label_by not in LABEL_BY:
        raise LayoutError(f"--label-by {label_by!r} is not one of {', '.join(LABEL_BY)} for layout 'nifti'")
    low_p, high_p = percentiles
    if not 0 <= low_p < high_p <= 100:
        raise LayoutError(f"percentiles {percentiles} must satisfy 0 <= low < high <= 100")
    src_path = Path(os.path.abspath(Path(src).expanduser()))
    root = src_path.parent if src_path.is_file() else _directory(src_path)
    volumes = [src_path] if src_path.is_file() else _volumes(root)
    mapping = _patient_map(Path(patients_csv)) if patients_csv else {}
    items: list[SourceItem] = []
    problems: list[Problem] = []
    axis = AXES[slice_axis]
    for path in volumes:
        rel = path.relative_to(root).as_posix()
        volume = pseudonym(salt, "volume", rel)
        try:
            voxels, original, spacing, _ = load_volume(path)
        except Exception as exc:  # BadInput from load_volume
            problems.append(Problem(volume, "unreadable", str(exc)))
            continue
        low, high = (float(v) for v in np.nanpercentile(voxels, percentiles))
        kept = nonempty_slices(to_unit(voxels, low, high), axis, foreground_level, min_foreground)
        if not kept:
            problems.append(Problem(volume, "empty", f"no slice along {slice_axis} has {min_foreground:.0%} of its "
                            f"pixels above {foreground_level:.0%} of the window"))
            continue
        mapped = mapping.get(rel) or mapping.get(path.resolve().as_posix()) or {}
        patient = pseudonym(salt, "patient", mapped["patient_id"]) if mapped.get("patient_id") else volume
        label = mapped.get("label") or (_folder(root, path) if label_by == "folder" else SINGLE_CLASS)
        attributes = {
            "volume": volume, "slice_axis": slice_axis, "slices": str(voxels.shape[axis]),
            "slices_kept": str(len(kept)), "orientation": original,
            "spacing": "\\".join(f"{s:g}" for s in spacing), "shape": "x".join(map(str, voxels.shape)),
        }
        for index in kept:
            items.append(SourceItem(path, f"{volume}/{slice_axis}{index:04d}", label, patient, None,
                                    {**attributes, "slice_index": str(index)},
                                    reader=NiftiReader(slice_axis, index, low, high, (low_p, high_p))))
    return _scan(root, "nifti", items, sorted({i.label_name for i in items}), problems)


@dataclass(frozen=True)
class NiftiMaskReader:
    """Slice ``index`` along ``axis`` of an item's label volume as a uint8 label map (picklable).

    :func:`scan_nifti_mask` has checked the volume (readable, the image volume's shape, integer
    labels 0..255); what :func:`training.catalog.ingest.read_mask` checks next is per slice.
    """

    axis: str
    index: int

    def __call__(self, item: SourceItem) -> np.ndarray:
        from infra.errors import BadInput
        from training.catalog.ingest import BadFile

        try:
            voxels = load_volume(item.mask_path)[0]
        except BadInput as exc:
            raise BadFile("mask-unreadable", f"label volume of {item.rel_path}: {exc}") from None
        return np.ascontiguousarray(np.rint(slice_of(voxels, AXES[self.axis], self.index)).astype(np.uint8))


def scan_nifti_mask(src: str | Path, patient_regex: str | None = None, **options) -> Scan:
    """``SRC/images/`` NIfTI volumes sliced as :func:`scan_nifti` does, each slice paired with the
    same slice of ``SRC/masks/<stem>.nii[.gz]`` (module docstring).

    Takes :func:`scan_nifti`'s options; ``--label-by folder`` reads the first folder under
    ``images/``. An image volume without a label volume still gives items (``--require-mask``
    at ingest refuses them, one ``no-mask`` line per slice). One report line per volume, and
    none of its slices ingested, when its label volume is unreadable (``mask-unreadable``), has
    another shape than the image volume after reorientation (``mask-size``), or holds values
    that are not integer labels 0..255 (``mask-mode``); a label volume without an image volume
    (``orphan-mask``) and a stem used twice in ``masks/`` (``duplicate-mask``) are lines too.
    Per slice, ingest then checks the size, that the labels are declared classes, and
    ``--require-mask`` (:func:`training.catalog.ingest.read_mask`).
    """
    root = _directory(src)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise LayoutError(f"{src} has no {folder.name}/ folder (layout nifti-mask: images/ + masks/ of NIfTI "
                              "volumes matched by stem)")
    salt = options["salt"]
    found = scan_nifti(images_dir, patient_regex, **options)
    problems = list(found.problems)
    masks: dict[str, Path] = {}
    for path in _volumes(masks_dir):
        rel = path.relative_to(root).as_posix()
        if _stem(path) in masks:
            problems.append(Problem(pseudonym(salt, "volume", rel), "duplicate-mask",
                                    f"label volume stem {_stem(path)!r} is used twice in masks/"))
        else:
            masks[_stem(path)] = path
    by_volume: dict[Path, list[SourceItem]] = {}
    for item in found.items:
        by_volume.setdefault(item.path, []).append(item)
    items: list[SourceItem] = []
    for path, slices in by_volume.items():
        mask = masks.get(_stem(path))
        why = _label_volume_problem(mask, path) if mask is not None else None
        if why is not None:
            problems.append(Problem(slices[0].attributes["volume"], *why))
            continue
        items += [replace(i, mask_path=mask, mask_reader=None if mask is None else
                          NiftiMaskReader(i.attributes["slice_axis"], int(i.attributes["slice_index"])))
                  for i in slices]
    stems = {_stem(p) for p in _volumes(images_dir)}
    problems += [Problem(pseudonym(salt, "volume", p.relative_to(root).as_posix()), "orphan-mask",
                         "no image volume in images/ has this stem") for stem, p in sorted(masks.items())
                 if stem not in stems]
    listed = masks_dir / MASK_CLASSES_FILE
    mask_classes = [line.strip() for line in listed.read_text().splitlines() if line.strip()] if listed.is_file() \
        else None
    scan = _scan(root, "nifti-mask", items, sorted({i.label_name for i in items}), problems)
    return replace(scan, mask_classes=mask_classes)


def _label_volume_problem(mask: Path, image: Path) -> tuple[str, str] | None:
    """(kind, reason) when a label volume cannot pair with its image volume, else None."""
    from infra.errors import BadInput

    try:
        labels = load_volume(mask)[0]
    except BadInput as exc:
        return "mask-unreadable", f"label volume: {exc}"
    shape = load_volume(image)[0].shape  # readable: scan_nifti kept its slices
    if labels.shape != shape:
        return "mask-size", (f"label volume is {'x'.join(map(str, labels.shape))} after reorientation, the image "
                             f"volume {'x'.join(map(str, shape))}: they must be the same size")
    if not (np.all(labels == np.rint(labels)) and labels.min() >= 0 and labels.max() <= 255):
        return "mask-mode", "label volume holds values that are not integer labels 0..255"
    return None


def _stem(path: Path) -> str:
    """``case1`` of ``case1.nii.gz`` / ``case1.nii`` (any case of the suffix)."""
    name = path.name
    return next(name[: -len(s)] for s in sorted(SUFFIXES, key=len, reverse=True) if name.lower().endswith(s))


def _volumes(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.name.lower().endswith(SUFFIXES) and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _folder(root: Path, path: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else SINGLE_CLASS


def _patient_map(table: Path) -> dict[str, dict[str, str]]:
    """Volume path (as written, and resolved) → {patient_id, label} from the patients CSV."""
    if not table.is_file():
        raise LayoutError(f"--patients {table} does not exist")
    out: dict[str, dict[str, str]] = {}
    with table.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames or "patient_id" not in reader.fieldnames:
            raise LayoutError(f"--patients {table} needs a header with columns path,patient_id[,label]")
        for row in reader:
            rel = (row.get("path") or "").strip()
            if rel:
                cells = {"patient_id": (row.get("patient_id") or "").strip(), "label": (row.get("label") or "").strip()}
                out[Path(rel).as_posix()] = cells
                out[(table.parent / rel).resolve().as_posix()] = cells
    return out
