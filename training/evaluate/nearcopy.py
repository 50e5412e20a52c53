"""Near-copy filter at synthesis time: drop a generated image that lies too close to a training image.

The registration audit (:mod:`training.evaluate.memorization`) measures how often a generator
copies; this module acts on it per image. It uses the audit's own feature space and threshold:

* **Index.** The training selection's Inception features (the registration reference, pytorch-fid
  ``InceptionV3`` at ``ref.dims``) in a scikit-learn ``NearestNeighbors`` index (exact Euclidean,
  brute force). Chosen over faiss because it is already a dependency (faiss-cpu is not installed
  here) and the index is small: registration references are at most a few thousand images, a
  query of 64 images against 10⁴ × 2048 features is one matrix product (~10 ms). Above ~10⁵
  training images an approximate index (faiss ``IndexHNSWFlat``) would pay; not implemented.
* **Threshold.** The real→real baseline: each training image's distance to its nearest *other*
  training image, at the ``percentile`` (default 1, the audit's ``real_nn_p1``). A generated
  image strictly closer than that to some training image is a near copy: it is closer to the
  training set than 99 % of training images are to each other (Dar et al. 2023 and Akbar et al.
  2023 use the same nearest-neighbour-vs-real-spacing rule to count copies; the knee paper's
  nearest-pair check in Inception space is the offline form).
* **Determinism.** ``generate(n, seed)`` first; each rejected row is refilled, in row order, from a
  replacement stream of latents drawn from ``replacement_seed(seed)`` (``SeedSequence([seed,
  0x6E63])``): candidate j is row j of ``latents(·, replacement_seed)``. The same request therefore
  gives the same images, and the report lists the rejected rows and the rejected stream
  positions, so any image can be re-derived. A row keeps its label (conditional generators).

The index is stored with the registered model (``extra_files/near_copy_index.npz``), built at
registration from the reference the audit used (:mod:`training.registry.privacy`). A request gives
up with :class:`~infra.errors.Conflict` (409) after ``4n + 8`` replacement candidates: a generator
that needs more mostly reproduces its training set (at a 50 % copy rate, 2n are expected).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from infra.errors import BadInput, Conflict
from infra.seeds import torch_seed

if TYPE_CHECKING:
    from infra.settings import Settings
    from training.evaluate.reference import ReferenceStats
    from training.nets.sampler import GeneratorSampler

__all__ = ["FILTERS", "INDEX_FILE", "FilterReport", "NearCopyIndex", "embedder", "filtered_generate",
           "replacement_seed"]

FILTERS = ("none", "near-copy")
INDEX_FILE = "near_copy_index.npz"
DEFAULT_PERCENTILE = 1.0  # the memorization audit's real→real 1st percentile
REPLACEMENT_STREAM = 0x6E63  # "nc": the SeedSequence key word of the replacement stream
MAX_EXTRA_FACTOR = 4  # at most 4n + 8 replacement candidates before giving up (Conflict)


def replacement_seed(seed: int) -> int:
    """The seed of a request's replacement stream (all bits of ``seed``, key ``REPLACEMENT_STREAM``)."""
    return torch_seed(seed, REPLACEMENT_STREAM)


@dataclass(frozen=True)
class NearCopyIndex:
    """Nearest-neighbour index of a generator's training images in Inception feature space.

    Attributes:
        features: float32 (n_train, dims) Inception features of the training selection.
        real_nn: float64 (n_train,) each training image's distance to its nearest other one.
        dims: pytorch-fid feature dims.
        weights_sha256: Inception weights the features came from (queries must match).
        reference_key: the registration reference the features are cached under.
    """

    features: np.ndarray
    real_nn: np.ndarray
    dims: int
    weights_sha256: str
    reference_key: str
    _nn: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_features(cls, feats: np.ndarray, dims: int, weights_sha256: str, reference_key: str) -> NearCopyIndex:
        """Build from training features (n >= 2); the real→real spacing is computed here."""
        from training.evaluate.memorization import nearest_neighbours

        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 2 or len(feats) < 2 or feats.shape[1] != dims:
            raise BadInput(f"near-copy index needs (n >= 2, {dims}) features, got {feats.shape}")
        # the audit's own computation (float64 as there), so index and audit agree on the threshold
        _, _, real_nn = nearest_neighbours(feats.astype(np.float64), feats[:1].astype(np.float64))
        return cls(feats, real_nn, int(dims), weights_sha256, reference_key)

    @classmethod
    def from_reference(cls, ref: ReferenceStats) -> NearCopyIndex:
        """The index of a registration reference (its cached features)."""
        if ref.features is None:
            raise BadInput(f"reference {ref.key} carries no features; load it with reference_statistics()")
        return cls.from_features(ref.features, ref.dims, ref.weights_sha256, ref.key)

    @property
    def n(self) -> int:
        return len(self.features)

    def threshold(self, percentile: float = DEFAULT_PERCENTILE) -> float:
        """The real→real nearest-neighbour distance at ``percentile`` (0 < p <= 50)."""
        if not 0 < percentile <= 50:
            raise BadInput(f"filter_percentile must be in (0, 50], got {percentile}", field="filter_percentile")
        return float(np.percentile(self.real_nn, percentile))

    @cached_property
    def _index(self):
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=1, algorithm="brute").fit(self.features.astype(np.float64))

    def distances(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, index) of each query's nearest training image; ``feats`` (m, dims)."""
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.dims:
            raise BadInput(f"queries must be (m, {self.dims}) features, got {feats.shape}")
        dist, idx = self._index.kneighbors(feats)
        return dist[:, 0], idx[:, 0]

    def near_copies(self, feats: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
        """bool (m,): strictly closer to a training image than the threshold (the audit's ``<``)."""
        return self.distances(feats)[0] < self.threshold(percentile)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, features=self.features, real_nn=self.real_nn, dims=self.dims,
                            weights_sha256=self.weights_sha256, reference_key=self.reference_key)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NearCopyIndex:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["features"], z["real_nn"], int(z["dims"]), str(z["weights_sha256"]), str(z["reference_key"]))


