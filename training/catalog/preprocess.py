"""Preprocessing of knee radiographs as in Prezja et al. 2022 (Sci. Rep.), as recorded steps.

The paper's order is: lateral flip of right knees, negative detection and inversion,
global histogram equalization (its Eq. 1), resize 299 -> 210, and a Laplacian focus
filter (variance of |Laplacian| < 350 means blurry). Each step is a small frozen
dataclass with a ``name``, JSON-able ``params()`` and ``apply(img) -> (img, info)``, so
that a dataset manifest can record *how* it was made (``Pipeline.describe()``, once per
dataset) and *what happened to each image* (``Pipeline.run()``'s per-image infos).

Images are 2-D grayscale arrays, uint8 or uint16 (16-bit radiographs). Steps keep the
dtype, except equalization, which outputs uint8 like the paper's 8-bit images.

Segmentation masks (uint8 label maps, 0 = background) go through ``Pipeline.run_pair``:
geometric steps (``lateral_flip``, ``resize``) move the mask with the image, by the same
decision, and resample it with nearest neighbour so no new label value appears;
intensity steps (inversion, equalization, focus) leave the mask alone.

The paper does not describe its flip and negative detectors; the ones here are simple,
documented heuristics tuned on the procedural phantom (``training.catalog.phantom``), looked up
by name in ``FLIP_DETECTORS`` / ``NEGATIVE_DETECTORS`` so they can be swapped and recorded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from scipy import ndimage
from skimage.transform import resize as _sk_resize
from skimage.util import montage
from infra.errors import BadInput

__all__ = [
    "FLIP_DETECTORS",
    "FOCUS_SWEEP_EDGES",
    "NEGATIVE_DETECTORS",
    "PRESETS",
    "STEPS",
    "EqualizeHist",
    "FocusScore",
    "InvertNegative",
    "LateralFlip",
    "Pipeline",
    "Resize",
    "Step",
    "contact_sheet",
    "equalize_hist",
    "focus_bands",
    "laplacian_focus",
    "pipeline",
    "resize_labels",
]

#: The paper's threshold grid for the focus filter (threshold 350 was picked by eye from it).
FOCUS_SWEEP_EDGES: tuple[float, ...] = (0.0, 175.0, 350.0, 525.0)

_MAX_VALUE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float64)


# ----------------------------------------------------------------------- helpers


def _max_value(img: np.ndarray) -> int:
    """White level of the image's dtype; only the radiograph dtypes are accepted."""
    try:
        return _MAX_VALUE[img.dtype]
    except KeyError:
        raise TypeError(f"expected a uint8 or uint16 image, got dtype {img.dtype}") from None


def _check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 2:
        raise BadInput(f"expected a 2-D grayscale array, got shape {getattr(img, 'shape', None)}")
    _max_value(img)
    return img


def _as_8bit_scale(img: np.ndarray) -> np.ndarray:
    """float64 pixels on a 0..255 scale (uint16 / 257 is exact: 65535 / 257 == 255)."""
    x = img.astype(np.float64)
    return x / 257.0 if img.dtype == np.uint16 else x


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    return np.clip(np.rint(_as_8bit_scale(img)), 0, 255).astype(np.uint8)


def resize_labels(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map to ``shape``: every output value is an input value."""
    out = _sk_resize(mask, shape, order=0, anti_aliasing=False, preserve_range=True)
    return np.ascontiguousarray(out.astype(mask.dtype))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, anti-aliased square resize that returns the input dtype (rounded, clipped)."""
    out = _sk_resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, _max_value(img)).astype(img.dtype)


def _lookup(registry: dict[str, Any], kind: str, name: str) -> Any:
    try:
        return registry[name]
    except KeyError:
        raise BadInput(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}") from None


# --------------------------------------------------------------------- detectors


