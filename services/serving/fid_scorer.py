"""The ``FidScorer`` deployment of the Serve app: FID against catalog references.

It follows :class:`services.serving.synthesizer.Synthesizer`: torch is imported inside methods,
blocking work runs in ``asyncio.to_thread``, and ordinary client errors come back as an
:mod:`infra.errors` value (:class:`~infra.errors.BadInput` naming the request field,
:class:`~infra.errors.NotFound` …) instead of being raised, so the replica does not log
tracebacks for them.

It holds pytorch-fid's Inception (loaded once per replica) and scores uint8 images, given
directly or as a finished batch job, against a catalog reference ``NAME[@VER][:SUBSET][:CLASS]``,
parsed by the same rule as ``synthray eval fid --reference``
(:mod:`training.evaluate.reference_spec`). The real side is what the CLI uses by default:
**every** image of the selection in split ``train`` (no ``--n``), so a served FID equals
``synthray eval fid --reference R --images DIR`` on the same images, and it shares the CLI's
statistics cached in the object store (keyed by content hash,
:func:`training.evaluate.reference.reference_statistics`). On top of that cache each replica
keeps the last few references in memory (LRU), keyed by the *resolved* ``name@version``, so a
bare ``name`` still follows a newly published version. ``n_fake`` is however many images came;
FID is biased in n, so both counts are returned. A reference that is in neither cache is
computed inside the first request that needs it (the whole selection through Inception,
~10-30 img/s on 2 CPUs); ``synthray eval fid`` with the same reference and no ``--n``
pre-computes exactly that cache entry.

Uploaded images are scored in memory only and never persisted (see :mod:`services.serving.uploads`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from infra.errors import BadInput, NotFound, SynthrayError, Unavailable
from infra.settings import Settings, get_settings

if TYPE_CHECKING:
    from training.evaluate.reference import ReferenceStats
    from training.evaluate.reference_spec import ReferenceSpec

__all__ = ["CorruptContent", "FidScorer"]

log = logging.getLogger(__name__)

REFERENCES_PER_REPLICA = 4  # reference statistics memoized per FidScorer replica (~40-80 MB each at 2048-d)
FID_DIMS = 2048  # pool3 features: FID proper
SPLIT_ALL = "all"  # as ``synthray eval --split``: no split filter


class CorruptContent(SynthrayError):
    """Catalog content behind a reference failed its checks (tampered, half-written): the server's
    problem, not the client's, so a 500 that still says what failed."""

    http_status = 500


def _bad(field: str, message: str) -> BadInput:
    """A 422 naming the request field at fault (``reference``, ``images``, ``batch_id``, ``limit``)."""
    return BadInput(f"{field}: {message}", field=field)


def _spec(reference: str) -> ReferenceSpec | BadInput:
    """The ``reference`` field parsed by the eval CLI's own rule, or a 422 naming it."""
    from training.evaluate.reference_spec import REFERENCE_SYNTAX, ReferenceSpec

    if not isinstance(reference, str) or not reference.strip():  # JSON may send "" or "  "
        return _bad("reference", f"is empty; use {REFERENCE_SYNTAX}, e.g. phantom-knee@1a2b:gan-train:KL0")
    try:
        return ReferenceSpec.parse(reference)
    except BadInput as exc:
        return _bad("reference", exc.message)


def _batch_error(batch_id: str, exc: SynthrayError) -> SynthrayError:
    """A batch error as the scorer reports it: the same class, so the same status (404 unknown,
    409 not succeeded, 500 a shard failing its sha256 …), worded and fielded as ``batch_id``."""
    error = copy.copy(exc)  # a SynthrayError copies (as it pickles) with its class and state
    error.args = (f"batch_id: batch {batch_id!r}: {exc.message}",)
    error.field = "batch_id"
    return error


