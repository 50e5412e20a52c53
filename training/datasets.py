"""Catalog-backed datasets: publishing the built-in phantom and loading tensors for training.

Splits are assigned per *patient* (a hash of the patient id), never per image, so the two
knees of one phantom patient never straddle train and test — the leakage rule radiology
papers insist on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from infra.catalog import Catalog, DatasetRef, ImageRecord, Manifest, encode_png
from infra.object_store import ObjectStore
from infra.settings import Settings, get_settings
from training.phantom import KL_NAMES, PhantomSpec, make_phantom

PHANTOM_NAME = "phantom-knee"
DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


def catalog(settings: Settings | None = None) -> Catalog:
    return Catalog(ObjectStore(settings or get_settings()))


def patient_split(patient_id: str, fractions: dict[str, float] = DEFAULT_SPLITS) -> str:
    """Deterministic split of a patient: the first 8 bytes of sha256(id) as a uniform draw."""
    u = int.from_bytes(hashlib.sha256(patient_id.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for split, fraction in fractions.items():
        edge += fraction
        if u < edge:
            return split
    return next(reversed(fractions))


def publish_phantom(
    n: int,
    spec: PhantomSpec = PhantomSpec(),
    name: str = PHANTOM_NAME,
    settings: Settings | None = None,
    progress: Callable[[str], None] = print,
) -> Manifest:
    """Render ``n`` phantom radiographs and publish them as a catalog version.

    Args:
        n: number of images.
        spec: phantom parameters (size, seed, degradation fractions).
        name: dataset name.
        settings: where the object store is.
        progress: receives human-readable progress lines.
    """
    progress(f"phantom: rendering {n} images of {spec.size}x{spec.size} (seed {spec.seed})")
    images = make_phantom(n, spec)
    items = []
    for img in images:
        fields = {
            "label": img.grade,
            "label_name": img.grade_name,
            "split": patient_split(img.patient_id),
            "source_path": f"phantom/{img.grade_name}/{img.index:05d}.png",
            "bit_depth": 8,
            "width": spec.size,
            "height": spec.size,
            "patient_id": img.patient_id,
            "preprocessing": [],
        }
        items.append((encode_png(img.pixels), fields))
    manifest = catalog(settings).publish(
        name,
        items,
        classes=list(KL_NAMES),
        description=f"Procedural knee-radiograph PHANTOM (not medical data): n={n}, {spec}",
        progress=lambda done, total: progress(f"phantom: stored {done}/{total} images"),
    )
    progress(f"phantom: published {manifest.ref} ({len(manifest.records)} records)")
    return manifest


@dataclass(frozen=True)
class ImageTensors:
    """Images as float tensors in [-1, 1], (N, 1, H, W), with their integer labels."""

    images: torch.Tensor
    labels: torch.Tensor
    ref: DatasetRef


def select_records(
    manifest: Manifest, split: str | None = "train", labels: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[ImageRecord]:
    """Records of one split/class subset, in manifest order, optionally the first ``limit``."""
    records = manifest.select(split=split, labels=labels)
    if not records:
        raise ValueError(
            f"dataset {manifest.ref} has no images with split={split!r} labels={labels!r}"
        )
    return records[:limit] if limit else records


def load_tensors(
    ref: DatasetRef | str,
    split: str | None = "train",
    labels: Sequence[int] | None = None,
    image_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    settings: Settings | None = None,
) -> ImageTensors:
    """Load (a shard of) a dataset subset, hash-verified, scaled to [-1, 1].

    Args:
        ref: ``name@version`` or ``name`` (latest).
        split: split to read; None reads all.
        labels: class indices to keep; None keeps all.
        image_size: resize (area) to this side length if the images differ.
        shard: (index, count): this worker reads records[index::count].
        limit: cap on the number of records before sharding.
        settings: where the object store is.
    """
    cat = catalog(settings)
    manifest = cat.manifest(ref)
    records = select_records(manifest, split, labels, limit)[shard[0] :: shard[1]]
    pixels = cat.read_pixels(records)
    x = torch.from_numpy(pixels.astype(np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    else:  # (N, H, W, C) → grayscale
        x = x.permute(0, 3, 1, 2).mean(1, keepdim=True)
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    x = x / (scale / 2) - 1
    if image_size and x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="area")
    y = torch.tensor([r.label for r in records], dtype=torch.long)
    return ImageTensors(images=x, labels=y, ref=manifest.ref)


def load_uint8(
    ref: DatasetRef | str, split: str | None = "train", labels: Sequence[int] | None = None,
    limit: int | None = None, settings: Settings | None = None,
) -> np.ndarray:
    """uint8 pixels (N, H, W) of a subset, e.g. the real side of an FID."""
    cat = catalog(settings)
    return cat.read_pixels(select_records(cat.manifest(ref), split, labels, limit))
