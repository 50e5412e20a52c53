"""Procedural knee-radiograph phantom: labelled *fake* data for demos and tests.

Nothing here is medical data and nothing is derived from patients. The images are
drawn from simple geometric shapes (femur with condyles, tibia with plateau and
tibial spines, fibula, patella, soft tissue) so that the pipeline has labelled
knee-like pictures the machine can make on its own, offline and reproducibly.

The Kellgren-Lawrence (KL) grade controls what a grader would look at: joint-space
width (narrowest on the medial side), osteophytes at the joint margins and
subchondral sclerosis. KL0/1 and KL3/4 therefore differ clearly in the pixels.

On top of that each image gets per-patient and per-image anatomy variation,
quantum (Poisson) noise, film grain and slight blur, and a known fraction of
images is mirrored (right knees), inverted (negative) or strongly blurred so that
the preprocessing stage has ground truth to check against.

Every image is rendered from its own RNG, derived from ``(seed, index)`` (and
``(seed, patient)`` for patient-level anatomy), so image ``i`` is byte-identical
whether it is made alone or in a batch of any size.

With ``masks=True`` each image also gets its exact label map (``MASK_CLASSES``: 0
background, 1 femur, 2 tibia, 3 fibula): the pixels whose centre lies inside a bone's
signed distance field (osteophytes belong to their bone; the patella, a faint overlay, is
not labelled). Where the fibula head lies behind the tibia in the projection, the fibula
wins, so the fibula is a complete silhouette. Masks draw no random numbers, so the images
are the same bytes with or without them; mirrored images have mirrored masks, while
inversion and blur do not touch the mask.
"""

from __future__ import annotations

import csv
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from infra.errors import BadInput

__all__ = [
    "CHEN2019_GRADE_COUNTS",
    "KL_NAMES",
    "MASK_CLASSES",
    "PhantomImage",
    "PhantomSpec",
    "make_phantom",
    "make_phantom_image",
    "write_phantom",
]

KL_NAMES: tuple[str, ...] = ("KL0", "KL1", "KL2", "KL3", "KL4")
#: Values of the phantom's label maps (index = value).
MASK_CLASSES: tuple[str, ...] = ("background", "femur", "tibia", "fibula")

#: Images per KL grade in Chen et al. 2019 (OAI knee dataset), used as default balance.
CHEN2019_GRADE_COUNTS: tuple[int, int, int, int, int] = (3253, 1495, 2175, 1086, 251)
_CHEN_WEIGHTS = tuple(c / sum(CHEN2019_GRADE_COUNTS) for c in CHEN2019_GRADE_COUNTS)

# Size the anatomy and filter widths are tuned for; other sizes scale from it.
_REFERENCE_SIZE = 210
# Probability that an image takes its patient's grade instead of an independent draw.
# Both draws use the same weights, so the marginal grade distribution is unchanged,
# but images of one patient are correlated (which makes patient-disjoint splits matter).
_SAME_GRADE_AS_PATIENT = 0.7
PHANTOM_PATIENT_PREFIX = "phantom-"  # every phantom patient id starts with it (model cards check)

# Per-grade appearance, in normalised units (image half-width == 1).
_GAP_MEDIAL = (0.085, 0.072, 0.055, 0.030, 0.008)
_GAP_LATERAL = (0.085, 0.078, 0.066, 0.050, 0.028)
_OSTEOPHYTE_LEN = (0.0, 0.02, 0.045, 0.08, 0.12)
_SCLEROSIS = (0.0, 0.0, 0.04, 0.10, 0.18)

_CSV_COLUMNS = ("path", "grade", "patient_id", "side", "mirrored", "inverted", "blurred")


