"""Tests for the procedural knee phantom (training/catalog/phantom.py)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from training.catalog.phantom import (
    CHEN2019_GRADE_COUNTS,
    KL_NAMES,
    PhantomSpec,
    make_phantom,
    make_phantom_image,
    write_phantom,
)

CLEAN = dict(mirrored_fraction=0.0, inverted_fraction=0.0, blurred_fraction=0.0)
UNIFORM = (1.0, 1.0, 1.0, 1.0, 1.0)


def _binomial_tolerance(p: float, n: int, design_effect: float = 1.0) -> float:
    """Four standard deviations of a sample proportion (plus a floor for p ~ 0)."""
    return 4.0 * math.sqrt(max(p * (1 - p), 0.25 / n) * design_effect / n)


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes() -> None:
    spec = PhantomSpec(size=64, seed=7)
    a, b = make_phantom(12, spec), make_phantom(12, spec)
    assert [im.pixels.tobytes() for im in a] == [im.pixels.tobytes() for im in b]
    assert [(im.grade, im.patient_id, im.side, im.inverted, im.blurred) for im in a] == [
        (im.grade, im.patient_id, im.side, im.inverted, im.blurred) for im in b
    ]


def test_image_alone_equals_image_in_batch() -> None:
    spec = PhantomSpec(size=64, seed=3)
    batch = make_phantom(25, spec)
    for i in (0, 1, 13, 24):
        alone = make_phantom_image(i, spec)
        assert alone.index == i
        assert alone.pixels.tobytes() == batch[i].pixels.tobytes()
        fields = ("grade", "patient_id", "side", "mirrored", "inverted", "blurred")
        assert [getattr(alone, f) for f in fields] == [getattr(batch[i], f) for f in fields]


def test_different_seed_or_index_differs() -> None:
    a = make_phantom_image(0, PhantomSpec(size=64, seed=0))
    b = make_phantom_image(0, PhantomSpec(size=64, seed=1))
    c = make_phantom_image(1, PhantomSpec(size=64, seed=0))
    assert a.pixels.tobytes() != b.pixels.tobytes()
    assert a.pixels.tobytes() != c.pixels.tobytes()


@settings(max_examples=20, deadline=None)
@given(index=st.integers(0, 10_000), seed=st.integers(0, 2**32), size=st.integers(32, 72))
def test_render_is_a_pure_function(index: int, seed: int, size: int) -> None:
    spec = PhantomSpec(size=size, seed=seed)
    a, b = make_phantom_image(index, spec), make_phantom_image(index, spec)
    assert a.pixels.shape == (size, size) and a.pixels.dtype == np.uint8
    assert np.array_equal(a.pixels, b.pixels)
    assert 0 <= a.grade < len(KL_NAMES)
    assert a.pixels.std() > 5  # not a blank image


# ------------------------------------------------------------ shapes and labels


@pytest.mark.parametrize("size", [32, 64, 128, 210, 299])
def test_shape_and_dtype(size: int) -> None:
    images = make_phantom(3, PhantomSpec(size=size))
    for im in images:
        assert im.pixels.shape == (size, size)
        assert im.pixels.dtype == np.uint8
        assert im.pixels.flags.c_contiguous
        assert int(im.pixels.max()) - int(im.pixels.min()) > 60  # real contrast


def test_default_spec_matches_the_knee_paper() -> None:
    spec = PhantomSpec()
    assert spec.size == 210
    assert KL_NAMES == ("KL0", "KL1", "KL2", "KL3", "KL4")
    expected = np.array(CHEN2019_GRADE_COUNTS) / sum(CHEN2019_GRADE_COUNTS)
    np.testing.assert_allclose(spec.grade_weights, expected)
    assert math.isclose(sum(spec.grade_weights), 1.0)
    assert make_phantom_image(0).pixels.shape == (210, 210)


def test_patient_ids_group_consecutive_images() -> None:
    images = make_phantom(7, PhantomSpec(size=32, images_per_patient=3))
    ids = [im.patient_id for im in images]
    assert all(re.fullmatch(r"phantom-p\d{5}", pid) for pid in ids)
    assert ids == ["phantom-p00000"] * 3 + ["phantom-p00001"] * 3 + ["phantom-p00002"]


def test_images_of_one_patient_share_grade_more_often_than_chance() -> None:
    images = make_phantom(400, PhantomSpec(size=32, grade_weights=UNIFORM, images_per_patient=2))
    pairs = [(images[i].grade, images[i + 1].grade) for i in range(0, 400, 2)]
    same = np.mean([a == b for a, b in pairs])
    assert same > 0.2 + 0.25  # independent draws would agree 20 % of the time


def test_side_is_r_exactly_for_mirrored_images() -> None:
    for im in make_phantom(60, PhantomSpec(size=32)):
        assert im.side == ("R" if im.mirrored else "L")


# ---------------------------------------------------------- flag and grade rates


@pytest.mark.parametrize(
    "fractions",
    [
        dict(mirrored_fraction=0.5, inverted_fraction=0.03, blurred_fraction=0.05),  # defaults
        dict(mirrored_fraction=0.2, inverted_fraction=0.3, blurred_fraction=0.15),
    ],
)
def test_flag_fractions_match_spec(fractions: dict) -> None:
    n = 400
    images = make_phantom(n, PhantomSpec(size=32, seed=11, **fractions))
    for flag in ("mirrored", "inverted", "blurred"):
        p = fractions[f"{flag}_fraction"]
        observed = np.mean([getattr(im, flag) for im in images])
        assert abs(observed - p) <= _binomial_tolerance(p, n), (flag, observed, p)


def test_flag_fractions_zero_and_one_are_exact() -> None:
    none = make_phantom(50, PhantomSpec(size=32, **CLEAN))
    assert not any(im.mirrored or im.inverted or im.blurred for im in none)
    all_on = dict(mirrored_fraction=1, inverted_fraction=1, blurred_fraction=1)
    every = make_phantom(50, PhantomSpec(size=32, **all_on))
    assert all(im.mirrored and im.inverted and im.blurred for im in every)


def test_grade_proportions_follow_weights() -> None:
    n = 400
    spec = PhantomSpec(size=32, seed=5)
    grades = np.array([im.grade for im in make_phantom(n, spec)])
    observed = np.bincount(grades, minlength=5) / n
    # Images of a patient are correlated (pairs), which at most doubles the variance.
    for g, p in enumerate(spec.grade_weights):
        assert abs(observed[g] - p) <= _binomial_tolerance(p, n, design_effect=2.0), (g, observed, p)


def test_grade_weights_restrict_the_grades() -> None:
    only_two = {im.grade for im in make_phantom(40, PhantomSpec(size=32, grade_weights=(0, 0, 3, 0, 0)))}
    assert only_two == {2}
    extremes = {im.grade for im in make_phantom(80, PhantomSpec(size=32, grade_weights=(1, 0, 0, 0, 1)))}
    assert extremes == {0, 4}


# ------------------------------------------------------ flags change the pixels


def test_inverted_image_is_the_negative() -> None:
    for i in range(6):
        plain = make_phantom_image(i, PhantomSpec(size=64, **CLEAN))
        neg = make_phantom_image(i, PhantomSpec(size=64, **{**CLEAN, "inverted_fraction": 1.0}))
        assert neg.inverted and not plain.inverted
        assert np.array_equal(neg.pixels, 255 - plain.pixels)


def test_inversion_is_visible_from_pixels() -> None:
    """Bone (centre columns) is brighter than the soft-tissue border unless inverted."""
    images = make_phantom(200, PhantomSpec(size=64, seed=2, inverted_fraction=0.25, blurred_fraction=0.2))
    assert 20 < sum(im.inverted for im in images) < 80
    for im in images:
        p = im.pixels.astype(float)
        border = np.r_[p[:, :5].ravel(), p[:, -5:].ravel()].mean()
        centre = p[:, 26:38].mean()
        assert (border > centre) == im.inverted, im.index


def test_mirrored_image_is_the_left_right_flip() -> None:
    for i in range(6):
        left = make_phantom_image(i, PhantomSpec(size=64, **CLEAN))
        right = make_phantom_image(i, PhantomSpec(size=64, **{**CLEAN, "mirrored_fraction": 1.0}))
        assert (left.side, right.side) == ("L", "R")
        assert np.array_equal(right.pixels, left.pixels[:, ::-1])


def test_fibula_lies_on_the_lateral_side() -> None:
    """Left knees show the fibula low on the image right, right knees low on the left."""
    spec = PhantomSpec(size=128, seed=4, mirrored_fraction=0.5, inverted_fraction=0.0, blurred_fraction=0.0)
    images = make_phantom(80, spec)
    correct = []
    for im in images:
        low = im.pixels[96:122].astype(float)
        right_band, left_band = low[:, 101:116].mean(), low[:, 12:27].mean()
        correct.append((right_band > left_band) == (im.side == "L"))
    assert 0 < sum(im.mirrored for im in images) < 80
    assert np.mean(correct) >= 0.95


def test_blurred_images_lose_fine_detail() -> None:
    def sharpness(p: np.ndarray) -> float:
        return float(ndimage.laplace(p.astype(float)).var())

    for i in range(6):
        plain = make_phantom_image(i, PhantomSpec(size=128, **CLEAN))
        soft = make_phantom_image(i, PhantomSpec(size=128, **{**CLEAN, "blurred_fraction": 1.0}))
        assert soft.blurred and not plain.blurred
        assert sharpness(soft.pixels) < 0.1 * sharpness(plain.pixels)
        assert abs(float(soft.pixels.mean()) - float(plain.pixels.mean())) < 3  # same content


# ------------------------------------------------------------- grade is visible


def _joint_space_width(pixels: np.ndarray) -> float:
    """Dark pixels per column in the band around the joint, in both compartments.

    Columns sit under the femoral condyles (away from the intercondylar notch); a
    pixel counts as joint space when it is closer to soft tissue than to bone.
    """
    s = pixels.shape[0]
    img = ndimage.uniform_filter1d(pixels.astype(float), 3, axis=1)
    rows = slice(int(s * 0.40), int(s * 0.62))
    cols = np.r_[int(s * 0.27) : int(s * 0.38), int(s * 0.62) : int(s * 0.73)]
    window = img[rows][:, cols]
    bone = np.median(window)
    soft = np.median(img[rows, : max(2, s // 32)])
    return float((window < (bone + soft) / 2).sum(axis=0).mean())


def test_joint_space_narrows_with_grade() -> None:
    images = make_phantom(300, PhantomSpec(size=128, seed=1, grade_weights=UNIFORM, **CLEAN))
    widths = {g: [_joint_space_width(im.pixels) for im in images if im.grade == g] for g in range(5)}
    assert all(len(w) >= 30 for w in widths.values())
    means = [float(np.mean(widths[g])) for g in range(5)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert means[0] > 3 * means[4], means  # KL0 wide, KL4 almost closed

    # Learnable: this one crude feature already separates KL0/1 from KL3/4.
    low = np.array(widths[0] + widths[1])
    high = np.array(widths[3] + widths[4])
    accuracy = max(((low > t).mean() + (high <= t).mean()) / 2 for t in np.linspace(0, 8, 81))
    assert accuracy > 0.85, accuracy


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 16),
        ("size", 64.0),
        ("seed", -1),
        ("grade_weights", (1.0, 1.0, 1.0, 1.0)),
        ("grade_weights", (0.0, 0.0, 0.0, 0.0, 0.0)),
        ("grade_weights", (1.0, -1.0, 1.0, 1.0, 1.0)),
        ("grade_weights", (1.0, float("nan"), 1.0, 1.0, 1.0)),
        ("grade_weights", "abcde"),
        ("mirrored_fraction", 1.5),
        ("inverted_fraction", -0.1),
        ("blurred_fraction", float("nan")),
        ("blurred_fraction", True),
        ("images_per_patient", 0),
    ],
)
def test_bad_spec_values_raise_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        PhantomSpec(**{field: value})


def test_bad_counts_raise() -> None:
    with pytest.raises(ValueError, match="index"):
        make_phantom_image(-1, PhantomSpec(size=32))
    with pytest.raises(ValueError, match="^n must"):
        make_phantom(-2, PhantomSpec(size=32))
    assert make_phantom(0, PhantomSpec(size=32)) == []


# ----------------------------------------------------------------------- files


def test_write_phantom_round_trips(tmp_path: Path) -> None:
    spec = PhantomSpec(size=64, seed=9, mirrored_fraction=0.5, inverted_fraction=0.3, blurred_fraction=0.3)
    images = make_phantom(12, spec)
    root = write_phantom(iter(images), tmp_path / "phantom")
    assert root == tmp_path / "phantom"

    with open(root / "phantom.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "grade", "patient_id", "side", "mirrored", "inverted", "blurred"]
        rows = list(reader)
    assert len(rows) == len(images)
    assert len(list(root.rglob("*.png"))) == len(images)

    for im, row in zip(images, rows):
        assert row["path"] == f"{im.grade}/{im.patient_id}_{im.side}_{im.index:05d}.png"
        assert int(row["grade"]) == im.grade
        assert (row["patient_id"], row["side"]) == (im.patient_id, im.side)
        flags = (row["mirrored"], row["inverted"], row["blurred"])
        assert flags == tuple(str(int(f)) for f in (im.mirrored, im.inverted, im.blurred))
        with Image.open(root / row["path"]) as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), im.pixels)