@serve.deployment
class FidScorer:
    """FID of synthetic images against cached catalog references; see the module docstring.

    Args:
        settings: object store, weights location (default: the SYNTHRAY_* environment).
        max_references: reference statistics memoized in this replica (LRU).
        dims: Inception features; 2048 is FID. Smaller blocks (64, 192, 768) are only for quick
            checks, as ``eval fid --dims`` (tests use 64: same code, no 2048-d eigendecompositions).
        torch_threads: intra-op threads (0 = every usable CPU; Ray would leave one).
    """

    def __init__(self, settings: Settings | None = None, max_references: int = REFERENCES_PER_REPLICA,
                 dims: int = FID_DIMS, torch_threads: int = 0) -> None:
        from infra.cpus import set_torch_threads
        from training.evaluate.fid import FID_DIMS as BLOCKS

        set_torch_threads(torch_threads)

        if dims not in BLOCKS:
            raise BadInput(f"dims must be one of {BLOCKS}, got {dims}")
        self._settings = settings or get_settings()
        self._dims = dims
        self._lru_size = max(1, max_references)
        self._lru: OrderedDict[tuple, ReferenceStats] = OrderedDict()
        # Inception runs one request at a time: torch's thread count is process-wide and the
        # extraction already uses every core of the replica.
        self._work = threading.Lock()
        self._memo_lock = threading.Lock()  # the LRU is touched from to_thread workers
        self._model = None
        self._catalog = None
        try:  # warm up now so the first request is fast; a failure is reported per request instead
            self._inception()
        except Exception as exc:  # noqa: BLE001 - a replica that cannot load weights still answers 503
            log.warning("FID weights not loaded at start (%s); requests will report it", exc)

    def _inception(self):
        """The replica's one Inception network (pytorch-fid, provisioned weights), loaded once.

        :func:`training.evaluate.fid.inception` keeps one instance per process and weights, and
        :func:`~training.evaluate.reference.fid_to_reference` / ``reference_statistics`` use
        that same instance, so holding it here pins it for the replica's lifetime.
        """
        if self._model is None:
            from training.evaluate.fid import inception

            self._model = inception(self._settings, dims=self._dims)
        return self._model

    async def score(
        self,
        reference: str,
        images: np.ndarray | Sequence[np.ndarray] | None = None,
        batch_id: str | None = None,
        limit: int | None = None,
        *,
        split: str = "train",
    ) -> dict[str, Any] | SynthrayError:
        """FID of ``images`` (uint8 ``(N,H,W)`` / ``(N,H,W,3)``) or of batch ``batch_id`` vs ``reference``.

        Args:
            reference: ``NAME[@VER][:SUBSET][:CLASS]`` (see ``synthray eval fid``).
            images: the synthetic images; exactly one of ``images`` / ``batch_id``.
            batch_id: a succeeded batch job whose images are scored.
            limit: score only the first ``limit`` images (>= 2).
            split: the reference's split, ``all`` for every split (eval_cli ``--split``).

        Returns:
            ``{"fid", "n_real", "n_fake", "weights_sha256", "reference_key", "dataset", "dims", "floor",
            "floor_n", "floor_method", "summary"}`` (``dataset`` is the resolved ``name@version``;
            ``floor`` is the real-vs-real FID at n = n_real, :mod:`training.evaluate.floor`, the number
            to read ``fid`` against when n_fake = n_real), or the :class:`~infra.errors.SynthrayError`
            that says why not (422 naming the field, 404, 409, 503, 500 for corrupt content).
        """
        spec = _spec(reference)
        if isinstance(spec, SynthrayError):
            return spec
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
            return _bad("limit", f"must be an integer >= 2 (FID needs a covariance), got {limit!r}")
        if (images is None) == (batch_id is None):
            return _bad("images", "give exactly one of images or batch_id")
        if images is not None:
            fake = await asyncio.to_thread(_candidate, images, limit, "images")
        else:
            fake = await asyncio.to_thread(self._batch_images, batch_id, limit)
        if isinstance(fake, SynthrayError):
            return fake
        ref = await asyncio.to_thread(self._real_stats, spec, split)
        if isinstance(ref, SynthrayError):
            return ref
        return await asyncio.to_thread(self._fid, fake, ref)

    def _batch_images(self, batch_id: str, limit: int | None) -> np.ndarray | SynthrayError:
        if not isinstance(batch_id, str) or not batch_id:
            return _bad("batch_id", "must be a non-empty string")
        from infra.object_store import ObjectStoreError
        from services.batches.api import load_images

        try:
            images = load_images(batch_id, self._settings, limit)
        except ObjectStoreError as exc:  # down, or refusing: either way nothing the client can fix
            return Unavailable(f"object store unavailable: {exc}")
        except SynthrayError as exc:  # unknown (404), not succeeded (409), corrupt shard (500)
            return _batch_error(batch_id, exc)
        return _candidate(images, limit, "batch_id")

    def _real_stats(self, spec: ReferenceSpec, split: str) -> ReferenceStats | SynthrayError:
        """Memoized reference statistics of a parsed reference (S3 cache underneath)."""
        from training.catalog.store import Catalog, CatalogError, DatasetNotFound, DatasetRef
        from training.evaluate.inception_weights import FidWeightsError
        from infra.object_store import ObjectStore, ObjectStoreError
        from training.evaluate.reference import reference_statistics
        from training.evaluate.reference_spec import resolve_labels

        try:
            wanted = DatasetRef.parse(spec.dataset)
        except CatalogError as exc:
            return _bad("reference", str(exc))
        try:
            if self._catalog is None:
                self._catalog = Catalog(ObjectStore(self._settings))
            resolved = self._catalog.resolve(wanted)  # a bare name follows the latest version
            key = (str(resolved), split, spec.subset, spec.label)
            if (hit := self._memo(key)) is not None:
                return hit
            manifest = self._catalog.manifest(resolved)
            if spec.subset is not None and spec.subset not in manifest.subsets:
                known = ", ".join(sorted(manifest.subsets)) or "none"
                return _bad("reference", f"dataset {resolved} has no subset {spec.subset!r} (subsets: {known})")
            labels = resolve_labels(manifest.classes, spec.label, str(resolved))  # BadInput: below
            with self._work:
                if (hit := self._memo(key)) is not None:  # computed by a concurrent request meanwhile
                    return hit
                self._inception()
                stats = reference_statistics(
                    str(resolved), split=None if split == SPLIT_ALL else split, subset=spec.subset, labels=labels,
                    n=None, settings=self._settings, dims=self._dims,
                )
        except DatasetNotFound as exc:  # a missing name or version
            return NotFound(f"reference: {exc}", field="reference")
        except CatalogError as exc:  # any other catalog error here is stored content failing its checks
            return CorruptContent(f"reference: catalog content failed its checks: {exc}", field="reference")
        except FidWeightsError as exc:
            return Unavailable(f"FID weights unavailable: {exc}")
        except ObjectStoreError as exc:
            return Unavailable(f"object store unavailable: {exc}")
        except ValueError as exc:  # unknown class, empty selection, non-8-bit or mixed-size dataset
            return _bad("reference", str(exc))
        self._remember(key, stats)
        return stats

    def _memo(self, key: tuple) -> ReferenceStats | None:
        with self._memo_lock:
            stats = self._lru.get(key)
            if stats is not None:
                self._lru.move_to_end(key)
            return stats

    def _remember(self, key: tuple, stats: ReferenceStats) -> None:
        with self._memo_lock:
            self._lru[key] = stats
            self._lru.move_to_end(key)
            while len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)

    def _fid(self, fake: np.ndarray, ref: ReferenceStats) -> dict[str, Any] | Unavailable:
        from training.evaluate.floor import real_floor, with_floor
        from training.evaluate.inception_weights import FidWeightsError
        from training.evaluate.reference import fid_to_reference

        try:
            with self._work:
                self._inception()
                result = fid_to_reference(fake, ref, self._settings)
                # The real-vs-real floor at the reference's n, cached beside its statistics.
                floor = real_floor(ref, self._settings, superset=ref)
        except FidWeightsError as exc:
            return Unavailable(f"FID weights unavailable: {exc}")
        return {
            "fid": result.fid, "n_real": result.n_real, "n_fake": result.n_fake,
            "weights_sha256": result.weights_sha256, "reference_key": result.reference_key,
            "dataset": ref.dataset, "dims": result.dims,
            "floor": floor.fid, "floor_n": floor.n, "floor_method": floor.method,
            "summary": with_floor(result.fid, floor),
        }


def _candidate(images: np.ndarray | Sequence[np.ndarray], limit: int | None, field: str) -> np.ndarray | BadInput:
    """The synthetic side as one uint8 ``(N,H,W)`` / ``(N,H,W,3)`` array of >= 2 images, or a 422."""
    from training.evaluate.fid import _check_images  # the exact rule features() applies

    if not isinstance(images, np.ndarray):
        shapes = {np.shape(img) for img in images}
        if len(shapes) > 1:
            return _bad(field, f"FID needs images of one size, got sizes {sorted(shapes)[:4]}")
        images = np.stack(list(images)) if shapes else np.zeros((0, 1, 1), np.uint8)
    if limit is not None:
        images = images[:limit]
    try:
        arr = _check_images(images)
    except (TypeError, ValueError) as exc:
        return _bad(field, str(exc))
    if arr.shape[0] < 2:
        return _bad(field, f"FID needs at least 2 images, got {arr.shape[0]}")
    return arr
