"""Catalog-backed datasets: publishing the built-in phantom and loading tensors for training.

The phantom goes through the same ingest as real data (CSV layout, preprocessing preset,
patient-level splits), with its ground-truth flags as the truth file, so the ingest report
shows how well the preprocessing detectors do where the answer is known.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from training.catalog.store import Catalog, DatasetRef, ImageRecord, Manifest
from infra.object_store import ObjectStore
from infra.settings import Settings, get_settings
from training.catalog.ingest import IngestOptions, IngestResult, ingest
from training.catalog.phantom import KL_NAMES, MASK_CLASSES, PhantomSpec, make_phantom, write_phantom
from infra.errors import BadInput

PHANTOM_NAME = "phantom-knee"


def catalog(settings: Settings | None = None) -> Catalog:
    return Catalog(ObjectStore(settings or get_settings()))


def ingest_phantom(
    n: int,
    spec: PhantomSpec = PhantomSpec(),
    options: IngestOptions | None = None,
    cat: Catalog | None = None,
    progress: Callable[[str], None] = print,
    masks: bool = False,
) -> IngestResult:
    """Render ``n`` phantom radiographs and ingest them as a catalog version.

    Args:
        n: number of images.
        spec: phantom parameters (size, seed, degradation fractions).
        options: ingest options; name/layout/classes/truth are filled in. Defaults to no
            preprocessing, splits seeded with ``spec.seed``.
        cat: the catalog to publish to (default: the one the settings point at).
        progress: receives human-readable progress lines.
        masks: also ingest each image's exact label map (femur, tibia, fibula; see
            ``training.catalog.phantom.MASK_CLASSES``), every one required to be non-empty.
    """
    options = options or IngestOptions(name=PHANTOM_NAME, layout="csv", preset="none", seed=spec.seed)
    progress(f"phantom: rendering {n} images of {spec.size}x{spec.size} (seed {spec.seed})")
    with tempfile.TemporaryDirectory(prefix="synthray-phantom-") as tmp:
        images = make_phantom(n, spec, masks=masks)
        root = write_phantom(images, Path(tmp))
        with open(root / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("path", "label", "patient_id", *(("mask",) if masks else ())))
            for img in images:
                rel = f"{img.grade}/{img.patient_id}_{img.side}_{img.index:05d}.png"
                writer.writerow((rel, img.grade_name, img.patient_id, *((f"masks/{rel}",) if masks else ())))
        options = replace(options, layout="csv", classes=KL_NAMES, truth=root / "phantom.csv")
        if masks:
            options = replace(options, mask_classes=MASK_CLASSES, require_mask=True)
        return ingest(root / "labels.csv", options, cat or catalog(), progress)


def publish_phantom(
    n: int,
    spec: PhantomSpec = PhantomSpec(),
    name: str = PHANTOM_NAME,
    settings: Settings | None = None,
    progress: Callable[[str], None] = print,
) -> Manifest:
    """The phantom without preprocessing (the images are already 8-bit, upright and sized)."""
    options = IngestOptions(name=name, layout="csv", preset="none", seed=spec.seed)
    return ingest_phantom(n, spec, options, catalog(settings), progress).manifest


@dataclass(frozen=True)
class ImageTensors:
    """Images as float tensors in [-1, 1], (N, 1, H, W), with their labels.

    ``labels`` are integer class indices (N,) for a single-label version, and the multi-hot
    float32 targets (N, K) over ``Manifest.findings`` for a multi-label one; ``mask`` (N, K)
    then holds each target's loss weight (0 for an uncertain finding under ``--uncertain
    ignore``), else it is None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ref: DatasetRef
    mask: torch.Tensor | None = None
    label_maps: torch.Tensor | None = None  # (N, H, W) int64 segmentation masks, with masks=True

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2


Balance = Literal["none", "first", "random"]


def select_records(
    manifest: Manifest, split: str | None = "train", labels: Sequence[int] | None = None,
    limit: int | None = None, subset: str | None = None, balance: Balance = "none", seed: int = 0,
) -> list[ImageRecord]:
    """Records of one split/class/subset selection, in manifest order.

    Args:
        manifest: the dataset version.
        split, labels, subset: the selection (None = no filter).
        limit: keep the first ``limit`` records (after balancing).
        balance: undersample every class to the smallest one, keeping its first records
            (``first``, the spine paper's Method II) or a seeded random sample (``random``).
        seed: seed of the ``random`` balance.
    """
    records = manifest.select(split=split, labels=labels, subset=subset)
    if not records:
        if not labels:
            raise BadInput(f"dataset {manifest.ref} has no images with split={split!r} subset={subset!r}")
        wanted = ", ".join(f"{manifest.classes[c] if c < len(manifest.classes) else '?'} ({c})" for c in labels)
        raise BadInput(
            f"dataset {manifest.ref} has no images of class {wanted} (split={split!r}, subset={subset!r}); "
            f"its classes are {list(manifest.classes)}"
        )
    if balance != "none":
        records = undersample(records, first=balance == "first", seed=seed)
    return records[:limit] if limit else records


def undersample(records: Sequence[ImageRecord], first: bool = True, seed: int = 0) -> list[ImageRecord]:
    """Every class cut to the size of the smallest, keeping manifest order (first-N or seeded random)."""
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(r.label, []).append(i)
    smallest = min(len(idx) for idx in by_class.values())
    rng = np.random.default_rng(seed)
    keep = set()
    for idx in by_class.values():
        keep.update(idx[:smallest] if first else rng.choice(idx, smallest, replace=False).tolist())
    return [r for i, r in enumerate(records) if i in keep]


def load_tensors(
    ref: DatasetRef | str,
    split: str | None = "train",
    labels: Sequence[int] | None = None,
    image_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    settings: Settings | None = None,
    subset: str | None = None,
    balance: Balance = "none",
    seed: int = 0,
    masks: bool = False,
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
        subset, balance, seed: see :func:`select_records`.
        masks: also read each record's segmentation mask into ``label_maps`` (resized with
            nearest-neighbour sampling, so values stay among the declared classes).

    Raises:
        CatalogError: with ``masks``, a record without a mask.
    """
    cat = catalog(settings)
    manifest = cat.manifest(ref)
    records = select_records(manifest, split, labels, limit, subset, balance, seed)[shard[0] :: shard[1]]
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
    label_maps = None
    if masks:
        raw = torch.from_numpy(cat.read_masks(records).astype(np.int64)).reshape(len(records), *pixels.shape[1:3])
        if raw.shape[-2:] != x.shape[-2:]:  # nearest neighbour: no value between two classes appears
            raw = torch.nn.functional.interpolate(raw[:, None].float(), size=x.shape[-2:], mode="nearest-exact")
            raw = raw[:, 0].long()
        label_maps = raw
    if manifest.multilabel:
        targets, mask = manifest.multi_hot(records)
        return ImageTensors(images=x, labels=torch.from_numpy(targets), ref=manifest.ref,
                            mask=torch.from_numpy(mask), label_maps=label_maps)
    y = torch.tensor([r.label for r in records], dtype=torch.long)
    return ImageTensors(images=x, labels=y, ref=manifest.ref, label_maps=label_maps)


def load_uint8(
    ref: DatasetRef | str, split: str | None = "train", labels: Sequence[int] | None = None,
    limit: int | None = None, settings: Settings | None = None,
) -> np.ndarray:
    """uint8 pixels (N, H, W) of a subset, e.g. the real side of an FID."""
    cat = catalog(settings)
    return cat.read_pixels(select_records(cat.manifest(ref), split, labels, limit))
