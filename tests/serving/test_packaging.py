"""Deterministic image containers: same input → same bytes, lossless, marked synthetic."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from services.serving.packaging import read_images, read_manifest, to_npz, to_png_zip

META = {"model": "gan-phantom-knee-wgan-gp-knee-small", "version": "3", "run_id": "abc123", "seed": 7}
PACKERS = [to_png_zip, to_npz]


def _images(seed: int = 0, n: int = 4, shape: tuple[int, ...] = (16, 12)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("pack", PACKERS)
def test_same_input_same_bytes_across_time(pack, monkeypatch) -> None:
    first = pack(_images(), META)
    # A different wall clock must not leak into entry timestamps.
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    monkeypatch.setattr(time, "localtime", lambda *_: time.struct_time((2033, 5, 18, 3, 33, 20, 2, 138, 0)))
    assert pack(_images(), META) == first


@pytest.mark.parametrize("pack", PACKERS)
def test_different_pixels_or_meta_give_different_bytes(pack) -> None:
    base = pack(_images(), META)
    assert pack(_images(seed=1), META) != base
    assert pack(_images(), {**META, "seed": 8}) != base


@pytest.mark.parametrize("pack", PACKERS)
@pytest.mark.parametrize("shape", [(16, 12), (8, 8, 3)])
def test_round_trip_is_lossless(pack, shape) -> None:
    images = _images(shape=shape)
    out = read_images(pack(images, META))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("pack", PACKERS)
def test_manifest_marks_every_image_synthetic(pack) -> None:
    images = _images(n=3)
    manifest = read_manifest(pack(images, META))
    assert manifest["synthetic"] is True
    assert manifest["generator"] == META
    assert manifest["count"] == 3 and manifest["shape"] == [16, 12]
    assert [row["index"] for row in manifest["images"]] == [0, 1, 2]
    assert len({row["sha256_pixels"] for row in manifest["images"]}) == 3


def test_zip_entries_sorted_fixed_time_and_each_png_tagged() -> None:
    data = to_png_zip(_images(n=12), META)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        pngs = [n for n in names if n.endswith(".png")]
        assert pngs == sorted(pngs) and len(pngs) == 12
        assert pngs[:2] == ["img-00000.png", "img-00001.png"]
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert zf.testzip() is None  # every CRC checks out
        with Image.open(io.BytesIO(zf.read("img-00011.png"))) as img:
            text = dict(img.text)
    assert text["Synthetic"] == "true"
    assert text["Index"] == "11"
    assert text["synthray:model"] == META["model"] and text["synthray:version"] == "3"
    assert text["synthray:seed"] == "7"


def test_npz_loads_without_pickle() -> None:
    with np.load(io.BytesIO(to_npz(_images(), META)), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["images", "manifest"]
        assert npz["images"].shape == (4, 16, 12)


@pytest.mark.parametrize("compress", [False, True])
def test_npz_is_stored_unless_compressed_and_both_read_back(compress: bool) -> None:
    smooth = np.repeat(np.arange(64, dtype=np.uint8)[None, :, None], 64, axis=2).repeat(4, axis=0)  # compresses well
    data = to_npz(smooth, META, compress=compress)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        kinds = {info.compress_type for info in zf.infolist()}
    assert kinds == {zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED}
    np.testing.assert_array_equal(read_images(data), smooth)
    assert to_npz(smooth, META, compress=compress) == data
    if compress:
        assert len(data) < len(to_npz(smooth, META)) / 4


@pytest.mark.parametrize("pack", PACKERS)
@pytest.mark.parametrize("bad", [np.zeros((0, 4, 4), np.uint8), np.zeros((2, 4, 4), np.float32), np.zeros((4, 4), np.uint8)])
def test_rejects_wrong_arrays(pack, bad) -> None:
    with pytest.raises(ValueError, match="uint8"):
        pack(bad, META)


MASK_META = {**META, "mask_classes": ["background", "femur", "tibia", "fibula"]}


def _masks(seed: int = 0, n: int = 4, shape: tuple[int, int] = (16, 12)) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, 4, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("pack", PACKERS)
def test_image_mask_pairs_round_trip_deterministically(pack) -> None:
    from services.serving.packaging import read_masks

    data = pack(_images(), MASK_META, masks=_masks())
    assert pack(_images(), MASK_META, masks=_masks()) == data
    assert pack(_images(), MASK_META, masks=_masks(seed=1)) != data  # the masks are part of the bytes
    np.testing.assert_array_equal(read_images(data), _images())  # masks are not mistaken for images
    np.testing.assert_array_equal(read_masks(data), _masks())
    rows = read_manifest(data)["images"]
    assert [r["sha256_mask"] for r in rows] == [hashlib.sha256(m.tobytes()).hexdigest() for m in _masks()]
    assert read_manifest(data)["generator"]["mask_classes"] == MASK_META["mask_classes"]
    assert read_masks(pack(_images(), META)) is None  # image-only sets say so


def test_png_zip_puts_each_mask_next_to_its_image() -> None:
    data = to_png_zip(_images(n=3), MASK_META, masks=_masks(n=3))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        mask = Image.open(io.BytesIO(zf.read("mask-00001.png")))
        assert mask.info["Synthetic"] == "true" and "femur" in mask.info["synthray:mask_classes"]
    assert names == ["img-00000.png", "mask-00000.png", "img-00001.png", "mask-00001.png",
                     "img-00002.png", "mask-00002.png", "manifest.json"]
    rows = read_manifest(data)["images"]
    assert [(r["file"], r["mask_file"]) for r in rows] == [(f"img-0000{i}.png", f"mask-0000{i}.png") for i in range(3)]


@pytest.mark.parametrize("pack", PACKERS)
def test_masks_of_another_shape_are_refused(pack) -> None:
    from infra.errors import BadInput

    with pytest.raises(BadInput, match="masks must be uint8"):
        pack(_images(), MASK_META, masks=_masks(shape=(16, 11)))
    with pytest.raises(BadInput, match="masks must be uint8"):
        pack(_images(), MASK_META, masks=_masks().astype(np.int64))
