"""The real-vs-real FID floor: what FID a perfect generator would get at the same n.

FID is biased upwards at small n (Chong & Forsyth 2020, "Effectively Unbiased FID and
Inception Score and where to find them", CVPR): two disjoint samples of the *same* real
distribution already score well above 0, and by how much depends on n and on the data. So
an FID is read against its floor: "FID 41.2, real-vs-real floor 6.3 at n = 300".

Definition, for a reference selection (dataset version, split, subset, labels) and n:

- **halves** — when the selection holds at least 2n images: FID between its first n images
  (exactly the reference's rows) and the next n, disjoint from them;
- **bootstrap** — when it holds m < 2n: the first m images are cut into two disjoint halves of
  ⌊m/2⌋, each half is resampled with replacement to n images, and the floor is the mean FID of
  ``draws`` such pairs (seeded). Repeated images shrink the covariance, so this floor reads a
  little *low*; it says so in its ``method``.

Cache: the floor is a tiny JSON next to the reference statistics, under the same content key
(``fid/reference/<sha256>.floor.json`` beside ``<sha256>.npz``), with the spec it was computed
for; a read checks the spec, so a floor is never served for other content.
"""

from __future__ import annotations

from infra.errors import BadInput

import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

from infra.object_store import ObjectNotFoundError, ObjectStore
from infra.settings import Settings, get_settings
from training.evaluate.fid import frechet_distance, statistics

__all__ = ["FLOOR_DRAWS", "RealFloor", "derive_reference", "floor_from_features", "floor_key", "real_floor",
           "with_floor"]

log = logging.getLogger(__name__)
FLOOR_FORMAT = "synthray-fid-floor/1"
FLOOR_DRAWS = 10  # bootstrap pairs behind a "bootstrap" floor


@dataclass(frozen=True)
class RealFloor:
    """A real-vs-real FID floor (see the module docstring).

    Attributes:
        fid: the floor (FID units).
        n: images per side.
        method: ``halves`` (disjoint real halves of size n) or ``bootstrap`` (fewer than 2n images).
        n_available: images of the selection the floor was computed from.
        key: object-store key of the cached JSON.
        reference_key: key of the reference statistics it belongs to.
        cached: loaded from the store rather than computed by this call.
    """

    fid: float
    n: int
    method: str
    n_available: int
    key: str
    reference_key: str
    cached: bool = False

    def describe(self) -> str:
        extra = "" if self.method == "halves" else f", bootstrap of {self.n_available} images"
        return f"real-vs-real floor {self.fid:.1f} at n = {self.n}{extra}"


def floor_key(reference_key: str) -> str:
    """``fid/reference/<sha>.floor.json`` for ``fid/reference/<sha>.npz``."""
    if not reference_key.endswith(".npz"):
        raise BadInput(f"reference key must end in .npz, got {reference_key!r}")
    return reference_key.removesuffix(".npz") + ".floor.json"


def floor_from_features(feats: np.ndarray, n: int, draws: int = FLOOR_DRAWS, seed: int = 0) -> tuple[float, str]:
    """(floor, method) from the Inception features of the first m images of a selection.

    Args:
        feats: (m, d) features, rows in selection order.
        n: images per side; needs m >= 4 and n >= 2.
        draws: bootstrap pairs when m < 2n.
        seed: bootstrap seed.

    Raises:
        ValueError: too few rows or a bad n.
    """
    feats = np.asarray(feats, np.float64)
    m = len(feats)
    if n < 2 or m < 4:
        raise BadInput(f"a real-vs-real floor needs n >= 2 and >= 4 real images, got n={n}, {m} images")
    if m >= 2 * n:
        return frechet_distance(*statistics(feats[:n]), *statistics(feats[n : 2 * n])), "halves"
    half = m // 2
    a, b = feats[:half], feats[half : 2 * half]
    rng = np.random.default_rng(seed)
    values = [frechet_distance(*statistics(a[rng.integers(0, half, n)]), *statistics(b[rng.integers(0, half, n)]))
              for _ in range(draws)]
    return float(np.mean(values)), "bootstrap"


def _load(store: ObjectStore, key: str, spec: dict) -> RealFloor | None:
    try:
        data = json.loads(store.get_bytes(key))
    except ObjectNotFoundError:
        return None
    except ValueError as exc:
        log.warning("floor cache %s ignored: %s", key, exc)
        return None
    if data.get("format") != FLOOR_FORMAT or data.get("spec") != spec:
        log.warning("floor cache %s ignored: its spec differs from the reference's", key)
        return None
    return RealFloor(**data["floor"], cached=True)


