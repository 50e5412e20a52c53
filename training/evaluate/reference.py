"""Real-side Inception statistics of a catalog selection, cached in the object store.

Training computes an FID every few epochs against the same real images, and the registry gate
and the HTTP endpoint do it again later; the real side (thousands of images through
Inception) should be paid for once. :func:`reference_statistics` computes it on a miss and
publishes it; every later call, in any process, downloads it.

The cache key is content, never a name
--------------------------------------
``fid/reference/<sha256>.npz`` where the sha256 is over the canonical JSON of
:func:`reference_spec`: the manifest hash (a dataset version *is* the hash of its manifest,
so a bare ``name`` is first resolved to it), the selection (split, subset, sorted labels),
``n``, the Inception weights' sha256, the resize rule, the extraction rule (the layout Inception
ran in: :data:`training.evaluate.fid.EXTRACTION_RULE`; statistics of an older rule sit under
another key and are never read) and the feature dims. Anything that
changes the numbers changes the key; a renamed or re-pointed dataset cannot serve stale
statistics. The npz repeats the spec and the ordered image hashes, and the object carries
the npz's sha256: a read checks all three and recomputes (and overwrites) on any mismatch.

Publishing is one PUT of the finished npz to its content-addressed key (S3 PUTs are
atomic), so a reader sees the whole object or none, and two ranks racing write equivalent
bytes. Nothing is written outside the object store (never into site-packages).

The cached features are the network's float32 outputs (lossless: pytorch-fid casts them to
float64 afterwards), kept so KID, precision/recall and the memorization audit reuse them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from training.catalog.store import Catalog, ImageRecord, Manifest
from infra.object_store import ObjectNotFoundError, ObjectStore
from infra.settings import Settings, get_settings
from training.evaluate.fid import (
    EXTRACTION_RULE,
    FID_DIMS,
    RESIZE_RULE,
    FidResult,
    _check_images,
    _counter,
    _extract,
    _torch_threads,
    bootstrap_fid,
    features,
    fid_weights,
    frechet_distance,
    inception,
    sqrt_psd,
    statistics,
)
from infra.errors import BadInput
from infra.progress import CountProgress

__all__ = [
    "REFERENCE_PREFIX",
    "ReferenceStats",
    "fake_features",
    "fid_from_reference_features",
    "fid_to_reference",
    "reference_images",
    "reference_key",
    "reference_spec",
    "reference_statistics",
    "selected_records",
]

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "fid/reference/"
# /2: records in image-hash order (was manifest order); /3: the extraction rule is in the spec
SPEC_FORMAT = "synthray-fid-reference/3"
_CHUNK = 512  # records read and pushed through Inception at a time (bounded memory)


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Inception statistics of the real side of an FID, and what they were computed from."""

    mu: np.ndarray  # (dims,) float64
    sigma: np.ndarray  # (dims, dims) float64
    n: int
    key: str  # object-store key of the cached npz
    weights_sha256: str
    resize_rule: str
    image_size: tuple[int, int]  # (H, W) of the real images
    cached: bool  # True when loaded from the store, False when computed by this call
    dims: int = 2048
    dataset: str = ""  # name@version it was selected from (informational; not in the key)
    spec: dict = field(default_factory=dict)  # the key's content, see reference_spec()
    features: np.ndarray | None = None  # (n, dims) float32, row i = image_sha256[i]
    image_sha256: tuple[str, ...] = ()
    labels: np.ndarray | None = None  # (n,) int class index per row
    extraction_rule: str = EXTRACTION_RULE  # how Inception ran (part of the key)

    @cached_property
    def sqrt_sigma(self) -> np.ndarray:
        """√Σ, computed once per process so each FID against this reference needs one ``eigh``."""
        return sqrt_psd(self.sigma)