@dataclass(frozen=True)
class PhantomSpec:
    """All knobs of the phantom generator.

    Args:
        size: Output width and height in pixels (square images, >= 32).
        seed: Non-negative base seed; with ``index`` it fixes every pixel.
        grade_weights: Relative frequency of KL0..KL4 (non-negative, normalised
            internally). Defaults to the Chen 2019 proportions.
        mirrored_fraction: Probability an image is a right knee, i.e. mirrored
            left/right relative to the canonical left-knee rendering.
        inverted_fraction: Probability an image is stored as a negative.
        blurred_fraction: Probability an image is strongly blurred (degraded).
        images_per_patient: Consecutive indices sharing one patient id and its
            anatomy (think left + right knee, or follow-up visits).
    """

    size: int = _REFERENCE_SIZE
    seed: int = 0
    grade_weights: tuple[float, float, float, float, float] = _CHEN_WEIGHTS
    mirrored_fraction: float = 0.5
    inverted_fraction: float = 0.03
    blurred_fraction: float = 0.05
    images_per_patient: int = 2

    def __post_init__(self) -> None:
        _check_int("size", self.size, minimum=32)
        _check_int("seed", self.seed, minimum=0)
        _check_int("images_per_patient", self.images_per_patient, minimum=1)
        for name in ("mirrored_fraction", "inverted_fraction", "blurred_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise BadInput(f"{name} must be a number in [0, 1], got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise BadInput(f"{name} must be in [0, 1], got {value!r}")
        try:
            if isinstance(self.grade_weights, str):
                raise TypeError
            weights = tuple(float(w) for w in self.grade_weights)
        except (TypeError, ValueError):
            raise BadInput(f"grade_weights must be 5 numbers, got {self.grade_weights!r}") from None
        if len(weights) != len(KL_NAMES):
            raise BadInput(f"grade_weights must have {len(KL_NAMES)} entries, got {len(weights)}")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise BadInput(f"grade_weights must be finite, >= 0 and not all zero, got {weights!r}")
        object.__setattr__(self, "grade_weights", weights)
        for name in ("size", "seed", "images_per_patient"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("mirrored_fraction", "inverted_fraction", "blurred_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadInput(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise BadInput(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, eq=False)
class PhantomImage:
    """One rendered phantom radiograph (``pixels``: uint8, size x size) with its ground truth.

    ``side`` is ``"R"`` exactly for the mirrored images: the canonical rendering is a
    left knee (fibula on the image right), right knees are its left/right mirror.
    ``inverted`` images are negatives (bone dark), ``blurred`` ones lost fine detail.
    Instances compare by identity (``eq=False``) because ``==`` on arrays is
    ambiguous; compare ``pixels`` with ``np.array_equal``.
    """

    index: int
    pixels: np.ndarray
    grade: int
    patient_id: str
    side: str
    mirrored: bool
    inverted: bool
    blurred: bool
    mask: np.ndarray | None = None  # uint8 label map (values index MASK_CLASSES) when asked for

    @property
    def grade_name(self) -> str:
        return KL_NAMES[self.grade]


# --------------------------------------------------------------------------- shapes
# Shapes are approximate signed distance fields in normalised coordinates
# (negative inside). Unions are minima; a soft clip turns them into anti-aliased
# masks, and the depth inside (-sdf) drives the bright cortical rim.


def _sdf_ellipse(x, y, cx, cy, rx, ry, power=2.0):
    """Super-ellipse (power > 2 is boxier, like the femoral condyles)."""
    r = (np.abs((x - cx) / rx) ** power + np.abs((y - cy) / ry) ** power) ** (1.0 / power)
    return (r - 1.0) * min(rx, ry)


def _sdf_spike(x, y, bx, by, angle, length, width):
    """Tapered osteophyte: base centre (bx, by), pointing along ``angle``."""
    dx, dy = math.cos(angle), math.sin(angle)
    u = (x - bx) * dx + (y - by) * dy
    v = np.abs((x - bx) * dy - (y - by) * dx)
    taper = width * (1.0 - np.clip(u, 0.0, None) / length)
    return np.maximum(np.maximum(-u - width, u - length), v - taper)


def _femur(x, y, a):
    yc = a["joint"] - a["cond_ry"]  # centre line of the condyles
    flare = np.clip((y - (yc - a["flare_len"])) / a["flare_len"], 0.0, 1.0) ** 2
    half = a["femur_hw"] + (a["cond_hw"] - a["femur_hw"]) * flare
    sdf = np.maximum(np.abs(x) - half, y - yc)
    off, rx = a["cond_off"], a["cond_hw"] - a["cond_off"] + 0.01
    medial = _sdf_ellipse(x, y, -off, yc, rx, a["cond_ry"] * a["medial_ry"], 2.6)
    lateral = _sdf_ellipse(x, y, off, yc, rx, a["cond_ry"], 2.6)
    return np.minimum(sdf, np.minimum(medial, lateral))


def _tibia(x, y, a, gap_med, gap_lat):
    side = np.clip(x / 0.06, -1.0, 1.0) * 0.5 + 0.5  # 0 medial (left), 1 lateral
    top = a["joint"] + gap_med + (gap_lat - gap_med) * side
    # Plateaus follow the condyles loosely, spines rise into the notch, rims drop off.
    ax = np.abs(x)
    top = top + 0.25 * ((ax - a["cond_off"]) / a["cond_hw"]) ** 2
    top = top - a["spine_h"] * np.exp(-(((ax - 0.045) / 0.03) ** 2))
    top = top + 5.0 * np.clip(ax - 0.9 * a["plat_hw"], 0.0, None) ** 2
    t = np.clip((y - top - 0.08) / a["tibia_len"], 0.0, 1.0)  # condyles drop first
    half = a["plat_hw"] - (a["plat_hw"] - a["tibia_hw"]) * t * t * (3.0 - 2.0 * t)  # smoothstep
    return np.maximum(top - y, np.abs(x) - half)


def _fibula(x, y, a):
    fx, fy = a["fib_x"], a["joint"] + a["fib_dy"]
    head = _sdf_ellipse(x, y, fx, fy, 0.08, 0.07)
    styloid = _sdf_ellipse(x, y, fx + 0.035, fy - 0.05, 0.03, 0.045)
    centre = fx - 0.01 + 0.03 * (y - fy)
    shaft = np.maximum(np.abs(x - centre) - a["fib_hw"], fy - y)
    return np.minimum(np.minimum(head, styloid), shaft)


def _osteophytes(x, y, a, grade, gap, scale):
    """Four spikes growing from the joint margins (femoral/tibial, medial/lateral)."""
    length = _OSTEOPHYTE_LEN[grade]
    if length <= 0:
        return None
    # Femoral margin: point on the condyle outline a little above the joint line.
    off, ry = a["cond_off"], a["cond_ry"]
    rx = a["cond_hw"] - off + 0.01
    fy = a["joint"] - 0.35 * ry
    fx = off + rx * math.sqrt(1.0 - ((fy - (a["joint"] - ry)) / ry) ** 2) - 0.01
    tx, ty = 0.9 * a["plat_hw"], a["joint"] + gap + 0.02
    sdf = None
    for k, (bx, by, angle) in enumerate(
        (
            (-fx, fy, math.radians(160)),  # medial femoral, pointing out and down
            (fx, fy, math.radians(20)),  # lateral femoral
            (-tx, ty, math.radians(-155)),  # medial tibial, pointing out and up
            (tx, ty, math.radians(-25)),  # lateral tibial
        )
    ):
        ln = length * scale[k]
        s = _sdf_spike(x, y, bx, by, angle, ln, 0.5 * ln + 0.012)
        sdf = s if sdf is None else np.minimum(sdf, s)
    return sdf


# ------------------------------------------------------------------------ rendering


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return c[None, :], c[:, None]


def _patient_anatomy(seed: int, patient: int, weights: np.ndarray) -> dict:
    """Anatomy shared by all images of one patient (and the patient's base grade)."""
    rng = np.random.default_rng([seed, 1, patient])
    u = rng.random(16)
    return {
        "grade": _pick_grade(u[0], weights),
        "femur_hw": 0.30 + 0.06 * u[1],
        "cond_hw": 0.68 + 0.08 * u[2],
        "cond_off": 0.34 + 0.04 * u[3],
        "cond_ry": 0.15 + 0.04 * u[4],
        "medial_ry": 0.95 + 0.1 * u[5],
        "flare_len": 0.50 + 0.15 * u[6],
        "plat_hw": 0.70 + 0.08 * u[7],
        "tibia_hw": 0.36 + 0.06 * u[8],
        "tibia_len": 0.6 + 0.2 * u[9],
        "spine_h": 0.08 + 0.04 * u[10],
        "fib_dx": 0.05 * u[11],
        "fib_dy": 0.22 + 0.06 * u[12],
        "fib_hw": 0.04 + 0.012 * u[13],
        "leg_hw": 0.95 + 0.25 * u[14],
        "density": 0.85 + 0.3 * u[15],
    }


def _pick_grade(u: float, weights: np.ndarray) -> int:
    return int(min(np.searchsorted(np.cumsum(weights), u * weights.sum(), side="right"), 4))


def _render(rng: np.random.Generator, size: int, a: dict, grade: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a canonical left knee as float image in [0, 1] (bone bright) and its uint8 label map."""
    px = size / _REFERENCE_SIZE  # pixels per reference pixel
    pix = 2.0 / size  # one pixel in normalised units
    u = rng.random(12)

    # Per-image pose: rotation of a few degrees, shift, zoom.
    angle = math.radians(-4.0 + 8.0 * u[0])
    zoom = 0.93 + 0.14 * u[1]
    ox, oy = -0.05 + 0.1 * u[2], -0.06 + 0.12 * u[3]
    gx, gy = _grid(size)
    ca, sa = math.cos(angle) / zoom, math.sin(angle) / zoom
    x = ca * (gx - ox) + sa * (gy - oy)
    y = -sa * (gx - ox) + ca * (gy - oy)

    a = dict(a)
    a["joint"] = 0.0
    a["fib_x"] = a["plat_hw"] - 0.1 + a["fib_dx"]
    jitter = 0.9 + 0.2 * u[4]
    gap_med = _GAP_MEDIAL[grade] * jitter
    gap_lat = _GAP_LATERAL[grade] * jitter

    femur = _femur(x, y, a)
    tibia = _tibia(x, y, a, gap_med, gap_lat)
    spikes = _osteophytes(x, y, a, grade, gap_med, 0.75 + 0.5 * rng.random(4))
    if spikes is not None:
        femur = np.minimum(femur, np.where(y < 0.0, spikes, np.inf))
        tibia = np.minimum(tibia, np.where(y >= 0.0, spikes, np.inf))
    fibula = _fibula(x, y, a)

    soft_edge = pix / zoom  # one output pixel in anatomy units, for anti-aliasing

    def bone(sdf, level, cortex):
        # Cortex is crossed tangentially at the outline, so the rim attenuates most.
        depth = np.clip(-sdf, 0.0, None)
        mask = np.clip(0.5 - sdf / soft_edge, 0.0, 1.0)
        rim = np.exp(-depth / (0.02 + 0.01 * u[5]))
        return mask * (level + cortex * rim + 1.5 * np.minimum(depth, 0.1))

    # Attenuation (line integral) map; overlapping structures simply add up.
    d = a["density"]
    att = bone(femur, 0.45 * d, 1.0) + bone(tibia, 0.45 * d, 1.0) + bone(fibula, 0.3 * d, 0.6)
    patella = _sdf_ellipse(x, y, 0.04, -0.2 - 0.05 * u[6], 0.19, 0.22)
    att += 0.15 * np.clip(0.5 - patella / (6 * soft_edge), 0.0, 1.0)
    inside = (femur < 0) | (tibia < 0)

    # Subchondral sclerosis: denser bone right above and below the joint line.
    if _SCLEROSIS[grade] > 0:
        att += (3.0 * _SCLEROSIS[grade] * (0.8 + 0.4 * u[7])) * np.exp(-np.abs(y) / 0.08) * inside

    # Trabecular texture, only inside bone; streaky along the load (vertical) axis.
    noise = rng.standard_normal((size, size)).astype(np.float32)
    texture = ndimage.gaussian_filter(noise, (2.5 * px, 0.9 * px))
    att += (0.12 / (texture.std() + 1e-6)) * texture * (inside | (fibula < 0))

    # Soft tissue: path length through a cylinder, thinner towards the skin edge.
    leg = np.clip(1.0 - (x / (a["leg_hw"] * (1.0 + 0.15 * np.abs(y)))) ** 2, 0.0, 1.0)
    att += (0.35 + 0.1 * u[8]) * np.sqrt(leg) + 0.05

    # Film response (compressive), then exposure, contrast and gamma per image.
    img = 1.0 - np.exp(-att)
    img = np.clip(img, 0.0, 1.0) ** (0.85 + 0.35 * u[9])
    img = 0.02 + 0.04 * u[10] + (0.85 + 0.12 * u[11]) * img
    labels = np.zeros((size, size), np.uint8)
    for value, sdf in ((1, femur), (2, tibia), (3, fibula)):  # later wins: the fibula over the tibia
        labels[sdf < 0] = value
    return img.astype(np.float32), labels


def _degrade(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """Detector blur, quantum (Poisson) noise and film grain."""
    px = size / _REFERENCE_SIZE
    u = rng.random(3)
    img = ndimage.gaussian_filter(img, (0.5 + 0.4 * u[0]) * px)
    photons = (600.0 + 900.0 * u[1]) / px  # larger pixels collect more photons
    img = rng.poisson(np.clip(img, 0.0, None) * photons).astype(np.float32) / photons
    grain = ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 0.7 * px)
    return img + (0.012 + 0.01 * u[2]) * grain / (grain.std() + 1e-6)


def make_phantom_image(index: int, spec: PhantomSpec = PhantomSpec(), masks: bool = False) -> PhantomImage:
    """Render image ``index`` of the phantom described by ``spec`` (with its label map if ``masks``).

    Depends only on ``(spec, index)``, never on other images, so batches and single
    calls agree byte for byte.
    """
    _check_int("index", index, minimum=0)
    index = int(index)
    weights = np.asarray(spec.grade_weights, dtype=np.float64)
    patient = index // spec.images_per_patient
    anatomy = _patient_anatomy(spec.seed, patient, weights)

    rng = np.random.default_rng([spec.seed, 0, index])
    # Fixed number of draws before anything else, so changing one fraction
    # flips only that flag and leaves anatomy and noise untouched.
    u_same, u_grade, u_mirror, u_invert, u_blur, u_sigma = rng.random(6)
    grade = anatomy["grade"] if u_same < _SAME_GRADE_AS_PATIENT else _pick_grade(u_grade, weights)
    mirrored = bool(u_mirror < spec.mirrored_fraction)
    inverted = bool(u_invert < spec.inverted_fraction)
    blurred = bool(u_blur < spec.blurred_fraction)

    img, labels = _render(rng, spec.size, anatomy, grade)
    img = _degrade(rng, img, spec.size)
    if blurred:  # applied after noise, so the loss of detail is measurable
        sigma = max((1.6 + 1.2 * u_sigma) * spec.size / _REFERENCE_SIZE, 1.0)
        img = ndimage.gaussian_filter(img, sigma)
    pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if mirrored:
        pixels = pixels[:, ::-1]
        labels = labels[:, ::-1]
    if inverted:
        pixels = 255 - pixels
    pixels = np.ascontiguousarray(pixels)
    return PhantomImage(
        index=index,
        pixels=pixels,
        grade=grade,
        patient_id=f"{PHANTOM_PATIENT_PREFIX}p{patient:05d}",
        side="R" if mirrored else "L",
        mirrored=mirrored,
        inverted=inverted,
        blurred=blurred,
        mask=np.ascontiguousarray(labels) if masks else None,
    )


def make_phantom(n: int, spec: PhantomSpec = PhantomSpec(), masks: bool = False) -> list[PhantomImage]:
    """Render images ``0 .. n-1`` (with label maps if ``masks``)."""
    _check_int("n", n, minimum=0)
    return [make_phantom_image(i, spec, masks) for i in range(n)]


def write_phantom(images: Iterable[PhantomImage], root: Path) -> Path:
    """Write PNGs in the Chen-2019-like layout root/{grade}/{patient_id}_{side}_{index:05d}.png
    (8-bit grayscale, via PIL) and a ground-truth CSV root/phantom.csv with columns
    path,grade,patient_id,side,mirrored,inverted,blurred (path relative to root,
    POSIX separators; flags as 0/1). Images with a mask also get root/masks/{same path}
    (uint8 label map) and root/masks/classes.txt (``MASK_CLASSES``, one per line). Returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for im in images:
        rel = Path(str(im.grade)) / f"{im.patient_id}_{im.side}_{im.index:05d}.png"
        (root / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(np.asarray(im.pixels, dtype=np.uint8)).save(root / rel)
        if im.mask is not None:
            (root / "masks" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(im.mask, dtype=np.uint8)).save(root / "masks" / rel)
            (root / "masks" / "classes.txt").write_text("\n".join(MASK_CLASSES) + "\n")
        flags = (int(im.mirrored), int(im.inverted), int(im.blurred))
        rows.append((rel.as_posix(), im.grade, im.patient_id, im.side, *flags))
    with open(root / "phantom.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_CSV_COLUMNS)
        writer.writerows(rows)
    return root
