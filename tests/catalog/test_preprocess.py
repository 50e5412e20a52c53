"""Tests for the knee-paper preprocessing steps (training/catalog/preprocess.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from training.catalog import preprocess as pp
from training.catalog.phantom import PhantomImage, PhantomSpec, make_phantom

N_PHANTOM = 200


@pytest.fixture(scope="module")
def phantoms() -> dict[int, list[PhantomImage]]:
    """Enough negatives and blurred images to measure the detectors and the focus filter."""
    flags = dict(inverted_fraction=0.3, blurred_fraction=0.3)
    specs = {s: PhantomSpec(size=s, seed=100 + s, **flags) for s in (64, 210)}
    return {size: make_phantom(N_PHANTOM, spec) for size, spec in specs.items()}


def _ramp(h: int = 40, w: int = 50, dtype: type = np.uint8) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.linspace(0, top, h * w).reshape(h, w).astype(dtype)


# ------------------------------------------------------------------ equalize_hist


def test_equalize_hist_matches_eq1_by_hand() -> None:
    img = np.array([[7, 7, 50], [50, 50, 90]], dtype=np.uint8)
    # M*N = 6; cdf(7) = 2, cdf(50) = 5, cdf(90) = 6; cdf_min = 2, so the denominator is 4:
    # h(7) = 255*0/4 = 0, h(50) = round(255*3/4) = round(191.25) = 191, h(90) = 255*4/4 = 255.
    expected = np.array([[0, 0, 191], [191, 191, 255]], dtype=np.uint8)
    out = pp.equalize_hist(img)
    assert out.dtype == np.uint8
    assert np.array_equal(out, expected)


def test_equalize_hist_uint16_uses_all_levels() -> None:
    img = np.array([[1000, 60000], [60000, 65535]], dtype=np.uint16)
    # cdf(1000) = 1, cdf(60000) = 3, cdf(65535) = 4; cdf_min = 1: 0, round(255*2/3) = 170, 255.
    out = pp.equalize_hist(img)
    assert out.dtype == np.uint8
    assert np.array_equal(out, np.array([[0, 170], [170, 255]], dtype=np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_equalize_hist_constant_image_is_zero(dtype: type) -> None:
    out = pp.equalize_hist(np.full((5, 7), 123, dtype=dtype))
    assert out.dtype == np.uint8 and out.shape == (5, 7) and not out.any()


# ---------------------------------------------------------------- laplacian_focus


def test_laplacian_focus_by_hand_with_mirror_borders() -> None:
    img = np.array([[0, 0, 0], [0, 9, 0], [0, 0, 0]], dtype=np.uint8)
    # S = 4*I - up - down - left - right with "mirror" borders (index -1 reads index 1):
    # centre 36; edge midpoints see the 9 twice (inside + mirrored) -> -18; corners 0.
    # |S| = [[0,18,0],[18,36,18],[0,18,0]]: mean 12, mean of squares 288, variance 144.
    # ("reflect"/"constant" borders would give -9 at the edges and variance 116.)
    assert pp.laplacian_focus(img) == pytest.approx(144.0)


def test_laplacian_focus_lower_for_blurred() -> None:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    blurred = np.rint(ndimage.gaussian_filter(sharp.astype(float), 2.0)).astype(np.uint8)
    assert pp.laplacian_focus(blurred) < 0.1 * pp.laplacian_focus(sharp)


def test_laplacian_focus_uint16_on_the_8bit_scale() -> None:
    img = np.random.default_rng(1).integers(0, 256, (20, 30)).astype(np.uint8)
    wide = img.astype(np.uint16) * 257
    assert pp.laplacian_focus(wide) == pytest.approx(pp.laplacian_focus(img), rel=1e-12)


# ------------------------------------------------------------------------- steps


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_resize_shape_dtype_mean_and_noop(dtype: type) -> None:
    img = _ramp(90, 120, dtype)
    out, info = pp.Resize(32).apply(img)
    assert out.shape == (32, 32) and out.dtype == dtype and info == {"resized": True}
    assert abs(out.mean() - img.mean()) < 0.01 * np.iinfo(dtype).max
    same, info = pp.Resize(32).apply(out)
    assert same is out and info == {"resized": False}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_invert_negative_transform(monkeypatch: pytest.MonkeyPatch, dtype: type) -> None:
    monkeypatch.setitem(pp.NEGATIVE_DETECTORS, "stub", lambda img: True)
    img = _ramp(6, 5, dtype)
    out, info = pp.InvertNegative("stub").apply(img)
    assert info == {"inverted": True} and out.dtype == dtype
    assert np.array_equal(out, np.iinfo(dtype).max - img)
    kept, info = pp.InvertNegative("never").apply(img)
    assert info == {"inverted": False} and np.array_equal(kept, img)


def test_lateral_flip_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pp.FLIP_DETECTORS, "stub", lambda img: True)
    img = _ramp(6, 5, np.uint16)
    out, info = pp.LateralFlip("stub").apply(img)
    assert info == {"flipped": True} and out.dtype == np.uint16
    assert np.array_equal(out, img[:, ::-1])
    kept, info = pp.LateralFlip("never").apply(img)
    assert info == {"flipped": False} and np.array_equal(kept, img)


def test_focus_step_leaves_image_and_flags_by_threshold() -> None:
    img = np.array([[0, 0, 0], [0, 9, 0], [0, 0, 0]], dtype=np.uint8)  # focus 144 (see above)
    out, info = pp.FocusScore(150.0).apply(img)
    assert out is img and info == {"focus": 144.0, "blurry": True}
    assert pp.FocusScore(144.0).apply(img)[1]["blurry"] is False


def test_steps_reject_bad_images() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pp.EqualizeHist().apply(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="float64"):
        pp.Resize(8).apply(np.zeros((4, 4)))


# ---------------------------------------------------------------------- pipeline


def test_pipeline_records_steps_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pp.NEGATIVE_DETECTORS, "stub", lambda img: True)
    pipe = pp.Pipeline((pp.InvertNegative("stub"), pp.Resize(8), pp.FocusScore(10.0)))
    assert pipe.describe() == [
        {"step": "invert_negative", "detector": "stub"},
        {"step": "resize", "size": 8},
        {"step": "focus", "threshold": 10.0},
    ]
    img = _ramp(16, 16)
    out, records = pipe.run(img)
    assert [r["step"] for r in records] == ["invert_negative", "resize", "focus"]
    assert records[0] == {"step": "invert_negative", "inverted": True}
    assert records[1] == {"step": "resize", "resized": True}
    assert set(records[2]) == {"step", "focus", "blurry"}
    assert np.array_equal(out, pp.Resize(8).apply(255 - img)[0])
    json.dumps([pipe.describe(), records])  # both go into the manifest


def test_knee_preset_is_the_paper_order() -> None:
    pipe = pp.pipeline("knee", size=128, threshold=175.0)
    assert pipe.describe() == [
        {"step": "lateral_flip", "detector": "fibula"},
        {"step": "invert_negative", "detector": "border"},
        {"step": "equalize_hist"},
        {"step": "resize", "size": 128},
        {"step": "focus", "threshold": 175.0},
    ]
    defaults = pp.pipeline("knee").describe()[3:]
    assert defaults == [{"step": "resize", "size": 210}, {"step": "focus", "threshold": 350.0}]
    assert set(pp.STEPS) == {d["step"] for d in pipe.describe()}
    assert pp.Pipeline.from_description(pipe.describe()) == pipe


def test_none_preset_is_identity() -> None:
    img = _ramp()
    out, records = pp.pipeline("none").run(img)
    assert out is img and records == [] and pp.pipeline("none").describe() == []


def test_unknown_names_raise_value_error() -> None:
    with pytest.raises(ValueError, match=r"'bogus'.*knee.*none"):
        pp.pipeline("bogus")
    with pytest.raises(ValueError, match=r"'left'.*fibula"):
        pp.pipeline("knee", flip_detector="left")
    with pytest.raises(ValueError, match=r"'dark'.*border"):
        pp.InvertNegative("dark")


# -------------------------------------------------------- detectors on the phantom


@pytest.mark.parametrize("size", [64, 210])
def test_detectors_on_phantom(phantoms: dict[int, list[PhantomImage]], size: int) -> None:
    images = phantoms[size]
    assert sum(im.inverted for im in images) >= 40 and sum(im.mirrored for im in images) >= 70
    flip, negative = pp.FLIP_DETECTORS["fibula"], pp.NEGATIVE_DETECTORS["border"]
    assert np.mean([flip(im.pixels) == im.mirrored for im in images]) >= 0.95
    assert np.mean([negative(im.pixels) == im.inverted for im in images]) >= 0.99
    # Same answers for 16-bit radiographs.
    for im in images[:20]:
        wide = im.pixels.astype(np.uint16) * 257
        assert flip(wide) == flip(im.pixels) and negative(wide) == negative(im.pixels)


def test_knee_pipeline_canonicalises_phantom(phantoms: dict[int, list[PhantomImage]]) -> None:
    pipe = pp.pipeline("knee")
    for im in phantoms[210][:40]:
        out, records = pipe.run(im.pixels)
        assert out.shape == (210, 210) and out.dtype == np.uint8
        assert records[0]["flipped"] == im.mirrored and records[1]["inverted"] == im.inverted
        assert not pp.FLIP_DETECTORS["fibula"](out) and not pp.NEGATIVE_DETECTORS["border"](out)


@pytest.mark.parametrize("size", [64, 210])
def test_focus_separates_blurred_phantom(phantoms: dict[int, list[PhantomImage]], size: int) -> None:
    pipe = pp.pipeline("knee", size=size)
    focus = {True: [], False: []}
    for im in phantoms[size]:
        focus[im.blurred].append(pipe.run(im.pixels)[1][-1]["focus"])
    assert len(focus[True]) >= 30
    assert np.median(focus[True]) < 0.5 * np.median(focus[False])
    if size == 210:  # the paper's threshold is meant for 210-px images
        assert max(focus[True]) < 350.0 < min(focus[False])


# ------------------------------------------------------------------ review helpers


def test_focus_bands_exact_edges() -> None:
    scores = [-1.0, 0.0, 174.999, 175.0, 349.9, 350.0, 524.0, 525.0, 1e6]
    assert pp.focus_bands(scores) == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert pp.focus_bands([5.0, 10.0], edges=(0.0, 10.0)) == [0, 1]
    assert pp.focus_bands([]) == []


def test_contact_sheet_grid_dtype_and_limits() -> None:
    images = [_ramp(30, 40), _ramp(50, 50, np.uint16), *[_ramp()] * 8]
    sheet = pp.contact_sheet(images, per_row=4, tile=16)
    assert sheet.dtype == np.uint8 and sheet.shape == (3 * 18 + 2, 4 * 18 + 2)
    assert sheet[:2].max() == 0 and sheet[:, 18:20].max() == 0  # frame and separators are dark
    assert sheet[2:18, 20:36].max() > 200  # the uint16 ramp is scaled to 8 bit, not clipped
    assert sheet[38:54, 38:].max() == 0  # the last row holds 2 images, the rest is blank
    capped = pp.contact_sheet(images, per_row=4, tile=16, max_images=3)
    assert capped.shape == (18 + 2, 3 * 18 + 2)
    empty = pp.contact_sheet([], tile=24)
    assert empty.shape == (24, 24) and empty.dtype == np.uint8 and not empty.any()
