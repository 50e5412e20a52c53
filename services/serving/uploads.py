"""Uploaded images → uint8 grayscale arrays, without torch (the API ingress imports this).

Accepted, recognised by their leading bytes (not by the name, which only labels errors):

* PNG and JPEG, via PIL: ``convert("L")`` (RGB, palette and alpha become grayscale); 16-bit
  grayscale PNGs are scaled to 8 bits (``round(v / 257)``) instead of being clipped.
* ``.npz`` holding an ``images`` array, or exactly one array of any name; and ``.npy``.
  uint8 only, ``(H, W)`` (one image), ``(N, H, W)``, ``(N, H, W, 1)`` or ``(N, H, W, 3)``;
  RGB goes through PIL's ``convert("L")`` like an RGB PNG. Never unpickled.

Every image comes back as a contiguous uint8 ``(H, W)`` array. Limits are checked before
pixels are decoded (PIL's header, the ``.npy`` header inside the zip), so a small file
declaring huge images is refused without allocating them. Errors are :class:`UploadError`
naming the file.

Uploaded images are never persisted: they are decoded in memory, scored, and dropped with the
request (no object store, no MLflow, no logs of pixels); only the numbers go back.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable

import numpy as np
from infra.errors import BadInput

__all__ = ["MAX_IMAGES", "MAX_PIXELS", "UploadError", "decode_upload", "decode_uploads"]

MAX_PIXELS = 4096 * 4096  # per image
MAX_IMAGES = 256  # per request, unless the caller passes another budget

_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
_ZIP, _NPY = (b"PK\x03\x04", b"PK\x05\x06"), b"\x93NUMPY"  # zip: a member first, or an empty archive


class UploadError(BadInput):
    """An upload that cannot be used; ``field`` is the file (or form field) it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)  # .message is the whole line, as str()


def decode_uploads(files: Iterable[tuple[str, bytes]], max_images: int = MAX_IMAGES,
                   max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """All images of several ``(filename, bytes)`` uploads, at most ``max_images`` in total."""
    images: list[np.ndarray] = []
    for filename, data in files:
        images += decode_upload(filename, data, max_images=max_images - len(images), max_pixels=max_pixels)
    return images


def decode_upload(filename: str, data: bytes, max_images: int = MAX_IMAGES,
                  max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """uint8 ``(H, W)`` images of one uploaded file (see the module docstring).

    Args:
        filename: the client's name for the file; used in error messages only.
        data: the file's bytes.
        max_images: images this file may add (the request's remaining budget).
        max_pixels: pixels allowed per image (H × W).

    Raises:
        UploadError: empty, unrecognised, undecodable, too many or too large images.
    """
    name = filename or "upload"
    if not data:
        raise UploadError(name, "the file is empty")
    if max_images < 1:
        raise UploadError(name, "too many images: the request's image limit is already reached")
    if data.startswith((_PNG, _JPEG)):
        return [_decode_picture(name, data, max_pixels)]
    if data.startswith(_ZIP):
        return _decode_npz(name, data, max_images, max_pixels)
    if data.startswith(_NPY):
        stream = io.BytesIO(data)
        return _array_images(name, _read_npy(name, "array", stream, max_images, max_pixels))
    raise UploadError(name, "not a PNG, JPEG, .npz or .npy file")


def _decode_picture(name: str, data: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # from the header; nothing decoded yet
            _check_size(name, "image", (height, width), max_pixels)
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                wide = np.asarray(img, dtype=np.int64)
                if wide.min() < 0 or wide.max() > 65535:
                    raise UploadError(name, f"{img.mode} pixel values outside 0..65535")
                pixels = np.rint(wide / 257.0).astype(np.uint8)
            else:
                pixels = np.asarray(img.convert("L"), dtype=np.uint8)
    except UploadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadError(name, f"cannot decode the image ({exc})") from None
    return np.ascontiguousarray(pixels)


def _decode_npz(name: str, data: bytes, max_images: int, max_pixels: int) -> list[np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.namelist() if m.endswith(".npy")]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(name, f"not a readable .npz archive ({exc})") from None
    if not members:
        raise UploadError(name, "the .npz holds no arrays; put the images in an array named 'images'")
    arrays = [m[: -len(".npy")] for m in members]
    if "images" in arrays:
        key = "images"
    elif len(arrays) == 1:
        key = arrays[0]
    else:
        raise UploadError(name, f"the .npz holds arrays {sorted(arrays)}; name the image array 'images'")
    try:
        with archive.open(f"{key}.npy") as stream:
            array = _read_npy(name, key, stream, max_images, max_pixels)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UploadError(name, f"array {key!r} cannot be read ({exc})") from None
    return _array_images(name, array)


def _read_npy(name: str, key: str, stream, max_images: int, max_pixels: int) -> np.ndarray:
    """The array of an ``.npy`` stream, refused from its header if the dtype, shape or size is wrong."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise BadInput(f".npy format version {version} is not supported (1.0 and 2.0 are)")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except (ValueError, OSError, EOFError) as exc:
        raise UploadError(name, f"array {key!r} has no valid .npy header ({exc})") from None
    if dtype != np.uint8:
        raise UploadError(name, f"array {key!r} must be uint8 (8-bit pixels), got {dtype}")
    images, size = _layout(name, key, shape)
    if images > max_images:
        raise UploadError(name, f"array {key!r} holds {images} images, more than the {max_images} allowed")
    _check_size(name, f"array {key!r}", size, max_pixels)
    count = int(np.prod(shape))
    raw = stream.read(count)
    if len(raw) != count:
        raise UploadError(name, f"array {key!r} is truncated ({len(raw)} of {count} bytes)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape, order="F" if fortran else "C")


def _layout(name: str, key: str, shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
    """(number of images, (H, W)) of an array shape, or UploadError."""
    if len(shape) == 2:
        return 1, (shape[0], shape[1])
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3)):
        if shape[0] == 0:
            raise UploadError(name, f"array {key!r} holds no images (shape {shape})")
        return shape[0], (shape[1], shape[2])
    raise UploadError(name, f"array {key!r} must be (H, W), (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {shape}")


def _check_size(name: str, what: str, size: tuple[int, int], max_pixels: int) -> None:
    height, width = size
    if height < 1 or width < 1:
        raise UploadError(name, f"{what} is empty ({height}x{width} pixels)")
    if height * width > max_pixels:
        raise UploadError(name, f"{what} is {height}x{width} pixels per image, more than the {max_pixels} allowed")


def _array_images(name: str, array: np.ndarray) -> list[np.ndarray]:
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        return [np.array(img, order="C") for img in array]  # copies: writable, independent of the upload buffer
    from PIL import Image  # RGB: the same conversion as an RGB PNG

    return [np.asarray(Image.fromarray(np.ascontiguousarray(img)).convert("L")) for img in array]
