"""Blinding at the byte level: a real and a synthetic image differ only in pixels once re-encoded."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image

from training.catalog.store import encode_png
from training.studies import images as enc
from training.studies.reading import reader_order


def _synthetic_png(pixels: np.ndarray) -> bytes:
    """A PNG exactly as /v1/synthesize ships it (with Synthetic=true tEXt)."""
    from services.serving.packaging import to_png_zip

    data = to_png_zip(pixels[None], {"model": "gan-x", "version": "1", "seed": 3})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".png"))
        return zf.read(name)


def test_real_and_fake_differ_only_in_pixels() -> None:
    rng = np.random.default_rng(0)
    real_png = encode_png((rng.random((80, 96)) * 65535).astype(np.uint16), text={"Source": "catalog", "Patient": "p1"})
    fake_png = _synthetic_png((rng.random((64, 64)) * 255).astype(np.uint8))
    assert b"Synthetic" in fake_png  # what the study must strip
    with Image.open(io.BytesIO(real_png)) as r, Image.open(io.BytesIO(fake_png)) as f:
        real, fake = enc.study_png(np.asarray(r), 128), enc.study_png(np.asarray(f), 128)
    chunks_r, chunks_f = enc.png_chunks(real), enc.png_chunks(fake)
    assert [c for c, _ in chunks_r] == [c for c, _ in chunks_f]
    assert {c for c, _ in chunks_r} == {"IHDR", "IDAT", "IEND"}  # no tEXt, gAMA, pHYs, tIME…
    assert chunks_r[0] == chunks_f[0]  # IHDR: same size, bit depth, colour type, compression, filter, interlace
    for data in (real, fake):
        assert b"Synthetic" not in data and b"synthray" not in data and b"Patient" not in data
        with Image.open(io.BytesIO(data)) as im:
            assert (im.size, im.mode, im.info) == ((128, 128), "L", {})
    assert real != fake


def test_encoding_is_deterministic_and_square() -> None:
    pixels = (np.arange(50 * 70) % 251).astype(np.uint8).reshape(50, 70)
    assert enc.study_png(pixels, 64) == enc.study_png(pixels.copy(), 64)
    assert enc.normalize(pixels, 64).shape == (64, 64)
    rgb = np.stack([pixels] * 3, axis=-1)
    assert enc.normalize(rgb, 32).shape == (32, 32)


def test_reader_order_is_private_and_stable() -> None:
    ids = [f"{i:016x}" for i in range(20)]
    a1 = reader_order("s-0000000000000001", "r01", ids)
    assert a1 == reader_order("s-0000000000000001", "r01", list(reversed(ids)))
    assert sorted(a1) == sorted(ids)
    assert a1 != reader_order("s-0000000000000001", "r02", ids)
    assert a1 != reader_order("s-0000000000000002", "r01", ids)
