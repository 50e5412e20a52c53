"""A multi-label chest phantom: *fake* frontal chest images whose findings are visible shapes.

Nothing here is medical data. Each image is a soft thorax (two dark lung fields in a brighter
body, a mediastinum between them) plus any subset of three findings, each drawn where a
reader would look for it and each independently present with probability ``p``:

- ``Atelectasis``: a bright horizontal band across the lower left lung (plate-like);
- ``Effusion``: the lower right lung filled from the bottom with a bright, level fluid;
- ``Pneumonia``: a bright blurred blob in the upper right lung.

So a conditional GAN trained on it can be checked by eye: ``labels=[1,0,1]`` must show the
band and the blob but no fluid level. :func:`write_chest_phantom` writes the images with an
NIH-ChestX-ray14-style CSV (``Image Index``, ``Finding Labels`` joined by ``|``, ``Patient
ID``) or a CheXpert-style CSV (``Path`` plus one column per finding, 1 / 0 and, with
``uncertain_p``, -1 for a finding drawn but marked uncertain), for the layouts of
:mod:`training.catalog.chest`. Image ``i`` is rendered from its own RNG ``(seed, i)``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from infra.errors import BadInput

PHANTOM_FINDINGS = ("Atelectasis", "Effusion", "Pneumonia")


def render_chest(size: int, findings: tuple[bool, bool, bool], rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size) phantom chest with the given findings (see the module docstring)."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    img = 0.55 + 0.05 * rng.standard_normal()
    shift = 0.02 * rng.standard_normal(2)
    lungs = np.zeros((size, size))
    for cx in (0.3, 0.7):  # image left = patient right; the names only need to be consistent
        lungs = np.maximum(lungs, (((xx - cx - shift[0]) / 0.17) ** 2 + ((yy - 0.5 - shift[1]) / 0.33) ** 2) < 1)
    image = img - 0.35 * ndimage.gaussian_filter(lungs.astype(float), size / 40)
    if findings[0]:  # Atelectasis: band in the lower left lung
        band = (np.abs(yy - 0.66 - 0.03 * rng.standard_normal()) < 0.025) & (np.abs(xx - 0.3 - shift[0]) < 0.13)
        image += 0.3 * band
    if findings[1]:  # Effusion: lower right lung filled to a level
        level = 0.68 + 0.04 * rng.standard_normal()
        image += 0.3 * (lungs * (yy > level) * (xx > 0.5))
    if findings[2]:  # Pneumonia: blob in the upper right lung
        cy, cx = 0.36 + 0.04 * rng.standard_normal(), 0.7 + 0.03 * rng.standard_normal()
        image += 0.35 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.06**2)))
    image = ndimage.gaussian_filter(image, size / 128) + 0.02 * rng.standard_normal((size, size))
    return np.clip(image * 255, 0, 255).round().astype(np.uint8)


def write_chest_phantom(root: Path, n: int, size: int = 64, seed: int = 0, layout: str = "nih", p: float = 0.4,
                        uncertain_p: float = 0.0, patients: int | None = None) -> Path:
    """Render ``n`` phantom chests under ``root`` and return the CSV the layout reads.

    Args:
        root: output folder (created).
        n: images.
        size: side in pixels.
        seed: image ``i`` uses RNG ``(seed, i)``.
        layout: ``nih`` (``Data_Entry_2017.csv``) or ``chexpert`` (``train.csv``).
        p: probability of each finding, independently.
        uncertain_p: CheXpert only: probability that a drawn finding is written as -1.
        patients: patient count (images assigned round-robin); default ``n // 2``.
    """
    if layout not in ("nih", "chexpert"):
        raise BadInput(f"layout {layout!r}: choose nih or chexpert", field="layout")
    root = Path(root)
    patients = patients or max(1, n // 2)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        drawn = tuple(bool(rng.random() < p) for _ in PHANTOM_FINDINGS)
        patient = f"{i % patients:05d}"
        # NIH: flat file names under images/; CheXpert: patientNNNNN/studyI/view1_frontal.png
        name = f"images/{i:08d}_000.png" if layout == "nih" else f"patient{patient}/study{i}/view1_frontal.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_chest(size, drawn, rng)).save(root / name)
        unsure = tuple(bool(d and rng.random() < uncertain_p) for d in drawn)
        rows.append((name, patient, drawn, unsure))
    if layout == "nih":
        table = root / "Data_Entry_2017.csv"
        with table.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"))
            for name, patient, drawn, _ in rows:
                labels = "|".join(f for f, d in zip(PHANTOM_FINDINGS, drawn) if d) or "No Finding"
                writer.writerow((Path(name).name, labels, 0, patient, "PA"))
        return table
    table = root / "train.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *PHANTOM_FINDINGS))
        for name, patient, drawn, unsure in rows:
            values = ["-1.0" if u else "1.0" if d else "" for d, u in zip(drawn, unsure)]
            writer.writerow((name, "Female", 50, "Frontal", "PA", *values))
    return table
