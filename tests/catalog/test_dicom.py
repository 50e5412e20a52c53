"""DICOM ingest and DICOM export on *real* scans: the NEMA WG04 images that pydicom-data ships.

- ``RG1_*``: chest CR, 1955x1841, MONOCHROME1, BitsStored 15, uncompressed and JPEG 2000
  lossless (``J2KR``); patient name ``CompressedSamples^RG1``, PatientID ``9RG1``.
- ``693_UNCR``: head CT (CQ500), signed 14-bit, RescaleIntercept -1024, window 40/100.
- ``JPEG-LL``: NM in JPEG Lossless (process 14), which nothing installed here decodes.
- ``emri_small``: a 10-frame MR (multi-frame object).

The stack tests ingest one tree through the real CLI and check it from every side; the
rest runs without a stack.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from services.cli.main import main
from services.serving.packaging import read_images, read_manifest, to_dicom_zip
from training.catalog.dicom import codec_problem, decode_frame, parse_window, pixel_header
from training.catalog.dicom_export import synthetic_datasets, to_bytes, validate
from training.catalog.medical import dataset_salt, pseudonym
from training.catalog.splits import select
from training.catalog.store import Catalog, decode_png
from infra.errors import BadInput

# Regions of RG1 (row0, row1, col0, col1), read off the image: the thoracic spine over the
# heart (bone) and the soft tissue of the right lateral chest wall, outside the ribs.
RG1_BONE = (1200, 1500, 830, 890)
RG1_SOFT_TISSUE = (600, 1000, 1775, 1815)
PATIENT_NAMES = ("CompressedSamples", "CQ500-CT-310")
PATIENT_IDS = ("9RG1",)


def real(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def read(name: str) -> bytes:
    return real(name).read_bytes()


def mean(pixels: np.ndarray, box: tuple[int, int, int, int]) -> float:
    r0, r1, c0, c1 = box
    return float(pixels[r0:r1, c0:c1].astype(np.float64).mean())


# -- pixels, without a stack --------------------------------------------------------------


def test_rg1_monochrome1_is_inverted_so_bone_is_bright() -> None:
    decoded = decode_frame(read("RG1_UNCR.dcm"))
    stored = pydicom.dcmread(real("RG1_UNCR.dcm")).pixel_array
    # the stored MONOCHROME1 values have bone *dark* (low = white): the check means something
    assert mean(stored, RG1_BONE) < mean(stored, RG1_SOFT_TISSUE)
    assert mean(decoded.pixels, RG1_BONE) > mean(decoded.pixels, RG1_SOFT_TISSUE)
    assert decoded.pixels.dtype == np.uint16 and decoded.bit_depth == 15
    steps = {s["step"]: s for s in decoded.steps}
    assert list(steps) == ["dicom-modality-lut", "dicom-voi", "dicom-monochrome", "dicom-bits"]
    assert steps["dicom-monochrome"]["inverted"] and steps["dicom-voi"]["from"] == "WindowCenter/WindowWidth"


def test_radiograph_preset_equalizes_the_16_bit_image_into_an_8_bit_gan_input() -> None:
    from training.catalog.preprocess import pipeline

    decoded = decode_frame(read("RG1_UNCR.dcm"))
    out, steps = pipeline("radiograph", size=64).run(decoded.pixels)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert [s["step"] for s in steps] == ["equalize_hist", "resize"]
    scale = 64 / np.array([1955, 1955, 1841, 1841])
    bone, soft = (tuple(int(v) for v in np.array(box) * scale) for box in (RG1_BONE, RG1_SOFT_TISSUE))
    assert mean(out, bone) > mean(out, soft)


def test_ct_keeps_negative_hu_through_an_explicit_window() -> None:
    ds = pydicom.dcmread(real("693_UNCR.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert hu.min() < -500  # air and fat: the window must see these as negative HU
    decoded = decode_frame(read("693_UNCR.dcm"), parse_window("0,2001"))  # -1000 .. +1000 HU
    # PS3.3 C.11.2.1.2.1 linear window on the HU values, not on the stored values
    expected = np.rint(np.clip((hu - (0 - 0.5 - 1000)) / 2000, 0, 1) * 65535)
    assert np.abs(decoded.pixels.astype(np.int64) - expected).max() <= 1
    fat = (hu > -200) & (hu < -50)
    assert fat.sum() > 100
    grey = decoded.pixels[fat]
    assert 0 < grey.min() and grey.max() < 32768  # negative HU: distinct greys below the middle
    assert np.corrcoef(hu[fat], grey)[0, 1] > 0.99


def test_enhanced_ct_frames_take_rescale_and_window_from_their_functional_groups() -> None:
    ds = pydicom.dcmread(real("eCT_Supplemental.dcm"))  # Enhanced CT, 2 frames, no top-level rescale
    assert "RescaleIntercept" not in ds
    header = pixel_header(ds, 1)
    assert float(header.RescaleIntercept) == -1024 and float(header.WindowWidth) > 0
    decoded = decode_frame(read("eCT_Supplemental.dcm"), parse_window("0,2001"), frame=1)
    hu = ds.pixel_array[1].astype(np.float64) - 1024
    expected = np.rint(np.clip((hu + 1000.5) / 2000, 0, 1) * 65535)
    assert np.abs(decoded.pixels.astype(np.int64) - expected).max() <= 1


def test_window_option_is_parsed_or_refused() -> None:
    assert parse_window("auto") == "auto" and parse_window(" None ") == "none"
    assert parse_window("40,400") == (40.0, 400.0)
    for bad in ("40", "40,0", "a,b", "40,-1"):
        with pytest.raises(BadInput, match="--window"):
            parse_window(bad)


def test_a_missing_codec_names_the_transfer_syntax_and_the_package() -> None:
    problem = codec_problem(pydicom.dcmread(real("JPEG-LL.dcm"), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if problem is None:
        pytest.skip("a JPEG Lossless decoder is installed here, so nothing is missing")
    assert "1.2.840.10008.1.2.4.70" in problem and "JPEG Lossless" in problem and "pylibjpeg" in problem
    assert codec_problem("1.2.840.10008.1.2.4.90") is None  # JPEG 2000 through Pillow


# -- the ingest, through the CLI, on the real stack -------------------------------------------


def dicom_tree(root: Path) -> Path:
    """A PACS-export-like tree: folders named after patients (PHI that must not leak)."""
    layout = {
        "CompressedSamples^RG1/1/RG1_UNCR.dcm": "RG1_UNCR.dcm",
        "CompressedSamples^RG1/2/RG1_J2KR.dcm": "RG1_J2KR.dcm",
        "CQ500-CT-310/693_UNCR.dcm": "693_UNCR.dcm",
        "CompressedSamples^NM1/JPEG-LL.dcm": "JPEG-LL.dcm",
        "mr/emri_small.dcm": "emri_small.dcm",
    }
    for rel, name in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real(name), root / rel)
    burned = pydicom.dcmread(real("693_UNCR.dcm"))
    burned.BurnedInAnnotation = "YES"
    burned.SOPInstanceUID = pydicom.uid.generate_uid()
    burned.save_as(root / "CQ500-CT-310" / "burned.dcm")
    (root / "notes-CompressedSamples.txt").write_text("not DICOM")
    return root


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, stack) -> dict:
    """One CLI ingest of the tree (module-scoped: the checks below share it)."""
    tmp = tmp_path_factory.mktemp("dicom")
    src = dicom_tree(tmp / "src")
    name = f"dicom-{uuid.uuid4().hex[:8]}"
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)
    try:
        out = CliRunner().invoke(main, ["catalog", "ingest", str(src), "--name", name, "--layout", "dicom",
                                        "--split", "train=0.5,test=0.5", "--report-dir", str(tmp / "report")])
    finally:
        logging.getLogger().removeHandler(handler)
    assert out.exit_code == 0, out.output
    from training.catalog.selection import catalog

    cat = catalog(stack)
    manifest = cat.manifest(out.output.strip().splitlines()[-1])
    salt, _ = dataset_salt(name, stack.state_dir)
    return {"out": out.output, "logs": logs.getvalue(), "cat": cat, "manifest": manifest, "salt": salt,
            "report": json.loads((tmp / "report" / "report.json").read_text()),
            "manifest_json": cat.store.get_bytes(cat.manifest_key(manifest.name, manifest.version)).decode(),
            "tmp": tmp}


@pytest.mark.stack
def test_dicom_ingest_pixels_frames_and_report(ingested: dict) -> None:
    manifest, cat, report = ingested["manifest"], ingested["cat"], ingested["report"]
    by_modality = {m: select(manifest, f"modality={m}") for m in ("CR", "CT", "MR")}
    assert [len(by_modality[m]) for m in ("CR", "CT", "MR")] == [1, 1, 10]  # 10 frames, one record each
    assert manifest.classes == ["CR", "CT", "MR"]

    # RG1 stored as 16-bit PNG, identical to the decoder's output, bone bright
    rg1 = cat.read_pixels(by_modality["CR"])[0]
    assert rg1.dtype == np.uint16 and np.array_equal(rg1, decode_frame(read("RG1_UNCR.dcm")).pixels)
    assert mean(rg1, RG1_BONE) > mean(rg1, RG1_SOFT_TISSUE)
    # JPEG 2000 lossless decodes to the very same pixels: the ingest found it a duplicate
    dupes = [p for p in report["problems"] if p["kind"] == "duplicate"]
    assert len(dupes) == 1 and "same pixels after preprocessing" in dupes[0]["reason"]

    # the missing codec is one line naming the transfer syntax and the package; the rest ingested
    missing = [p for p in report["problems"] if p["kind"] == "codec-missing"]
    if codec_problem("1.2.840.10008.1.2.4.70") is not None:
        assert len(missing) == 1 and "1.2.840.10008.1.2.4.70" in missing[0]["reason"]
        assert "pylibjpeg" in missing[0]["reason"]
    assert [p["kind"] for p in report["problems"]].count("burned-in") == 1
    assert [p["kind"] for p in report["problems"]].count("unreadable") == 1  # the .txt file

    # frames in order, kept attributes and the recorded pipeline
    mr = sorted(by_modality["MR"], key=lambda r: r.source_path)
    assert [r.attributes["frame"] for r in mr] == [str(i) for i in range(10)]
    ct = by_modality["CT"][0]
    assert ct.attributes["modality"] == "CT" and ct.attributes["bits_stored"] == "14"
    assert ct.attributes["photometric_interpretation"] == "MONOCHROME2" and "\\" in ct.attributes["pixel_spacing"]
    assert [s["step"] for s in ct.preprocessing][:4] == ["dicom-modality-lut", "dicom-voi", "dicom-monochrome",
                                                         "dicom-bits"]
    assert report["layout_options"]["identifiers"].startswith("HMAC-SHA256")


@pytest.mark.stack
def test_dicom_ingest_leaks_no_patient_identifier(ingested: dict) -> None:
    manifest, salt = ingested["manifest"], ingested["salt"]
    cr = select(manifest, "modality=CR")[0]
    assert cr.patient_id == pseudonym(salt, "patient", "9RG1")
    texts = {"manifest": ingested["manifest_json"], "report": json.dumps(ingested["report"]),
             "cli output": ingested["out"], "logs": ingested["logs"]}
    keys = "\n".join(ingested["cat"].store.list_keys("catalog/"))
    for what, text in {**texts, "object keys": keys}.items():
        for secret in (*PATIENT_NAMES, *PATIENT_IDS, "RG1_UNCR", "emri_small"):
            assert secret not in text, f"{secret!r} appears in the {what}"


@pytest.mark.stack
def test_catalog_export_as_dicom_passes_the_validator(ingested: dict) -> None:
    ref, out_dir = str(ingested["manifest"].ref), ingested["tmp"] / "export"
    out = CliRunner().invoke(main, ["catalog", "export", ref, str(out_dir), "--select", "modality=CT",
                                    "--format", "dicom"])
    assert out.exit_code == 0, out.output
    (path,) = sorted(out_dir.rglob("*.dcm"))
    ds = pydicom.dcmread(path)
    record = select(ingested["manifest"], "modality=CT")[0]
    assert np.array_equal(ds.pixel_array, decode_png(ingested["cat"].fetch(record)))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "WSD"
    assert ds.PatientID == f"PSEUDONYM-{record.patient_id}" and ds.PatientIdentityRemoved == "YES"
    assert ref in ds.StudyDescription and record.sha256 in ds.ImageComments
    assert_valid_sc(path)


# -- synthetic DICOM ----------------------------------------------------------------------


def assert_valid_sc(path: Path) -> None:
    """``dciodvfy`` (dicom3tools, installed by make setup) finds no error in the SC IOD."""
    output, errors = validate(path)
    assert "SCImage" in output, output  # it recognised the Secondary Capture IOD
    assert not errors, output


def test_synthetic_dicom_zip_reads_back_marked_and_valid(tmp_path: Path) -> None:
    images = np.random.default_rng(3).integers(0, 256, (3, 48, 40), dtype=np.uint8)
    meta = {"model": "gan-chest", "version": "4", "run_id": "r1", "uri": "models:/gan-chest/4", "seed": 11}
    data = to_dicom_zip(images, meta)
    assert data == to_dicom_zip(images, meta)  # same request, same bytes
    assert np.array_equal(read_images(data), images) and read_manifest(data)["synthetic"] is True
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".dcm"))
        datasets = [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in names]
    assert names == ["img-00000.dcm", "img-00001.dcm", "img-00002.dcm"]
    assert len({d.SOPInstanceUID for d in datasets}) == 3 and len({d.StudyInstanceUID for d in datasets}) == 1
    for i, ds in enumerate(datasets):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
        assert str(ds.PatientName).startswith("SYNTHETIC^gan-chest") and ds.PatientID == "SYNTHETIC-gan-chest-v4"
        assert ds.StudyDescription == "SYNTHETIC gan-chest v4" and ds.BurnedInAnnotation == "NO"
        assert "models:/gan-chest/4" in ds.ImageComments and "seed 11" in ds.ImageComments
        assert ds.InstanceNumber == i + 1 and np.array_equal(ds.pixel_array, images[i])
    # a 16-bit image as well, validated
    (wide,) = synthetic_datasets(np.full((1, 32, 32), 40000, np.uint16), meta)
    path = tmp_path / "wide.dcm"
    path.write_bytes(to_bytes(wide))
    assert pydicom.dcmread(path).BitsStored == 16
    for name in names[:1]:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            (tmp_path / name).write_bytes(zf.read(name))
        assert_valid_sc(tmp_path / name)
    assert_valid_sc(path)


def test_medical_options_are_refused_for_other_layouts(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["catalog", "ingest", str(tmp_path), "--name", "x", "--layout", "imagefolder",
                                    "--window", "40,400"])
    assert out.exit_code == 1 and "--window do(es) not apply to --layout imagefolder" in out.output
    out = CliRunner().invoke(main, ["catalog", "ingest", str(tmp_path), "--name", "x", "--layout", "dicom",
                                    "--window", "40"])
    assert out.exit_code == 1 and "--window '40' is invalid" in out.output


def test_selectors_filter_on_kept_attributes() -> None:
    from training.catalog.store import ImageRecord, Manifest

    def record(i: int, modality: str) -> ImageRecord:
        return ImageRecord(f"{i:064x}", 0, "all", "train", f"s/{i}", 16, 8, 8, attributes={"modality": modality})

    manifest = Manifest("m", "0" * 16, [record(1, "CR"), record(2, "CT"), record(3, "CR")], ["all"])
    assert [r.source_path for r in select(manifest, "modality=CR")] == ["s/1", "s/3"]
    assert [r.source_path for r in select(manifest, "split=train,modality!=CR")] == ["s/2"]
    with pytest.raises(BadInput, match=r"or an attribute \(modality\)"):
        select(manifest, "manufacturer=ACME")


def test_a_dicomdir_is_read_as_its_folder(tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    from training.catalog.layouts import scan

    media = FileSet()
    for name in ("693_UNCR.dcm", "emri_small.dcm", "MR2_J2KR.dcm"):
        ds = pydicom.dcmread(real(name))
        for keyword, value in (("StudyDate", "20000101"), ("StudyTime", "000000"), ("StudyID", "1"), ("SeriesNumber", 1),
                               ("InstanceNumber", 1), ("PatientID", "P1"), ("PatientName", "DOE^JANE")):
            if not ds.get(keyword):
                setattr(ds, keyword, value)
        media.add(ds)
    media.write(tmp_path / "media")  # DICOMDIR + PT000000/ST000000/SE000000/IM000000 …
    found = scan(tmp_path / "media" / "DICOMDIR", "dicom", salt=b"k" * 32)
    assert not found.problems and found.classes == ["CT", "MR"]
    assert len(found.items) == 1 + 10 + 1  # the DICOMDIR itself is no image; 10 frames
    assert {i.patient_id for i in found.items if i.label_name == "MR"} >= {pseudonym(b"k" * 32, "patient", "P1")}
    import pickle  # --engine ray ships items, readers included, pickled

    assert all(pickle.loads(pickle.dumps(item)) == item for item in found.items)
