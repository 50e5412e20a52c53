"""Issue 21, items 5 and 6: ingest applies EXIF orientation first, and every image check
reads what the catalog *stores* (``width``/``height``/``bit_depth``/``mode``), with the
source's own attributes kept apart (``source_*``).

Regression inputs: gray JPEGs stored 64 wide x 48 high with EXIF Orientation = 6 (a viewer
shows 48 x 64) were ingested sideways without a word; 80 x 80 sources ingested with
``--preprocess knee --resize 64`` (stored 64 x 64) were refused by
``train gan --arch wgan-gp-knee-small`` as "80x80 images".
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from services.cli.main import main
from training.catalog.ingest import _prepare, read_image, read_oriented
from training.catalog.layouts import SourceItem
from training.catalog.preprocess import pipeline
from training.catalog.store import Catalog, ImageRecord, Manifest, decode_png

ORIENTATION = 0x0112


def sideways_jpeg(seed: int, orientation: int = 6, width: int = 64, height: int = 48) -> bytes:
    """A gray JPEG stored ``width`` x ``height`` whose EXIF says how to turn it."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    pixels[:8, :16] = 255  # a bright corner, to see where the top-left ended up
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


# -- item 5: orientation, no stack ----------------------------------------------------------
@pytest.mark.parametrize(("orientation", "shape"), [(1, (48, 64)), (2, (48, 64)), (3, (48, 64)), (4, (48, 64)),
                                                    (5, (64, 48)), (6, (64, 48)), (7, (64, 48)), (8, (64, 48))])
def test_exif_orientation_is_applied_before_anything_else(orientation: int, shape: tuple[int, int]) -> None:
    pixels, depth, mode, applied = read_oriented(sideways_jpeg(0, orientation), "x.jpg")
    assert pixels.shape == shape and depth == 8 and mode == "L" and applied == orientation
    assert read_image(sideways_jpeg(0, orientation), "x.jpg")[0].shape == shape


def test_orientation_6_turns_the_image_clockwise() -> None:
    pixels, *_ = read_oriented(sideways_jpeg(0, 6), "x.jpg")
    assert pixels.shape == (64, 48)  # stored 64 wide x 48 high -> shown 48 wide x 64 high
    assert pixels[:16, -8:].mean() > 200  # the stored top-left corner is now top-right


def test_a_file_without_exif_is_upright() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(buf, "PNG")
    assert read_oriented(buf.getvalue(), "x.png")[3] == 1


# -- item 6: stored vs source, no stack -------------------------------------------------------
def test_prepared_records_stored_and_source_attributes(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 65536, (80, 80), dtype=np.uint16)).save(path)
    item = SourceItem(path, "a.png", "x", None)
    prepared = _prepare(item, pipeline("knee", size=64))
    assert (prepared.width, prepared.height, prepared.bit_depth) == (80, 80, 16)
    assert prepared.stored == {"width": 64, "height": 64, "bit_depth": 8, "mode": "L"}
    assert decode_png(prepared.png).shape == (64, 64)


def _record(**kw) -> ImageRecord:
    return ImageRecord(**{"sha256": "a" * 64, "label": 0, "label_name": "x", "split": "train", "source_path": "a.png",
                          "bit_depth": 8, "width": 80, "height": 80} | kw)


def test_stored_size_reads_new_and_legacy_manifests() -> None:
    knee = [{"preset": "knee"}, {"step": "resize", "size": 64}]
    legacy = Manifest("d", "1", [], ["x"], preprocessing=knee)
    assert legacy.stored_size(_record(preprocessing=[{"step": "resize", "resized": True}])) == (64, 64)
    assert legacy.stored_size(_record(preprocessing=[{"step": "resize", "resized": False}])) == (80, 80)
    assert Manifest("d", "1", [], ["x"]).stored_size(_record()) == (80, 80)
    current = _record(width=64, height=64, source_width=80, source_height=80, mode="L")
    assert legacy.stored_size(current) == (64, 64)


# -- the issues' inputs on the real stack ----------------------------------------------------
@pytest.mark.stack
def test_sideways_jpegs_are_stored_upright_and_counted(tmp_path: Path, catalog: Catalog) -> None:
    for i in range(4):
        path = tmp_path / "src" / ("a" if i % 2 else "b") / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sideways_jpeg(i))
    (tmp_path / "src" / "a" / "upright.jpg").write_bytes(sideways_jpeg(9, orientation=1))
    name = f"exif-{uuid.uuid4().hex[:8]}"
    out = CliRunner().invoke(main, ["catalog", "ingest", str(tmp_path / "src"), "--name", name,
                                    "--layout", "imagefolder", "--split", "train=1"])
    assert out.exit_code == 0, out.output
    assert "EXIF orientation applied to 4 file(s): {'6': 4}" in out.output
    ref = out.output.strip().splitlines()[-1]
    manifest = catalog.manifest(ref)
    report = __import__("json").loads(catalog.attachment(ref, "report.json"))
    assert report["exif_oriented"] == {"applied": 4, "by_orientation": {"6": 4}}
    turned = [r for r in manifest.records if r.attributes.get("exif_orientation") == "6"]
    assert len(turned) == 4
    for record in turned:
        assert (record.width, record.height, record.source_width, record.source_height) == (48, 64, 48, 64)
        assert decode_png(catalog.fetch(record)).shape == (64, 48)
    [upright] = [r for r in manifest.records if "exif_orientation" not in r.attributes]
    assert (upright.width, upright.height) == (64, 48)


@pytest.mark.stack
def test_knee_resize_64_trains_the_64px_arch(tmp_path: Path, catalog: Catalog) -> None:
    from training.gan.config import GanTrainConfig
    from training.gan.preflight import check_run

    for i in range(12):
        path = tmp_path / "src" / ("a" if i % 2 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (80, 80), dtype=np.uint8)).save(path)
    name = f"knee64-{uuid.uuid4().hex[:8]}"
    out = CliRunner().invoke(main, ["catalog", "ingest", str(tmp_path / "src"), "--name", name, "--layout",
                                    "imagefolder", "--preprocess", "knee", "--resize", "64", "--split", "train=1"])
    assert out.exit_code == 0, out.output
    ref = out.output.strip().splitlines()[-1]
    manifest = catalog.manifest(ref)
    assert {(r.width, r.height, r.bit_depth, r.mode) for r in manifest.records} == {(64, 64, 8, "L")}
    assert {(r.source_width, r.source_height, r.source_bit_depth, r.source_mode)
            for r in manifest.records} == {(80, 80, 8, "L")}
    checked = check_run(GanTrainConfig(dataset=ref, arch="wgan-gp-knee-small", batch_size=4, workers=1))
    assert len(checked.records) == 12
    refused = CliRunner().invoke(main, ["train", "gan", "--dataset", ref, "--arch", "wgan-gp-knee", "--epochs", "1"])
    assert refused.exit_code == 1 and "has 64x64 (12) images but wgan-gp-knee makes 210x210" in refused.output
