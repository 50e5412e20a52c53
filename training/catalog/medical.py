"""What the DICOM and NIfTI layouts share: pseudonyms, the per-dataset salt, decoded frames.

Medical sources carry identifiers (PatientID, Study/Series/SOP Instance UIDs, file and
folder names that PACS exports build from patient names). None of them may reach a
manifest, a report, a log line or an object key, yet patient grouping for splits needs a
stable id. Every identifier therefore enters the catalog only as
``HMAC-SHA256(salt, kind + ":" + value)`` cut to 16 hex digits, with one random salt per
dataset name. The salt is kept on the ingesting machine (``{state_dir}/id-salts/NAME.key``,
mode 0600), never in the catalog, so whoever reads the catalog cannot test guessed patient
ids against the hashes; ``--id-salt-file`` shares one salt between machines.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infra.errors import BadInput

SALT_BYTES = 32
#: Length of a pseudonym in hex digits (64 bits: no collision in any real archive).
PSEUDONYM_HEX = 16


@dataclass(frozen=True)
class Decoded:
    """One 2-D image decoded from a medical source file, ready for the preprocessing pipeline.

    Attributes:
        pixels: (rows, columns) uint8 or uint16, MONOCHROME2 (higher = brighter).
        bit_depth: bits of the source samples (DICOM BitsStored; 16 for NIfTI floats).
        mode: what the source held, recorded as the record's ``source_mode`` attribute.
        source_sha256: hash of the source bytes, qualified by the frame or slice index when
            one file yields several records (so frames are not "duplicates" of each other).
        steps: the source-level steps (modality LUT, window, inversion …) in the
            ``{"step": name, …}`` form of ``training.catalog.preprocess``, recorded before
            the pipeline's own steps.
    """

    pixels: np.ndarray
    bit_depth: int
    mode: str
    source_sha256: str
    steps: list[dict] = field(default_factory=list)


def pseudonym(salt: bytes, kind: str, value: str) -> str:
    """``HMAC-SHA256(salt, f"{kind}:{value}")`` as 16 hex digits; ``kind`` keeps a PatientID
    and a UID with the same text apart."""
    return hmac.new(salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def frame_sha256(data_sha256: str, index: int | None) -> str:
    """The source hash of record ``index`` of a file with several (the file's own hash if None)."""
    if index is None:
        return data_sha256
    return hashlib.sha256(f"{data_sha256}#{index}".encode()).hexdigest()


def dataset_salt(name: str, state_dir: Path, salt_file: Path | None = None) -> tuple[bytes, str]:
    """(salt, where it is kept) for dataset ``name``; created on first use.

    Args:
        name: dataset name (already validated by ``DatasetRef.parse``).
        state_dir: the machine's synthray state folder (``Settings.state_dir``).
        salt_file: an explicit salt file to use instead (hex or raw bytes, ≥ 16 bytes).

    Raises:
        BadInput: ``salt_file`` is missing or too short.
    """
    if salt_file is not None:
        path = Path(salt_file)
        if not path.is_file():
            raise BadInput(f"--id-salt-file {path} does not exist", field="id_salt_file")
        raw = path.read_bytes().strip()
        try:
            salt = bytes.fromhex(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            salt = raw
        if len(salt) < 16:
            raise BadInput(f"--id-salt-file {path} holds {len(salt)} bytes; a salt needs at least 16",
                           field="id_salt_file")
        return salt, str(path)
    path = Path(state_dir) / "id-salts" / f"{name}.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(SALT_BYTES))
        try:
            os.link(tmp, path)  # first writer wins when two ingests of one dataset race
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return bytes.fromhex(path.read_text().strip()), str(path)


def to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of ``[low, high]`` onto ``[0, 1]``, clipped (float64); NaN becomes 0."""
    if not np.isfinite([low, high]).all() or high <= low:
        return np.zeros(values.shape, np.float64)
    unit = np.clip((np.asarray(values, np.float64) - low) / (high - low), 0.0, 1.0)
    return np.nan_to_num(unit, nan=0.0)  # NaN voxels (float NIfTI) count as background


def quantize(unit: np.ndarray, bits: int) -> np.ndarray:
    """``[0, 1]`` floats as uint8 (``bits`` ≤ 8) or uint16 (full 0..65535 scale), rounded."""
    if bits <= 8:
        return np.rint(unit * 255.0).astype(np.uint8)
    return np.rint(unit * 65535.0).astype(np.uint16)


MEDICAL_LAYOUTS = ("dicom", "nifti", "nifti-mask")
#: Options of the other layouts that take any: CheXpert's uncertain-label policy.
PLAIN_LAYOUT_OPTIONS = {"chexpert": ("uncertain",)}


def layout_arguments(name: str, layout: str, options: Mapping[str, Any], state_dir: Path) -> tuple[dict, dict]:
    """(keyword arguments for the layout's scan, their description for the ingest report).

    The medical layouts get the dataset's salt (``id_salt_file`` in ``options`` picks an
    explicit one); the description leaves the salt out. Other layouts take no options.

    Raises:
        BadInput: options given to a layout that takes none.
    """
    options = dict(options)
    if layout not in MEDICAL_LAYOUTS:
        stray = sorted(set(options) - set(PLAIN_LAYOUT_OPTIONS.get(layout, ())))
        if stray:
            raise BadInput(f"layout {layout!r} takes no {', '.join(stray)} option(s); they belong to the "
                           f"{' and '.join(MEDICAL_LAYOUTS)} layouts (uncertain: chexpert)", field=stray[0])
        return options, dict(options)
    salt, kept_at = dataset_salt(name, state_dir, options.pop("id_salt_file", None))
    described = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in options.items()}
    described["identifiers"] = (f"HMAC-SHA256 pseudonyms ({PSEUDONYM_HEX} hex digits) with a per-dataset salt "
                                f"kept outside the catalog ({kept_at})")
    return {**options, "salt": salt}, described
