"""One encoding for every image a reader sees, real or synthetic, so bytes reveal nothing but pixels.

Synthetic PNGs of the API carry ``Synthetic=true`` in tEXt, catalog PNGs may be 16-bit, RGB, or
of another size. A study re-encodes each image the same way:

1. to 8-bit grayscale (16-bit: ``round(v / 257)``; RGB: PIL's ``L`` conversion);
2. a centred square crop (the shorter side), so no image is stretched;
3. a resize to ``size × size`` with :data:`RESAMPLE` (Lanczos), applied to every image, even
   one that already has the size (PIL then copies it: the same operation for both classes);
4. PNG with :data:`PNG_LEVEL`, no ``optimize``, no ancillary chunks at all: the file is
   ``IHDR``, ``IDAT``…, ``IEND``. No text, no gamma, no physical size, no timestamps.

The same pixels always give the same bytes (PIL's zlib at a fixed level is deterministic).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from infra.errors import BadInput

RESAMPLE = Image.Resampling.LANCZOS
PNG_LEVEL = 9
ENCODING = {"format": "png", "mode": "L", "bit_depth": 8, "resample": "lanczos", "crop": "centre-square",
            "compress_level": PNG_LEVEL, "chunks": "IHDR,IDAT,IEND"}


def to_gray8(pixels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 of a uint8/uint16 grayscale or RGB(A) array."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise BadInput(f"study images must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = np.asarray(Image.fromarray(arr[..., :3], "RGB").convert("L"))
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise BadInput(f"study images must be (H, W) or (H, W, C), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def normalize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Gray, square, ``size × size`` uint8 pixels (steps 1–3 of the module docstring)."""
    gray = to_gray8(pixels)
    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(gray[top : top + side, left : left + side], "L")
    return np.asarray(square.resize((size, size), RESAMPLE))


def encode(pixels: np.ndarray) -> bytes:
    """PNG bytes of normalized (H, W) uint8 pixels: IHDR, IDAT, IEND only."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise BadInput(f"encode takes normalized (H, W) uint8 pixels, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG", optimize=False, compress_level=PNG_LEVEL)
    return buf.getvalue()


def study_png(pixels: np.ndarray, size: int) -> bytes:
    """The bytes a reader is served for ``pixels``."""
    return encode(normalize(pixels, size))


def png_chunks(data: bytes) -> list[tuple[str, bytes]]:
    """(type, payload) of every chunk of a PNG file, in order (for the blinding checks)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BadInput("not a PNG file")
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8].decode("latin-1")
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out
