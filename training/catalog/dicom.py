"""``--layout dicom``: a tree of DICOM files (or a DICOMDIR's folder) as catalog records.

Scanning reads headers only (pixel data deferred) and decides, per file, what enters the
catalog; decoding happens later, in the ingest's readers, one frame at a time.

Pixels follow the DICOM grayscale pipeline (PS3.3 C.11, PS3.4 N.2.1), in this order:

1. **Modality LUT** (C.11.1: Rescale Slope/Intercept or a Modality LUT Sequence) via
   ``pydicom.pixels.apply_modality_lut``: stored values become meaningful units (HU for CT).
2. **VOI** (C.11.2) by ``--window``: ``auto`` uses the file's own Window Center/Width or VOI
   LUT Sequence (``pydicom.pixels.apply_voi_lut``, first window) and falls back to a
   percentile window (0.5–99.5 %) when the file has none; ``WC,WW`` applies that linear
   window to the modality values (so CT windows are in HU); ``none`` keeps the whole range
   the modality LUT can produce from ``BitsStored`` bits.
3. **MONOCHROME1** (C.7.6.3.1.2: minimum = white) inverted to MONOCHROME2, after the VOI.
4. **BitsStored** (C.7.6.3.1.1): sources of ≤ 8 stored bits give 8-bit images, others the
   full 16-bit scale, so 10-, 12- and 15-bit data keep their precision into the PNG.

Identifiers (C.7.1.1 Patient, C.7.2.1 General Study, C.7.3.1 General Series, C.12.1 SOP
Common) enter records only as salted pseudonyms (``training.catalog.medical``); file and
folder names never do: a record's ``source_path`` is ``STUDY/SERIES/NNNNN-SOP[/fMMMMM]``
built from pseudonyms and the slice rank, and a file that cannot be read is named in the
report by the first 16 hex digits of its SHA-256 (find it with ``sha256sum``).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.errors import BadInput
from training.catalog.layouts import LayoutError, Problem, Scan, SourceItem, _directory, _scan
from training.catalog.medical import Decoded, frame_sha256, pseudonym, quantize, to_unit

#: Technical attributes kept on each record (DICOM keyword → record attribute key).
KEPT_ATTRIBUTES = {
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "ViewPosition": "view_position",
    "PixelSpacing": "pixel_spacing",
    "Manufacturer": "manufacturer",
    "Rows": "rows",
    "Columns": "columns",
    "BitsStored": "bits_stored",
    "PhotometricInterpretation": "photometric_interpretation",
}
#: ``--label-by`` choices: a kept attribute, the first folder under SRC, or one class ``all``.
LABEL_BY = ("modality", "body_part", "view_position", "folder", "none")
SINGLE_CLASS = "all"
#: Fallback window of ``--window auto`` when a file has none (percentiles of the frame).
AUTO_PERCENTILES = (0.5, 99.5)
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

#: Which package decodes a transfer syntax that pydicom cannot decode by itself.
CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg + pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg + pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg + pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "Pillow (or pylibjpeg + pylibjpeg-openjpeg)",
    "1.2.840.10008.1.2.4.91": "Pillow (or pylibjpeg + pylibjpeg-openjpeg)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
}


def _quiet_reads() -> None:
    """Never validate (and so never quote) values on read: pydicom's warnings for a malformed
    date or name would carry the value, a birth date or patient name, into the logs."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


# -- options --------------------------------------------------------------------------------


def parse_window(text: str) -> str | tuple[float, float]:
    """``auto`` | ``none`` | ``WC,WW`` (center and width in modality units, width > 0).

    Raises:
        BadInput: anything else (names ``--window``).
    """
    text = text.strip().lower()
    if text in ("auto", "none"):
        return text
    center, sep, width = text.partition(",")
    try:
        wc, ww = float(center), float(width)
    except ValueError:
        wc = ww = float("nan")
    if not sep or not np.isfinite([wc, ww]).all() or ww <= 0:
        raise BadInput(f"--window {text!r} is invalid: use auto, none or CENTER,WIDTH (e.g. 40,400 for a CT "
                       "soft-tissue window in HU; width > 0)", field="window")
    return wc, ww