def selected_records(
    manifest: Manifest,
    split: str | None = "train",
    subset: str | None = None,
    labels: Sequence[int] | None = None,
    n: int | None = None,
) -> list[ImageRecord]:
    """The first ``n`` records of a selection in image-hash order (deterministic), or all.

    The same selection training uses (:func:`training.catalog.selection.select_records`), plus the
    checks a covariance over exactly ``n`` images needs. The records are ordered by their
    image sha256, not by manifest position: manifests list images grouped by class, so the
    first n in manifest order of a 5-class selection were all of one class (a reference that
    an all-class generator cannot match, and "halves" of it that are not samples of one
    distribution). Hash order is a content-determined shuffle: any prefix is a class-mixed
    sample of the selection, the same on every machine.
    """
    from training.catalog.selection import select_records

    records = sorted(select_records(manifest, split=split, labels=labels, subset=subset), key=lambda r: r.sha256)
    if n is not None:
        if n < 2:
            raise BadInput(f"n must be >= 2 for a covariance, got {n}")
        if n > len(records):
            raise BadInput(
                f"n={n} but dataset {manifest.ref} has only {len(records)} images with "
                f"split={split!r} subset={subset!r} labels={labels!r}"
            )
        records = records[:n]
    return records


def reference_spec(
    version: str,
    split: str | None,
    subset: str | None,
    labels: Sequence[int] | None,
    n: int,
    weights_sha256: str,
    dims: int = 2048,
    resize_rule: str = RESIZE_RULE,
    extraction_rule: str = EXTRACTION_RULE,
) -> dict:
    """Everything the cached numbers depend on, and nothing else (no dataset name)."""
    return {
        "format": SPEC_FORMAT,
        "manifest_sha": version,
        "split": split,
        "subset": subset,
        "labels": sorted(int(x) for x in labels) if labels is not None else None,
        "n": int(n),
        "weights_sha256": weights_sha256,
        "resize_rule": resize_rule,
        "extraction_rule": extraction_rule,
        "dims": int(dims),
    }


def reference_key(spec: dict) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return f"{REFERENCE_PREFIX}{hashlib.sha256(canonical.encode()).hexdigest()}.npz"