def _border_is_negative(img: np.ndarray) -> bool:
    """Negative iff the border band (8 % of the side) is brighter than the centre box.

    In a positive radiograph the border is air / thin soft tissue (dark) and the centre
    of a knee crop is bone (bright); a negative swaps that. Medians ignore labels, rulers
    and the femur / tibia shafts that cross the top and bottom edges. On the phantom the
    median gap is ~85 grey levels and never below ~65, in either polarity.
    """
    h, w = img.shape
    b = max(1, round(0.08 * min(h, w)))
    ring = np.ones((h, w), dtype=bool)
    ring[b : h - b, b : w - b] = False
    centre = img[h // 4 : h - h // 4, w // 4 : w - w // 4]
    return bool(np.median(img[ring]) > np.median(centre))


def _fibula_on_left(img: np.ndarray) -> bool:
    """Right knee iff the fibula (lateral side) lies on the image left.

    A left knee in the standard AP view has the fibula on the image right. Below the
    joint line (rows 60-95 % of the height) the column profile holds the wide tibia
    shaft and, on one side, the thin fibula. A grey-level top-hat of the profile with a
    window of 20 % of the width (wider than the fibula, narrower than the tibia) keeps
    only thin bright ridges; the outer 30 % strip (outside the tibia shaft, so its
    trabecular texture does not count) with more ridge mass holds the fibula. Runs
    before inversion in the paper's order, so polarity is first normalised with the
    ``"border"`` negative detector. Phantom: 100 % at 64-299 px, ~99.9 % even on
    already equalized images.
    """
    x = img.astype(np.float64)
    if _border_is_negative(img):
        x = _max_value(img) - x
    h, w = x.shape
    top = min(round(0.6 * h), h - 1)
    profile = x[top : max(round(0.95 * h), top + 1)].mean(axis=0)
    ridges = profile - ndimage.grey_opening(profile, size=max(3, round(0.2 * w)))
    outer = max(1, round(0.3 * w))
    return bool(ridges[:outer].sum() > ridges[w - outer :].sum())


def _never(img: np.ndarray) -> bool:
    """Switch a step off while keeping it (and its per-image info) in the manifest."""
    return False


#: True = right knee (mirrored relative to the canonical left knee), i.e. needs flipping.
FLIP_DETECTORS: dict[str, Callable[[np.ndarray], bool]] = {"fibula": _fibula_on_left, "never": _never}
#: True = negative image (bone dark), i.e. needs inverting.
NEGATIVE_DETECTORS: dict[str, Callable[[np.ndarray], bool]] = {"border": _border_is_negative, "never": _never}


# ------------------------------------------------------------------- pure ops


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """Global histogram equalization, the paper's Eq. 1, to uint8.

    h(v) = round(255 (cdf(v) - cdf_min) / (M N - cdf_min)) with the cdf over the image's
    own levels (256 or 65536) and cdf_min the smallest nonzero cdf value, so the darkest
    present level maps to 0 and the brightest to 255. Written out (not skimage's
    ``equalize_hist``, which bins and normalises differently) to match the formula.
    ``round`` is NumPy's (half to even). A constant image has M N == cdf_min and maps to 0.
    """
    _check_image(img)
    cdf = np.cumsum(np.bincount(img.ravel(), minlength=_max_value(img) + 1), dtype=np.int64)
    cdf_min = int(cdf[cdf > 0][0])
    denom = img.size - cdf_min
    if denom == 0:
        return np.zeros(img.shape, dtype=np.uint8)
    lut = np.rint(255.0 * (cdf - cdf_min) / denom)
    return np.clip(lut, 0, 255).astype(np.uint8)[img]


def laplacian_focus(img: np.ndarray) -> float:
    """Focus score: variance of |Laplacian| (paper: blurry if < 350).

    The 4-neighbour kernel is applied with ``scipy.ndimage.convolve`` on float64 values
    in the 0..255 scale (uint16 is divided by 257 so the paper's threshold keeps its
    meaning) with border mode ``"mirror"``, which is OpenCV's default BORDER_REFLECT_101,
    the likely original implementation.
    """
    _check_image(img)
    s = ndimage.convolve(_as_8bit_scale(img), _LAPLACIAN, mode="mirror")
    return float(np.var(np.abs(s)))


def focus_bands(scores: Sequence[float], edges: Sequence[float] = FOCUS_SWEEP_EDGES) -> list[int]:
    """Band index per score for review of the threshold grid: band i holds
    edges[i] <= s < edges[i+1], the last band s >= edges[-1]; s < edges[0] goes to band 0."""
    bounds = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(bounds, np.asarray(scores, dtype=np.float64), side="right")
    return [int(i) for i in np.clip(idx - 1, 0, len(edges) - 1)]


def contact_sheet(
    images: Sequence[np.ndarray], per_row: int = 8, tile: int = 96, max_images: int = 64
) -> np.ndarray:
    """uint8 grid of thumbnails for judging by eye (how the paper chose its threshold).

    At most ``max_images`` images, each resized to tile x tile, ``per_row`` per row, with
    2-px dark separators and frame. Empty input gives a blank tile.
    """
    if per_row < 1 or tile < 1 or max_images < 1:
        raise BadInput("per_row, tile and max_images must be >= 1")
    thumbs = [_resize(_to_uint8(_check_image(im)), tile) for im in list(images)[:max_images]]
    if not thumbs:
        return np.zeros((tile, tile), dtype=np.uint8)
    cols = min(per_row, len(thumbs))
    grid = (math.ceil(len(thumbs) / cols), cols)
    return montage(np.stack(thumbs), grid_shape=grid, padding_width=2, fill=0).astype(np.uint8)


# ------------------------------------------------------------------------ steps


class Step(Protocol):
    """One recorded preprocessing step (``name`` is a class attribute on the steps)."""

    @property
    def name(self) -> str: ...

    def params(self) -> dict: ...

    def apply(self, img: np.ndarray) -> tuple[np.ndarray, dict]: ...


class _Params:
    """``params()`` = the dataclass fields, which are all JSON-able scalars."""

    def params(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class _DetectorStep(_Params):
    """A step that a pluggable detector switches on per image; ``flag`` records the decision."""

    detectors: ClassVar[dict]
    kind: ClassVar[str]
    flag: ClassVar[str]
    detector: str

    def __post_init__(self) -> None:
        _lookup(self.detectors, self.kind, self.detector)  # an unknown detector fails at construction

    def apply(self, img: np.ndarray) -> tuple[np.ndarray, dict]:
        hit = bool(_lookup(self.detectors, self.kind, self.detector)(_check_image(img)))
        return (self.transform(img) if hit else img), {self.flag: hit}

    def transform(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class LateralFlip(_DetectorStep):
    """Mirror right knees to the canonical left-knee orientation (paper step 1)."""

    name: ClassVar[str] = "lateral_flip"
    detectors: ClassVar[dict] = FLIP_DETECTORS
    kind: ClassVar[str] = "flip detector"
    flag: ClassVar[str] = "flipped"
    detector: str = "fibula"

    def transform(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_mask(self, mask: np.ndarray, info: dict) -> np.ndarray:
        """The image's flip decision (``info``), applied to its mask."""
        return self.transform(mask) if info[self.flag] else mask


@dataclass(frozen=True)
class InvertNegative(_DetectorStep):
    """Turn negatives (bone dark) into positives: max_value - img (paper step 2)."""

    name: ClassVar[str] = "invert_negative"
    detectors: ClassVar[dict] = NEGATIVE_DETECTORS
    kind: ClassVar[str] = "negative detector"
    flag: ClassVar[str] = "inverted"
    detector: str = "border"

    def transform(self, img: np.ndarray) -> np.ndarray:
        return (_max_value(img) - img).astype(img.dtype)


@dataclass(frozen=True)
class EqualizeHist(_Params):
    """Global histogram equalization, paper Eq. 1; output uint8 (paper step 3)."""

    name: ClassVar[str] = "equalize_hist"

    def apply(self, img: np.ndarray) -> tuple[np.ndarray, dict]:
        return equalize_hist(img), {}


@dataclass(frozen=True)
class Resize(_Params):
    """Square resize (paper: 299 -> 210), anti-aliased bilinear, dtype kept (paper step 4)."""

    name: ClassVar[str] = "resize"
    size: int = 210

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1:
            raise BadInput(f"size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))

    def apply(self, img: np.ndarray) -> tuple[np.ndarray, dict]:
        if _check_image(img).shape == (self.size, self.size):
            return img, {"resized": False}
        return _resize(img, self.size), {"resized": True}

    def apply_mask(self, mask: np.ndarray, info: dict) -> np.ndarray:
        """Nearest neighbour, so the label values stay those of the input mask."""
        return resize_labels(mask, (self.size, self.size)) if info["resized"] else mask


@dataclass(frozen=True)
class FocusScore(_Params):
    """Record the Laplacian focus score and flag blurry images (score < threshold); the
    image is unchanged, so the caller decides whether to drop, review or keep it."""

    name: ClassVar[str] = "focus"
    threshold: float = 350.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", float(self.threshold))

    def apply(self, img: np.ndarray) -> tuple[np.ndarray, dict]:
        score = laplacian_focus(img)
        return img, {"focus": round(score, 3), "blurry": bool(score < self.threshold)}


STEPS: dict[str, type] = {
    cls.name: cls for cls in (LateralFlip, InvertNegative, EqualizeHist, Resize, FocusScore)
}


# --------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class Pipeline:
    """Ordered steps; ``describe()`` goes into the dataset manifest once, ``run()``'s
    per-image list into each image record."""

    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))

    def describe(self) -> list[dict]:
        return [{"step": s.name, **s.params()} for s in self.steps]

    def run(self, img: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        records = []
        for s in self.steps:
            img, info = s.apply(img)
            records.append({"step": s.name, **info})
        return img, records

    def run_pair(self, img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """:meth:`run` on the image; geometric steps (those with ``apply_mask``) also move the mask.

        Args:
            img: the image, as for :meth:`run`.
            mask: uint8 (H, W) label map of the same size as ``img``.

        Returns:
            (image, mask, per-step infos); the infos are the image's, identical to :meth:`run`'s.
        """
        if mask.shape != img.shape[:2]:
            raise BadInput(f"mask {mask.shape} and image {img.shape[:2]} differ in size", field="mask")
        records = []
        for s in self.steps:
            img, info = s.apply(img)
            if (move := getattr(s, "apply_mask", None)) is not None:
                mask = move(mask, info)
            records.append({"step": s.name, **info})
        return img, mask, records

    @classmethod
    def from_description(cls, description: Sequence[dict]) -> Pipeline:
        """Rebuild a pipeline from a manifest's ``describe()`` output (steps by name)."""
        steps = []
        for entry in description:
            params = dict(entry)
            steps.append(_lookup(STEPS, "step", params.pop("step"))(**params))
        return cls(tuple(steps))


def _none() -> Pipeline:
    return Pipeline(())


def _knee(
    *,
    size: int = 210,
    threshold: float = 350.0,
    flip_detector: str = "fibula",
    negative_detector: str = "border",
) -> Pipeline:
    """The paper's order: flip, invert, equalize, resize, focus."""
    return Pipeline(
        (
            LateralFlip(flip_detector),
            InvertNegative(negative_detector),
            EqualizeHist(),
            Resize(size),
            FocusScore(threshold),
        )
    )


def _radiograph(*, size: int = 210, **_knee_options: Any) -> Pipeline:
    """Any radiograph or slice (DICOM, NIfTI) into a GAN's input: global histogram
    equalization on the full bit depth (16-bit in, 8-bit out, so nothing is squashed to
    8 bits first), then the square resize. No knee-specific detectors."""
    return Pipeline((EqualizeHist(), Resize(size)))


PRESETS: dict[str, Callable[..., Pipeline]] = {"none": _none, "knee": _knee, "radiograph": _radiograph}


def pipeline(preset: str, **kwargs: Any) -> Pipeline:
    """Build a preset pipeline by name; an unknown name raises ValueError listing the known ones."""
    return _lookup(PRESETS, "preset", preset)(**kwargs)