def embedder(index: NearCopyIndex, settings: Settings | None = None, batch_size: int = 50) -> Callable:
    """uint8 images → Inception features comparable with ``index`` (same weights and dims)."""
    from training.evaluate.fid import features, fid_weights, inception

    if fid_weights(settings).sha256 != index.weights_sha256:
        raise BadInput(f"the near-copy index was built with Inception weights {index.weights_sha256[:12]}…, "
                       "not the provisioned ones")
    model = inception(settings, dims=index.dims)
    return lambda images: features(images, model, batch_size)


@dataclass
class FilterReport:
    """What the filter did to one request (JSON-serialisable via :meth:`as_dict`)."""

    filter: str = "none"
    percentile: float | None = None
    threshold: float | None = None
    rejected: int = 0  # rejected candidates in all (first draw + replacements)
    rejected_rows: list[int] = field(default_factory=list)  # rows of generate(n, seed) that were near copies
    replacement_seed: int | None = None
    replacement_draws: int = 0  # candidates drawn from the replacement stream
    rejected_draws: list[int] = field(default_factory=list)  # their stream positions that were near copies too

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def filtered_generate(
    sampler: GeneratorSampler,
    n: int,
    seed: int,
    index: NearCopyIndex,
    embed: Callable[[np.ndarray], np.ndarray],
    label: int | None = None,
    percentile: float = DEFAULT_PERCENTILE,
) -> tuple[np.ndarray, FilterReport]:
    """``sampler.generate(n, seed, label)`` with near copies replaced deterministically (module docstring).

    Args:
        sampler: the generator.
        n, seed, label: as ``GeneratorSampler.generate``.
        index: the generator's training index.
        embed: uint8 (m, H, W) → (m, index.dims) features (:func:`embedder`).
        percentile: real→real percentile used as the threshold.
    Returns:
        (uint8 images (n, H, W), report).
    Raises:
        BadInput: bad percentile (field ``filter_percentile``).
        Conflict: more than ``4n + 8`` replacement candidates were near copies too: the generator
            mostly reproduces its training set and should not be served.
    """
    threshold = index.threshold(percentile)
    images = sampler.generate(n, seed, label=label)
    report = FilterReport("near-copy", percentile, threshold, replacement_seed=replacement_seed(seed))
    if n == 0:
        return images, report
    near = index.distances(embed(images))[0] < threshold
    todo = [int(i) for i in np.flatnonzero(near)]
    report.rejected_rows = list(todo)
    report.rejected = len(todo)
    slot_labels = sampler.labels(n, label) if sampler.conditional else None
    limit = MAX_EXTRA_FACTOR * n + 8
    drawn = 0
    while todo:
        if drawn + len(todo) > limit:
            raise Conflict(f"near-copy filter: {report.rejected} of {n + drawn} candidates were near copies of "
                           f"training images (threshold {threshold:.3f}); this generator memorises its training "
                           "set and cannot fill the request")
        z = sampler.latents(drawn + len(todo), report.replacement_seed)[drawn:]
        candidates = sampler.render(z, None if slot_labels is None else slot_labels[todo])
        bad = index.distances(embed(candidates))[0] < threshold
        still = []
        for k, slot in enumerate(todo):
            if bad[k]:
                report.rejected_draws.append(drawn + k)
                still.append(slot)
            else:
                images[slot] = candidates[k]
        report.rejected += int(bad.sum())
        drawn += len(todo)
        todo = still
    report.replacement_draws = drawn
    return images, report