# -- the reader (runs in the ingest's worker threads or Ray tasks) -----------------------------


@dataclass(frozen=True)
class DicomReader:
    """Decodes frame ``frame`` of a DICOM file through the grayscale pipeline (module docstring).

    Picklable (ingest's Ray engine ships it with the item). Raises ``BadFile`` (``unreadable``
    or ``codec-missing``) naming the record's pseudonymous path, never the file name.
    """

    window: str | tuple[float, float] = "auto"
    frame: int | None = None  # None: a single-frame object

    def __call__(self, item: SourceItem) -> Decoded:
        from training.catalog.ingest import BadFile

        try:
            data = item.path.read_bytes()
        except OSError as exc:
            raise BadFile("unreadable", f"{item.rel_path} cannot be read: {exc.strerror or exc}") from None
        try:
            return decode_frame(data, self.window, self.frame)
        except CodecMissing as exc:
            raise BadFile("codec-missing", f"{item.rel_path}: {exc}") from None
        except BadInput as exc:
            raise BadFile("unreadable", f"{item.rel_path}: {exc}") from None
        except Exception as exc:  # a damaged file is one report line, never the end of the ingest
            raise BadFile("unreadable", f"{item.rel_path}: pixel data cannot be decoded "
                          f"({type(exc).__name__}: {_first_line(exc)})") from None


class CodecMissing(BadInput):
    """The transfer syntax of a file has no installed decoder."""


