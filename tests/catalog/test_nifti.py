"""NIfTI ingest on a real volume: the MNI152 2009 T1 template that the nilearn wheel ships
(1 mm, 197x233x189, RAS), with its grey- and white-matter maps as an independent check."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pytest
from click.testing import CliRunner

from services.cli.main import main
from training.catalog.ingest import _vet
from training.catalog.layouts import scan
from training.catalog.medical import pseudonym
from training.catalog.nifti import FOREGROUND_LEVEL, MIN_FOREGROUND, slice_of
from training.catalog.preprocess import pipeline

DATA = Path(nilearn.__file__).parent / "datasets" / "data"
T1 = DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TISSUE = (DATA / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
          DATA / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
SALT = b"s" * 32


def expected_axial_slices() -> list[int]:
    """The documented rule, computed here straight from the voxels (the file is already RAS)."""
    voxels = np.asarray(nib.load(T1).get_fdata())
    low, high = np.percentile(voxels, (0.5, 99.5))
    unit = np.clip((voxels - low) / (high - low), 0, 1)
    fraction = (unit > FOREGROUND_LEVEL).mean(axis=(0, 1))
    return [int(k) for k in np.flatnonzero(fraction >= MIN_FOREGROUND)]


@pytest.mark.stack
def test_mni152_slices_into_its_non_empty_axial_slices(tmp_path: Path, catalog) -> None:
    name = f"mni-{uuid.uuid4().hex[:8]}"
    out = CliRunner().invoke(main, ["catalog", "ingest", str(T1), "--name", name, "--layout", "nifti",
                                    "--slice-axis", "z", "--split", "train=1"])
    assert out.exit_code == 0, out.output
    manifest = catalog.manifest(out.output.strip().splitlines()[-1])
    kept = sorted(int(r.attributes["slice_index"]) for r in manifest.records)
    expected = expected_axial_slices()
    assert kept == expected and 100 < len(kept) < 189  # empty slices above and below the head skipped

    voxels = np.asarray(nib.load(T1).get_fdata())
    assert not any(voxels[:, :, k].max() == 0 for k in kept)  # no blank slice got in
    tissue = sum(np.asarray(nib.load(p).get_fdata()) > 200 for p in TISSUE)  # > ~80 % GM or WM
    with_brain = [k for k in range(voxels.shape[2]) if tissue[:, :, k].mean() >= 0.001]
    assert set(with_brain) <= set(kept)  # every slice with brain tissue is in

    record = manifest.records[0]
    assert record.attributes["spacing"] == "1\\1\\1" and record.attributes["orientation"] == "RAS"
    assert record.width == 197 and record.height == 233 and record.bit_depth == 16
    assert len({r.patient_id for r in manifest.records}) == 1  # one volume, one patient
    assert [s["step"] for s in record.preprocessing][:2] == ["nifti-slice", "nifti-window"]
    assert T1.name not in out.output and "mni_icbm152" not in record.source_path


def test_reorientation_patients_csv_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = np.zeros((12, 10, 8), np.int16)
    volume[2:10, 2:8, 1:7] = rng.integers(100, 1000, (8, 6, 6))
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    las = ras.copy()
    las[0, 0], las[0, 3] = -2.0, 22.0  # same voxels in space, stored with x flipped
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nib.save(nib.Nifti1Image(volume, ras), tmp_path / "a" / "sub-01.nii.gz")
    nib.save(nib.Nifti1Image(volume[::-1].copy(), las), tmp_path / "b" / "sub-02.nii")
    with open(tmp_path / "patients.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "patient_id", "label"), ("a/sub-01.nii.gz", "P-7", "healthy"),
                                  ("b/sub-02.nii", "P-7", "")])
    found = scan(tmp_path, "nifti", salt=SALT, patients_csv=tmp_path / "patients.csv", label_by="folder")
    assert not found.problems and found.classes == ["b", "healthy"]
    assert {i.patient_id for i in found.items} == {pseudonym(SALT, "patient", "P-7")}
    by_volume: dict[str, list] = {}
    for item in found.items:
        by_volume.setdefault(item.attributes["orientation"], []).append(item)
    assert sorted(by_volume) == ["LAS", "RAS"]
    ras_items, las_items = by_volume["RAS"], by_volume["LAS"]
    assert [i.attributes["slice_index"] for i in ras_items] == [str(k) for k in range(1, 7)]
    pipe = pipeline("none")
    for a, b in zip(ras_items, las_items, strict=True):  # canonical RAS+: the flipped copy slices the same
        pa, pb = _vet(a, pipe), _vet(b, pipe)
        assert pa.png == pb.png and pa.source_sha256 != pb.source_sha256
    top = slice_of(volume.astype(np.float32), 2, 3)
    assert top.shape == (10, 12)  # rot90: rows = anterior → posterior, columns = right-ward x
    assert all("sub-0" not in i.rel_path for i in found.items)


def _labels_of(prepared) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(prepared.mask_png)))


def test_label_volumes_pair_slice_by_slice_with_the_same_checks_as_image_masks(tmp_path: Path) -> None:
    """``--layout nifti-mask``: images/ + masks/ volumes matched by stem, the label volume cut at the image's
    kept slices after the same reorientation (stored LAS here), and one report line per failure."""
    from training.catalog.ingest import MaskRule

    rng = np.random.default_rng(1)
    volume = np.zeros((12, 10, 8), np.int16)
    volume[2:10, 2:8, 1:7] = rng.integers(100, 1000, (8, 6, 6))  # kept axial slices: 1..6
    labels = np.zeros(volume.shape, np.uint8)
    labels[3:6, 3:5, 2:5] = 1
    labels[7:9, 4:7, 3:6] = 2  # slices 1 and 6 are all background
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    las = ras.copy()
    las[0, 0], las[0, 3] = -2.0, 22.0
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "masks" / "classes.txt").write_text("background\na\nb\n")
    nib.save(nib.Nifti1Image(volume, ras), tmp_path / "images" / "case1.nii.gz")
    nib.save(nib.Nifti1Image(labels[::-1].copy(), las), tmp_path / "masks" / "case1.nii")  # .nii pairs .nii.gz
    nib.save(nib.Nifti1Image(volume, ras), tmp_path / "images" / "case2.nii.gz")  # no label volume
    nib.save(nib.Nifti1Image(volume, ras), tmp_path / "images" / "case3.nii.gz")
    nib.save(nib.Nifti1Image(labels[:, :, :7].copy(), ras), tmp_path / "masks" / "case3.nii.gz")  # one slice short
    nib.save(nib.Nifti1Image(volume, ras), tmp_path / "images" / "case4.nii.gz")
    nib.save(nib.Nifti1Image(labels.astype(np.float32) * 0.5, ras), tmp_path / "masks" / "case4.nii.gz")
    nib.save(nib.Nifti1Image(labels, ras), tmp_path / "masks" / "orphan.nii.gz")

    found = scan(tmp_path, "nifti-mask", salt=SALT)
    assert found.mask_classes == ["background", "a", "b"] and found.layout == "nifti-mask"
    volume_id = {stem: pseudonym(SALT, "volume", f"{stem}.nii.gz") for stem in ("case1", "case2", "case3", "case4")}
    assert sorted((p.kind, p.rel_path) for p in found.problems) == sorted([
        ("mask-size", volume_id["case3"]), ("mask-mode", volume_id["case4"]),
        ("orphan-mask", pseudonym(SALT, "volume", "masks/orphan.nii.gz"))])
    assert "12x10x7 after reorientation, the image volume 12x10x8" in str(found.problems)
    by_volume: dict[str, list] = {}
    for item in found.items:
        by_volume.setdefault(item.attributes["volume"], []).append(item)
    assert sorted(by_volume) == sorted([volume_id["case1"], volume_id["case2"]])  # case3/4: no slice ingested
    paired, lone = by_volume[volume_id["case1"]], by_volume[volume_id["case2"]]
    plain = scan(tmp_path / "images" / "case1.nii.gz", "nifti", salt=SALT).items
    assert [i.attributes["slice_index"] for i in paired] == [i.attributes["slice_index"] for i in plain] \
        == [str(k) for k in range(1, 7)]  # exactly the image's slice selection

    pipe, rule = pipeline("none"), MaskRule(3)
    for item, alone in zip(paired, plain, strict=True):
        k = int(item.attributes["slice_index"])
        out = _vet(item, pipe, rule)
        assert out.png == _vet(alone, pipe).png  # the image slice is untouched by the pairing
        np.testing.assert_array_equal(_labels_of(out), np.rot90(labels[:, :, k]))  # same grid as the image
    assert _vet(lone[0], pipe, rule).mask_png is None
    # the per-slice checks of the folder-pair layout, one report line each
    assert _vet(paired[2], pipe, MaskRule(2)).kind == "mask-labels"  # slice 3 holds label 2; only 0..1 declared
    required = MaskRule(3, required=True)
    assert _vet(paired[0], pipe, required).kind == "mask-empty"  # slice 1: all background
    assert _vet(lone[0], pipe, required).kind == "no-mask"
    assert _vet(paired[1], pipe, required).mask_png is not None
