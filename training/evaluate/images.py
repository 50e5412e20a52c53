"""Image folders as uint8 arrays, read the way ``python -m pytorch_fid DIR`` reads them.

pytorch-fid takes the files directly in DIR with its extensions (bmp jpg jpeg pgm png ppm tif
tiff webp; not recursive) in sorted order and opens each with ``convert("RGB")``. Here 8-bit
gray files stay (H, W) and everything else 8-bit becomes RGB (H, W, 3): the same features
(tested in test_fid.py). Two refusals where pytorch-fid would silently do something odd:
16-bit or float files (``convert("RGB")`` clips them to 255) and mixed image sizes.

A folder with no images of its own but class subfolders (``DIR/<class>/*.png``, as
``synthray catalog export`` writes per split) is read class by class, subfolders sorted, and
the subfolder names come back as labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from infra.errors import BadInput

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "load_image_folder"]

IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")  # pytorch-fid's list


@dataclass(frozen=True)
class ImageFolder:
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, 3)
    paths: list[Path]
    class_names: list[str] | None  # subfolder names, when read by class
    labels: np.ndarray | None  # index into class_names per image


def _files(folder: Path) -> list[Path]:
    return sorted(p for ext in IMAGE_EXTENSIONS for p in folder.glob(f"*.{ext}") if p.is_file())


def _read(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise BadInput(f"{path}: {img.mode} image; FID's rule is defined on 8-bit files")
            return np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    except OSError as exc:
        raise BadInput(f"{path}: cannot read image ({exc})") from None


def load_image_folder(folder: Path, n: int | None = None) -> ImageFolder:
    """The first ``n`` images (all if None) of ``folder``; see the module docstring for the rule."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder}: not a directory")
    paths, labels, names = _files(folder), None, None
    if not paths:
        names = sorted(d.name for d in folder.iterdir() if d.is_dir() and _files(d))
        per_class = [_files(folder / name) for name in names]
        paths = [p for group in per_class for p in group]
        labels = np.concatenate([np.full(len(g), i) for i, g in enumerate(per_class)]) if names else None
    if not paths:
        raise BadInput(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or in class subfolders")
    if n is not None:
        if n > len(paths):
            raise BadInput(f"{folder}: asked for {n} images, found {len(paths)}")
        paths, labels = paths[:n], None if labels is None else labels[:n]
    arrays = [_read(p) for p in paths]
    first = arrays[0].shape
    for path, arr in zip(paths, arrays):
        if arr.shape[:2] != first[:2]:
            raise BadInput(f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from {first[1]}x{first[0]}")
    if any(a.ndim != arrays[0].ndim for a in arrays):  # mixed gray and colour: pytorch-fid sees RGB
        arrays = [np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in arrays]
    return ImageFolder(np.stack(arrays), paths, names, labels)