def codec_problem(transfer_syntax: Any) -> str | None:
    """Why pixel data in ``transfer_syntax`` cannot be decoded here, or None if it can.

    The message names the transfer syntax (name and UID) and the package(s) that decode it.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name} ({uid}) has no pixel decoder in pydicom"
    if decoder.is_available:
        return None
    package = CODEC_PACKAGES.get(str(uid)) or "; ".join(decoder.missing_dependencies) or "a pydicom decoding plugin"
    return f"transfer syntax {uid.name} ({uid}) needs a decoder that is not installed: install {package}"


def decode_frame(data: bytes, window: str | tuple[float, float] = "auto", frame: int | None = None) -> Decoded:
    """One frame of DICOM bytes through modality LUT → VOI → MONOCHROME1 inversion → BitsStored.

    Args:
        data: the file's bytes (Part 10, or a raw dataset with an explicit transfer syntax).
        window: ``"auto"``, ``"none"`` or ``(center, width)`` in modality-LUT units.
        frame: the 0-based frame of a multi-frame object; None for single-frame objects.

    Returns:
        A :class:`Decoded` with (Rows, Columns) uint16 pixels (uint8 when BitsStored ≤ 8),
        MONOCHROME2, and the steps taken with their parameters.

    Raises:
        CodecMissing: no decoder for the transfer syntax (the message names the package).
        BadInput: not a grayscale image (PhotometricInterpretation other than MONOCHROME1/2,
            SamplesPerPixel ≠ 1) or no pixel data.
    """
    import io

    import pydicom
    from pydicom.pixels import apply_modality_lut, pixel_array

    _quiet_reads()
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise BadInput("has no pixel data")
    if photometric not in GRAYSCALE or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise BadInput(f"PhotometricInterpretation {photometric or 'missing'}: only grayscale "
                       f"(MONOCHROME1/MONOCHROME2) images are ingested")
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is not None and (problem := codec_problem(tsyntax)):
        raise CodecMissing(problem)
    stored = pixel_array(ds, index=frame) if frame is not None else ds.pixel_array
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    steps: list[dict] = []
    ds = pixel_header(ds, frame or 0)  # enhanced multi-frame: the frame's rescale and window

    modality = apply_modality_lut(stored, ds)
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds
    steps.append({"step": "dicom-modality-lut", "applied": bool(has_rescale),
                  "slope": float(ds.get("RescaleSlope", 1) or 1), "intercept": float(ds.get("RescaleIntercept", 0) or 0),
                  "units": str(ds.get("RescaleType", "HU" if ds.get("Modality") == "CT" else "")) or None})

    unit, voi = _voi(modality, ds, window, bits)
    steps.append({"step": "dicom-voi", **voi})

    inverted = photometric == "MONOCHROME1"
    if inverted:
        unit = 1.0 - unit
    steps.append({"step": "dicom-monochrome", "source": photometric, "inverted": inverted})

    pixels = quantize(unit, bits)
    steps.append({"step": "dicom-bits", "bits_stored": bits, "output_bits": 8 if bits <= 8 else 16})
    data_sha = hashlib.sha256(data).hexdigest()
    return Decoded(pixels, bits, f"DICOM {photometric} {bits}-bit", frame_sha256(data_sha, frame), steps)


#: What the modality LUT and VOI steps read (PS3.3 C.7.6.3 Image Pixel, C.11.1, C.11.2).
_PIXEL_KEYWORDS = ("Modality", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation",
                   "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
                   "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")


def pixel_header(ds: Any, frame: int = 0) -> Any:
    """The attributes that transform frame ``frame``'s pixels, as one flat dataset.

    Enhanced multi-frame objects (PS3.3 C.7.6.16, e.g. Enhanced CT) keep Rescale Slope and
    Intercept in the Pixel Value Transformation and the window in the Frame VOI LUT
    functional groups, where ``pydicom.pixels.apply_modality_lut`` / ``apply_voi_lut`` do not
    look. The shared groups apply first, the frame's own groups override them.
    """
    from pydicom.dataset import Dataset

    header = Dataset()
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            setattr(header, keyword, ds[keyword].value)
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups = ([shared[0]] if shared else []) + ([per_frame[frame]] if frame < len(per_frame) else [])
    for group in groups:
        for macro in group:
            if macro.VR != "SQ" or not macro.value:
                continue
            for element in macro.value[0]:
                if element.keyword in _PIXEL_KEYWORDS:
                    setattr(header, element.keyword, element.value)
    return header


def _voi(values: np.ndarray, ds: Any, window: str | tuple[float, float], bits: int) -> tuple[np.ndarray, dict]:
    """Modality values → [0, 1] by the requested VOI, plus what was done."""
    from pydicom.pixels import apply_voi_lut

    if isinstance(window, tuple):
        wc, ww = window
        low, high = wc - 0.5 - (ww - 1) / 2, wc - 0.5 + (ww - 1) / 2  # PS3.3 C.11.2.1.2.1, LINEAR
        return to_unit(values, low, high), {"window": "explicit", "center": wc, "width": ww}
    if window == "none":
        low, high = _modality_range(ds, bits)
        return to_unit(values, low, high), {"window": "none", "low": low, "high": high}
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        if "VOILUTSequence" in ds:  # a LUT is indexed by the (integer) modality values
            values = np.rint(values).astype(np.int64)
        out = apply_voi_lut(values, ds, index=0)
        low, high = _voi_output_range(ds)
        source = "VOILUTSequence" if "VOILUTSequence" in ds else "WindowCenter/WindowWidth"
        info: dict[str, Any] = {"window": "auto", "from": source}
        if source != "VOILUTSequence":
            info |= {"center": _first(ds.WindowCenter), "width": _first(ds.WindowWidth),
                     "function": str(ds.get("VOILUTFunction", "LINEAR"))}
        return to_unit(out, low, high), info
    lo_p, hi_p = AUTO_PERCENTILES
    low, high = (float(v) for v in np.percentile(values, AUTO_PERCENTILES))
    if high <= low:  # a flat frame: keep it flat rather than dividing by zero
        low, high = _modality_range(ds, bits)
    return to_unit(values, low, high), {"window": "auto", "from": f"percentiles {lo_p:g}-{hi_p:g}",
                                        "low": low, "high": high}


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS (several windows: the first is the default)."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _stored_range(ds: Any, bits: int) -> tuple[int, int]:
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality_range(ds: Any, bits: int) -> tuple[float, float]:
    """The range the modality LUT gives the ``bits``-bit stored range (a LUT: its entries)."""
    from pydicom.pixels import apply_modality_lut

    low, high = _stored_range(ds, bits)
    ends = apply_modality_lut(np.array([low, high], dtype=np.int64), ds).astype(np.float64)
    if "ModalityLUTSequence" in ds:
        lut = ds.ModalityLUTSequence[0]
        lut_bits = int(lut.LUTDescriptor[2])
        ends = np.array([0.0, 2.0**lut_bits - 1])
    return float(ends.min()), float(ends.max())


def _voi_output_range(ds: Any) -> tuple[float, float]:
    """The range ``apply_voi_lut`` maps into: its windowing output range, or the LUT's bits.

    Found by pushing the extremes through the same library call, so this never disagrees
    with pydicom's own convention (windowing outputs the modality-LUT range of the stored bits).
    """
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds:
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, 2.0**lut_bits - 1
    ends = apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0).astype(np.float64)
    return float(ends.min()), float(ends.max())


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


# -- the scan (headers only) ---------------------------------------------------------------


@dataclass
class _Header:
    path: Path
    sha: str
    study: str
    series: str
    sop: str
    patient: str | None
    frames: int
    order: tuple
    label: str
    attributes: dict[str, str]


def scan_dicom(
    src: str | Path, patient_regex: str | None = None, *, salt: bytes, window: str | tuple[float, float] = "auto",
    allow_burned_in: bool = False, label_by: str = "modality",
) -> Scan:
    """Every DICOM image under ``src`` (a folder, or a DICOMDIR file: its folder) as items.

    Args:
        src: the folder (every file is tried; DICOMDIR files and non-image objects are skipped).
        patient_regex: refused: patients come from PatientID.
        salt: the per-dataset salt of the pseudonyms (``training.catalog.medical.dataset_salt``).
        window: passed to each item's :class:`DicomReader`.
        allow_burned_in: ingest objects with BurnedInAnnotation = YES (C.7.6.1.1.3) too.
        label_by: one of ``LABEL_BY``; ``folder`` is the first folder under ``src`` (only safe
            when you named those folders: PACS exports name folders after patients).

    Items are one per frame (multi-frame objects) or per file, and each series is ordered by
    the position along its slice normal (ImagePositionPatient · normal of
    ImageOrientationPatient) when every file has both, else by InstanceNumber.
    """
    if patient_regex is not None:
        raise LayoutError("layout 'dicom' takes no patient regex: patients come from PatientID (hashed)")
    if label_by not in LABEL_BY:
        raise LayoutError(f"--label-by {label_by!r} is not one of {', '.join(LABEL_BY)}")
    src_path = Path(src)
    root = _directory(src_path.parent if src_path.is_file() and src_path.name.upper() == "DICOMDIR" else src_path)
    headers: list[_Header] = []
    problems: list[Problem] = []
    for path in _files(root):
        found = _header(root, path, salt, label_by, allow_burned_in)
        if isinstance(found, Problem):
            problems.append(found)
        elif found is not None:
            headers.append(found)
    items = [item for series in _by_series(headers).values() for item in _series_items(series, window)]
    classes = sorted({i.label_name for i in items})
    return _scan(root, "dicom", items, classes, problems)


def _files(root: Path) -> Iterator[Path]:
    """Regular files under ``root``, sorted, without hidden ones."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