def real_floor(ref, settings: Settings | None = None, *, superset=None, draws: int = FLOOR_DRAWS,
               seed: int = 0) -> RealFloor:
    """The floor of reference ``ref`` (a :class:`~training.evaluate.reference.ReferenceStats`), cached.

    Args:
        ref: the reference an FID is measured against; its n is the floor's n.
        settings: object store.
        superset: reference statistics of the first min(2n, m) images of the same selection
            (``reference_statistics(..., n=2n)``), whose features give the second half; when
            None and the selection has >= 2n images, it is computed (and cached) here.
        draws, seed: bootstrap pairs and seed when the selection has fewer than 2n images.

    Raises:
        ValueError: ``superset`` is not of the same selection, or the reference carries no features.
    """
    from training.evaluate.reference import reference_statistics, selected_records, _catalog

    settings = settings or get_settings()
    store = ObjectStore(settings)
    key = floor_key(ref.key)
    if (hit := _load(store, key, ref.spec)) is not None:
        return hit
    spec = ref.spec
    if superset is None:
        manifest = _catalog(settings).manifest(ref.dataset)
        m = len(selected_records(manifest, spec["split"], spec["subset"], spec["labels"]))
        want = min(2 * ref.n, m)
        superset = ref if want == ref.n else reference_statistics(
            ref.dataset, split=spec["split"], subset=spec["subset"], labels=spec["labels"], n=want,
            settings=settings, dims=spec["dims"])
    same = {k: v for k, v in superset.spec.items() if k != "n"} == {k: v for k, v in spec.items() if k != "n"}
    if not same or superset.n < ref.n or superset.image_sha256[: ref.n] != ref.image_sha256:
        raise BadInput(f"reference {superset.key} is not a superset of {ref.key} (same selection, first rows)")
    if superset.features is None:
        raise BadInput(f"reference {superset.key} carries no features")
    value, method = floor_from_features(superset.features, ref.n, draws, seed)
    floor = RealFloor(fid=value, n=ref.n, method=method, n_available=superset.n, key=key, reference_key=ref.key)
    body = {"format": FLOOR_FORMAT, "spec": spec, "floor": {k: v for k, v in asdict(floor).items() if k != "cached"}}
    store.put_bytes(key, json.dumps(body, sort_keys=True).encode())
    log.info("real-vs-real floor %s: %.3f (%s, n=%d) published", key, value, method, ref.n)
    return floor


def derive_reference(superset, n: int, settings: Settings | None = None):
    """Reference statistics of the first ``n`` rows of ``superset``, published under their own key.

    The first n images of a selection are a prefix of its first 2n, so the statistics of the
    n-reference follow from the 2n-reference's features without another Inception pass. Reads
    the cache first; what it publishes is byte-compatible with ``reference_statistics``.

    Args:
        superset: reference statistics with features (``reference_statistics`` of the same
            selection at a larger n).
        n: rows to keep, 2 <= n <= superset.n.
        settings: object store.

    Returns:
        The n-reference (``superset`` itself when n == superset.n).

    Raises:
        ValueError: n out of range, or ``superset`` has no features.
    """
    import hashlib
    from types import SimpleNamespace

    from training.evaluate.reference import ReferenceStats, _encode, _load, reference_key

    if not 2 <= n <= superset.n:
        raise BadInput(f"n must be in [2, {superset.n}], got {n}")
    if superset.features is None:
        raise BadInput(f"reference {superset.key} carries no features")
    if n == superset.n:
        return superset
    spec = {**superset.spec, "n": int(n)}
    key = reference_key(spec)
    store = ObjectStore(settings or get_settings())
    shas = list(superset.image_sha256[:n])
    if (hit := _load(store, key, spec, shas)) is not None:
        return hit
    feats = superset.features[:n]
    mu, sigma = statistics(feats)
    rows = [SimpleNamespace(sha256=s, label=int(lab)) for s, lab in zip(shas, superset.labels[:n])]  # what _encode reads
    data = _encode(feats, mu, sigma, rows, spec, superset.image_size, superset.dataset)
    store.put_bytes(key, data, metadata={"sha256": hashlib.sha256(data).hexdigest(), "dataset": superset.dataset})
    return ReferenceStats(
        mu=mu, sigma=sigma, n=n, key=key, weights_sha256=superset.weights_sha256,
        resize_rule=superset.resize_rule, image_size=superset.image_size, cached=False, dims=superset.dims,
        dataset=superset.dataset, spec=spec, features=feats, image_sha256=tuple(shas),
        labels=superset.labels[:n], extraction_rule=superset.extraction_rule,
    )


def with_floor(fid: float, floor: RealFloor | None) -> str:
    """``"FID 41.20, real-vs-real floor 6.3 at n = 300 (6.5× floor)"`` (or just the FID)."""
    if floor is None:
        return f"FID {fid:.2f}"
    ratio = f" ({fid / floor.fid:.1f}× floor)" if floor.fid > 0 else ""
    return f"FID {fid:.2f}, {floor.describe()}{ratio}"