def _images_digest(shas: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


def _catalog(settings: Settings) -> Catalog:
    return Catalog(ObjectStore(settings))


# -- cache I/O ----------------------------------------------------------------------------------


def _encode(feats: np.ndarray, mu: np.ndarray, sigma: np.ndarray, records: Sequence[ImageRecord],
            spec: dict, image_size: tuple[int, int], dataset: str) -> bytes:
    meta = {"spec": spec, "image_size": list(image_size), "dataset": dataset,
            "images_sha256": _images_digest([r.sha256 for r in records])}
    buf = io.BytesIO()
    np.savez(
        buf, features=feats.astype(np.float32), mu=mu, sigma=sigma,
        labels=np.array([r.label for r in records], dtype=np.int64),
        image_sha256=np.array([r.sha256 for r in records]),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    return buf.getvalue()


def _check_cached(data: bytes, published_sha: str | None, spec: dict, shas: Sequence[str]) -> tuple[dict, dict]:
    """(arrays, meta) of a cached npz; ValueError saying what is wrong with it otherwise."""
    if hashlib.sha256(data).hexdigest() != published_sha:
        raise BadInput("its bytes do not match the sha256 it was published with")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise BadInput(f"it does not parse ({exc!r})") from None
    if meta.get("spec") != spec:
        raise BadInput("its stored spec differs from the key's")
    if meta.get("images_sha256") != _images_digest(shas) or list(arrays["image_sha256"]) != list(shas):
        raise BadInput("its image list differs from the selection")
    return arrays, meta


def _load(store: ObjectStore, key: str, spec: dict, shas: Sequence[str]) -> ReferenceStats | None:
    """The cached statistics, or None when absent or failing any check (logged)."""
    try:
        published_sha = store.head(key).get("Metadata", {}).get("sha256")
    except ObjectNotFoundError:
        return None
    try:
        arrays, meta = _check_cached(store.get_bytes(key), published_sha, spec, shas)
    except ValueError as exc:
        log.warning("reference cache %s ignored: %s; recomputing", store.uri(key), exc)
        return None
    return ReferenceStats(
        mu=arrays["mu"], sigma=arrays["sigma"], n=len(shas), key=key,
        weights_sha256=spec["weights_sha256"], resize_rule=spec["resize_rule"],
        image_size=tuple(meta["image_size"]), cached=True, dims=spec["dims"],
        dataset=meta["dataset"], spec=spec, features=arrays["features"],
        image_sha256=tuple(str(s) for s in arrays["image_sha256"]), labels=arrays["labels"],
        extraction_rule=spec["extraction_rule"],
    )


# -- public API ---------------------------------------------------------------------------------


def reference_statistics(
    dataset: str,
    split: str | None = "train",
    subset: str | None = None,
    labels: Sequence[int] | None = None,
    n: int | None = None,
    settings: Settings | None = None,
    progress: CountProgress | None = None,
    *,
    dims: int = 2048,
    batch_size: int = 50,
    device: str = "cpu",
) -> ReferenceStats:
    """Inception μ, Σ (and features) of a catalog selection: from the cache, else computed once.

    Args:
        dataset: ``name@version`` or ``name`` (resolved to the latest version first).
        split, subset, labels: the selection (None = no filter), as ``Manifest.select``.
        n: the first ``n`` selected records in image-hash order (see :func:`selected_records`); None = all.
        settings: object store and weights location.
        progress: ``progress(done, total, img/s)`` while computing (not called on a hit).
        dims: pytorch-fid feature dims (2048 for FID; 64 is cheap for tests and smoke runs).
        batch_size: Inception batch size (does not change the numbers).
        device: torch device for Inception.
    """
    if dims not in FID_DIMS:
        raise BadInput(f"dims must be one of {FID_DIMS}, got {dims}")
    settings = settings or get_settings()
    cat = _catalog(settings)
    manifest = cat.manifest(dataset)
    records = selected_records(manifest, split, subset, labels, n)
    weights = fid_weights(settings)
    spec = reference_spec(manifest.version, split, subset, labels, len(records), weights.sha256, dims)
    key = reference_key(spec)
    shas = [r.sha256 for r in records]
    if (hit := _load(cat.store, key, spec, shas)) is not None:
        log.info("reference statistics %s: cache hit (%d images)", cat.store.uri(key), hit.n)
        return hit

    model = inception(settings, dims=dims, device=device)
    on_batch = _counter(len(records), progress)
    chunks: list[np.ndarray] = []
    image_size: tuple[int, int] | None = None
    with _torch_threads(None):
        for start in range(0, len(records), _CHUNK):
            pixels = _reference_pixels(cat, manifest, records[start : start + _CHUNK])
            image_size = image_size or tuple(pixels.shape[1:3])
            if tuple(pixels.shape[1:3]) != image_size:
                raise BadInput(f"dataset {manifest.ref} mixes image sizes {image_size} and {pixels.shape[1:3]}")
            chunks.append(_extract(pixels, model, batch_size, on_batch))
    feats = np.concatenate(chunks)
    mu, sigma = statistics(feats)
    data = _encode(feats, mu, sigma, records, spec, image_size, str(manifest.ref))
    cat.store.put_bytes(key, data, metadata={"sha256": hashlib.sha256(data).hexdigest(),
                                             "dataset": str(manifest.ref)})
    log.info("reference statistics %s: computed from %d images and published", cat.store.uri(key), len(records))
    return ReferenceStats(
        mu=mu, sigma=sigma, n=len(records), key=key, weights_sha256=weights.sha256,
        resize_rule=RESIZE_RULE, image_size=image_size, cached=False, dims=dims,
        dataset=str(manifest.ref), spec=spec, features=feats.astype(np.float32),
        image_sha256=tuple(shas), labels=np.array([r.label for r in records], dtype=np.int64),
    )


def _reference_pixels(cat: Catalog, manifest: Manifest, records: Sequence[ImageRecord]) -> np.ndarray:
    try:
        pixels = cat.read_pixels(records)
    except ValueError as exc:  # np.stack of different shapes
        raise BadInput(f"dataset {manifest.ref}: images of one reference must share one size ({exc})") from None
    if pixels.dtype != np.uint8:
        raise BadInput(
            f"dataset {manifest.ref} has {pixels.dtype} pixels; FID's rule is defined on 8-bit images "
            "(ingest with 8-bit output, e.g. --preprocess knee)"
        )
    return _check_images(pixels)


def reference_images(
    ref: ReferenceStats, indices: Sequence[int] | None = None, settings: Settings | None = None
) -> np.ndarray:
    """uint8 pixels of (some rows of) a reference, re-selected from its manifest and checked
    against the hashes it was computed from (for contact sheets and pixel-space checks)."""
    cat = _catalog(settings or get_settings())
    spec = ref.spec
    manifest = cat.manifest(ref.dataset)
    if manifest.version != spec["manifest_sha"]:
        raise BadInput(f"reference {ref.key} was computed on version {spec['manifest_sha']}, not {manifest.version}")
    records = selected_records(manifest, spec["split"], spec["subset"], spec["labels"], spec["n"])
    if tuple(r.sha256 for r in records) != ref.image_sha256:
        raise BadInput(f"the selection of {ref.dataset} no longer matches reference {ref.key}")
    chosen = records if indices is None else [records[int(i)] for i in indices]
    return _reference_pixels(cat, manifest, chosen)


def fake_features(
    fake: np.ndarray,
    ref: ReferenceStats,
    settings: Settings | None = None,
    batch_size: int = 50,
    progress: CountProgress | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Inception features of synthetic uint8 images, comparable with ``ref`` (same weights, dims)."""
    settings = settings or get_settings()
    weights = fid_weights(settings)
    if weights.sha256 != ref.weights_sha256:
        raise BadInput(
            f"reference {ref.key} was computed with weights {ref.weights_sha256[:12]}…, "
            f"but the provisioned weights are {weights.sha256[:12]}…"
        )
    fake = _check_images(fake)
    if fake.shape[0] < 2:
        raise BadInput(f"need >= 2 synthetic images, got {fake.shape[0]}")
    if fake.shape[0] != ref.n:
        log.info("n_fake=%d != n_real=%d (FID is biased in n)", fake.shape[0], ref.n)
    if tuple(fake.shape[1:3]) != tuple(ref.image_size):
        log.warning("synthetic images are %s, the reference's %s: Inception resizes both to 299, but "
                    "the resampling difference itself shows up in the FID", fake.shape[1:3], ref.image_size)
    return features(fake, inception(settings, dims=ref.dims, device=device), batch_size, progress=progress)


def fid_from_reference_features(
    feats: np.ndarray, ref: ReferenceStats, *, bootstrap: int = 0, confidence: float = 0.95, seed: int = 0
) -> FidResult:
    """FID of already-extracted synthetic features against ``ref`` (see :func:`fid_to_reference`)."""
    mu, sigma = statistics(feats)
    fid = frechet_distance(ref.mu, ref.sigma, mu, sigma, sqrt_s1=ref.sqrt_sigma)
    ci = None
    if bootstrap:
        if ref.features is None:
            raise BadInput(f"reference {ref.key} carries no features to bootstrap")
        ci = bootstrap_fid(ref.features.astype(np.float64), feats, bootstrap, confidence, seed)
    return FidResult(
        fid=fid, n_real=ref.n, n_fake=len(feats), dims=ref.dims, weights_sha256=ref.weights_sha256,
        weights_uri=None, resize_rule=ref.resize_rule, reference_key=ref.key, method="eigh",
        extraction_rule=ref.extraction_rule,
        ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None,
        confidence=confidence if ci else None, bootstrap=bootstrap,
    )


def fid_to_reference(
    fake: np.ndarray,
    ref: ReferenceStats,
    settings: Settings | None = None,
    batch_size: int = 50,
    progress: CountProgress | None = None,
    *,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    device: str = "cpu",
) -> FidResult:
    """FID of uint8 images against cached reference statistics (the real side is not recomputed).

    The weights in use must be the ones the reference was computed with. The knee paper's rule
    is ``len(fake) == ref.n``; other counts are allowed and reported (FID is biased in n).
    ``bootstrap`` draws resample the reference's stored features and the fake features.
    """
    feats = fake_features(fake, ref, settings, batch_size, progress, device)
    return fid_from_reference_features(feats, ref, bootstrap=bootstrap, confidence=confidence, seed=seed)