_SKIP_SOP_CLASSES = {
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation: masks, not images
}


def _header(root: Path, path: Path, salt: bytes, label_by: str, allow_burned_in: bool) -> _Header | Problem | None:
    """One file's header as what the scan needs, a problem, or None (not an image: skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    _quiet_reads()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Problem(_anonymous(path, b""), "unreadable", f"cannot be read: {exc.strerror or exc}")
    try:
        ds = pydicom.dcmread(_bytes_io(data))  # pixel data stays encoded bytes: nothing is decoded here
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        return Problem(_anonymous(path, data), "unreadable", f"not a DICOM file ({type(exc).__name__})")
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID", "")))
    if sop_class in _SKIP_SOP_CLASSES or path.name.upper() == "DICOMDIR":
        return None
    if "PixelData" not in ds:
        return None  # structured reports, presentation states, KOs: nothing to ingest
    sha = hashlib.sha256(data).hexdigest()
    study = pseudonym(salt, "study", str(ds.get("StudyInstanceUID", ""))) if ds.get("StudyInstanceUID") else "nostudy"
    series = pseudonym(salt, "series", str(ds.get("SeriesInstanceUID", ""))) if ds.get("SeriesInstanceUID") else "noseries"
    sop = pseudonym(salt, "sop", str(ds.get("SOPInstanceUID", "") or sha))
    where = f"{study}/{series}/{sop}"
    burned = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if burned == "YES" and not allow_burned_in:
        return Problem(where, "burned-in", "BurnedInAnnotation is YES (text such as patient names may be in the "
                       "pixels); pass --allow-burned-in to ingest such files anyway")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in GRAYSCALE or int(ds.get("SamplesPerPixel", 1)) != 1:
        return Problem(where, "wrong-mode", f"PhotometricInterpretation {photometric or 'missing'}: only "
                       "grayscale (MONOCHROME1/MONOCHROME2) images are ingested")
    if problem := codec_problem(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")):
        return Problem(where, "codec-missing", problem)
    patient_id = str(ds.get("PatientID", "") or "").strip()
    patient = pseudonym(salt, "patient", patient_id) if patient_id else (
        pseudonym(salt, "study", str(ds.StudyInstanceUID)) if ds.get("StudyInstanceUID") else None)
    attributes = {key: _text(ds.get(keyword)) for keyword, key in KEPT_ATTRIBUTES.items() if ds.get(keyword) not in (None, "")}
    attributes |= {"study": study, "series": series, "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))}
    return _Header(path, sha, study, series, sop, patient, int(ds.get("NumberOfFrames", 1) or 1), _order_key(ds),
                   _label(root, path, attributes, label_by), attributes)


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def _text(value: Any) -> str:
    """A kept attribute as text: multi-valued ones (PixelSpacing) joined with a backslash."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(f"{float(v):g}" if _is_number(v) else str(v) for v in value)
    return str(value).strip()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _label(root: Path, path: Path, attributes: dict[str, str], label_by: str) -> str:
    if label_by == "none":
        return SINGLE_CLASS
    if label_by == "folder":
        parts = path.relative_to(root).parts
        return parts[0] if len(parts) > 1 else SINGLE_CLASS
    return attributes.get(label_by) or "unknown"


def _order_key(ds: Any) -> tuple:
    """(position along the slice normal or None, InstanceNumber or None) of one file."""
    position = None
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        row, col = np.array(iop[:3], float), np.array(iop[3:], float)
        position = float(np.dot(np.cross(row, col), np.array(ipp, float)))
    number = ds.get("InstanceNumber")
    return position, (int(number) if number not in (None, "") else None)


def _by_series(headers: list[_Header]) -> dict[tuple[str, str], list[_Header]]:
    series: dict[tuple[str, str], list[_Header]] = defaultdict(list)
    for h in headers:
        series[(h.study, h.series)].append(h)
    return series


def _series_items(headers: list[_Header], window: str | tuple[float, float]) -> list[SourceItem]:
    """The series' files in slice order, each expanded to its frames, as source items."""
    if all(h.order[0] is not None for h in headers):
        order_by, key = "ImagePositionPatient", lambda h: (h.order[0], h.sop)
    elif all(h.order[1] is not None for h in headers):
        order_by, key = "InstanceNumber", lambda h: (h.order[1], h.sop)
    else:
        order_by, key = "SOPInstanceUID pseudonym", lambda h: (h.order[1] or 0, h.sop)
    items = []
    for rank, h in enumerate(sorted(headers, key=key)):
        base = f"{h.study}/{h.series}/{rank:05d}-{h.sop}"
        for frame in range(h.frames):
            multi = h.frames > 1
            attributes = {**h.attributes, "slice_index": str(rank), "order_by": order_by}
            if multi:
                attributes |= {"frame": str(frame), "frames": str(h.frames)}
            items.append(SourceItem(h.path, f"{base}/f{frame:05d}" if multi else base, h.label, h.patient,
                                    None, attributes, reader=DicomReader(window, frame if multi else None)))
    return items


def _anonymous(path: Path, data: bytes) -> str:
    """How the report names a file it could not read: never by its (possibly PHI) name."""
    return f"file-{hashlib.sha256(data).hexdigest()[:16]}"

