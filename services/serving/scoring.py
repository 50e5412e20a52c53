"""Scoring deployments of the Serve app: FID against catalog references, and classifiers.

Both follow :class:`services.serving.app.Synthesizer`: torch and MLflow are imported inside methods
(the Api ingress imports this module for :class:`Failure` and :class:`ClassifierRef` and stays
small), blocking work runs in ``asyncio.to_thread``, and ordinary client errors come back as a
:class:`Failure` value instead of an exception, so replicas do not log tracebacks for them.

``FidScorer``
    Holds pytorch-fid's Inception (loaded once per replica) and scores uint8 images, given
    directly or as a finished batch job, against a catalog reference
    ``NAME[@VER][:SUBSET][:CLASS]`` — the syntax and rules of ``synthray eval fid
    --reference`` (:mod:`services.cli.eval`). The real side is what the CLI uses by default:
    **every** image of the selection in split ``train`` (no ``--n``), so a served FID equals
    ``synthray eval fid --reference R --images DIR`` on the same images, and it shares the
    CLI's statistics cached in the object store (keyed by content hash,
    :func:`training.evaluate.reference.reference_statistics`). On top of that cache each
    replica keeps the last few references in memory (LRU), keyed by the *resolved*
    ``name@version``, so a bare ``name`` still follows a newly published version.
    ``n_fake`` is however many images came; FID is biased in n, so both counts are returned.
    A reference that is in neither cache is computed inside the first request that needs it
    (the whole selection through Inception, ~10-30 img/s on 2 CPUs); ``synthray eval fid``
    with the same reference and no ``--n`` pre-computes exactly that cache entry.

``Classifier``
    Resolves ``NAME@alias`` / ``NAME/VERSION`` against the MLflow registry on every request
    (a moved alias takes effect at once), refuses versions not tagged
    ``synthray.kind=classifier`` (e.g. a generator), and keeps a few loaded classifiers per
    replica with ``@serve.multiplexed`` keyed by the concrete ``models:/NAME/V``.

Uploaded images are scored in memory only and never persisted (see :mod:`services.serving.uploads`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from infra.settings import Settings, get_settings
from training.registry.generators import KIND_TAG, parse_model

if TYPE_CHECKING:
    from services.cli.eval import ReferenceArg
    from training.evaluate.reference import ReferenceStats
    from training.nets.classifier import ImageClassifier

__all__ = ["ClassifierRef", "Classifier", "Failure", "FidScorer"]

log = logging.getLogger(__name__)

REFERENCES_PER_REPLICA = 4  # reference statistics memoized per FidScorer replica (~40-80 MB each at 2048-d)
CLASSIFIERS_PER_REPLICA = 3  # classifiers cached per Classifier replica (LRU, @serve.multiplexed)
MAX_CLASSIFY_IMAGES = 256  # images per classify call
MAX_PIXELS = 4096 * 4096  # per image, as services.serving.uploads
FID_DIMS = 2048  # pool3 features: FID proper
SPLIT_ALL = "all"  # as eval_cli --split: no split filter


@dataclass(frozen=True)
class Failure:
    """Why a scoring request cannot be served, as an HTTP status and a message naming the field.

    Returned rather than raised (see the module docstring). ``field`` is the request field at
    fault (``reference``, ``images``, ``batch_id``, ``limit``, ``model``) or None.
    """

    status: int  # 404 unknown dataset/model/batch, 409 batch not finished, 422 invalid input, 503 dependency down
    detail: str
    field: str | None = None


def _fail(status: int, field: str | None, message: str) -> Failure:
    return Failure(status, f"{field}: {message}" if field else message, field)


# -- FID -----------------------------------------------------------------------------------------


def parse_reference(reference: str) -> ReferenceArg | Failure:
    """``NAME[@VER][:SUBSET][:CLASS]`` parsed by the eval CLI's own rule, or a 422."""
    import click

    from services.cli.eval import _reference

    if not isinstance(reference, str) or not reference.strip():
        return _fail(422, "reference", "is empty; use NAME[@VER][:SUBSET][:CLASS], e.g. phantom-knee@1a2b:gan-train:KL0")
    try:
        return _reference(None, None, reference)
    except click.BadParameter as exc:
        return _fail(422, "reference", exc.message)


def _labels(classes: Sequence[str], label: str | None, dataset: str) -> list[int] | None | Failure:
    """A class name or index → label list, as ``eval_cli._resolve_labels`` (on a loaded manifest)."""
    if label is None:
        return None
    if label in classes:
        return [list(classes).index(label)]
    if label.isdigit() and int(label) < len(classes):
        return [int(label)]
    return _fail(422, "reference", f"class {label!r} is not in {dataset} (classes: {', '.join(classes)})")


def _batch_failure(batch_id: str, exc: Exception) -> Failure:
    """``services.batches.jobs.load_images`` errors → 404 unknown, 409 not (yet) succeeded, else 500.

    An exception carrying an int ``status`` decides; otherwise its message, which for
    ``load_images`` is ``unknown batch …`` or ``batch … is STATE, not succeeded …``; anything
    else (e.g. a shard failing its sha256) is the server's problem, not the client's.
    """
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        text = str(exc).lower()
        if isinstance(exc, LookupError) or any(w in text for w in ("unknown", "not found", "no such", "does not exist")):
            status = 404
        elif "not succeeded" in text:
            status = 409
        else:
            status = 500
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() quotes
    return _fail(status, "batch_id", f"batch {batch_id!r}: {message}")


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
            raise ValueError(f"dims must be one of {BLOCKS}, got {dims}")
        self._settings = settings or get_settings()
        self._dims = dims
        self._max_references = max(1, max_references)
        self._references: OrderedDict[tuple, ReferenceStats] = OrderedDict()
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
    ) -> dict[str, Any] | Failure:
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
            ``floor`` is the real-vs-real FID at n = n_real, :mod:`training.evaluate.floor`, the
            number to read ``fid`` against when n_fake = n_real), or a :class:`Failure`.
        """
        spec = parse_reference(reference)
        if isinstance(spec, Failure):
            return spec
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
            return _fail(422, "limit", f"must be an integer >= 2 (FID needs a covariance), got {limit!r}")
        if (images is None) == (batch_id is None):
            return _fail(422, "images", "give exactly one of images or batch_id")
        if images is not None:
            fake = await asyncio.to_thread(_candidate, images, limit, "images")
        else:
            fake = await asyncio.to_thread(self._batch_images, batch_id, limit)
        if isinstance(fake, Failure):
            return fake
        ref = await asyncio.to_thread(self._reference, spec, split)
        if isinstance(ref, Failure):
            return ref
        return await asyncio.to_thread(self._fid, fake, ref)

    def _batch_images(self, batch_id: str, limit: int | None) -> np.ndarray | Failure:
        if not isinstance(batch_id, str) or not batch_id:
            return _fail(422, "batch_id", "must be a non-empty string")
        from infra.object_store import ObjectStoreError
        from services.batches.jobs import load_images

        try:
            images = load_images(batch_id, self._settings, limit)
        except (ValueError, LookupError) as exc:
            return _batch_failure(batch_id, exc)
        except ObjectStoreError as exc:
            return _fail(503, None, f"object store unavailable: {exc}")
        return _candidate(images, limit, "batch_id")

    def _reference(self, spec: ReferenceArg, split: str) -> ReferenceStats | Failure:
        """Memoized reference statistics of a parsed reference (S3 cache underneath)."""
        from training.catalog.store import Catalog, CatalogError, DatasetRef
        from training.evaluate.inception_weights import FidWeightsError
        from infra.object_store import ObjectStore, ObjectStoreError
        from training.evaluate.reference import reference_statistics

        try:
            wanted = DatasetRef.parse(spec.dataset)
        except CatalogError as exc:
            return _fail(422, "reference", str(exc))
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
                return _fail(422, "reference", f"dataset {resolved} has no subset {spec.subset!r} (subsets: {known})")
            labels = _labels(manifest.classes, spec.label, str(resolved))
            if isinstance(labels, Failure):
                return labels
            with self._work:
                if (hit := self._memo(key)) is not None:  # computed by a concurrent request meanwhile
                    return hit
                self._inception()
                stats = reference_statistics(
                    str(resolved), split=None if split == SPLIT_ALL else split, subset=spec.subset, labels=labels,
                    n=None, settings=self._settings, dims=self._dims,
                )
        except CatalogError as exc:
            if "does not exist" in str(exc):  # the catalog's wording for a missing name or version
                return _fail(404, "reference", str(exc))
            return _fail(500, "reference", f"catalog content failed its checks: {exc}")
        except FidWeightsError as exc:
            return _fail(503, None, f"FID weights unavailable: {exc}")
        except ObjectStoreError as exc:
            return _fail(503, None, f"object store unavailable: {exc}")
        except ValueError as exc:  # empty selection, non-8-bit or mixed-size dataset
            return _fail(422, "reference", str(exc))
        self._remember(key, stats)
        return stats

    def _memo(self, key: tuple) -> ReferenceStats | None:
        with self._memo_lock:
            stats = self._references.get(key)
            if stats is not None:
                self._references.move_to_end(key)
            return stats

    def _remember(self, key: tuple, stats: ReferenceStats) -> None:
        with self._memo_lock:
            self._references[key] = stats
            self._references.move_to_end(key)
            while len(self._references) > self._max_references:
                self._references.popitem(last=False)

    def _fid(self, fake: np.ndarray, ref: ReferenceStats) -> dict[str, Any] | Failure:
        from training.evaluate.inception_weights import FidWeightsError
        from training.evaluate.floor import real_floor, with_floor
        from training.evaluate.reference import fid_to_reference

        try:
            with self._work:
                self._inception()
                result = fid_to_reference(fake, ref, self._settings)
                # The real-vs-real floor at the reference's n, cached beside its statistics.
                floor = real_floor(ref, self._settings, superset=ref)
        except FidWeightsError as exc:
            return _fail(503, None, f"FID weights unavailable: {exc}")
        return {
            "fid": result.fid, "n_real": result.n_real, "n_fake": result.n_fake,
            "weights_sha256": result.weights_sha256, "reference_key": result.reference_key,
            "dataset": ref.dataset, "dims": result.dims,
            "floor": floor.fid, "floor_n": floor.n, "floor_method": floor.method,
            "summary": with_floor(result.fid, floor),
        }


def _candidate(images: np.ndarray | Sequence[np.ndarray], limit: int | None, field: str) -> np.ndarray | Failure:
    """The synthetic side as one uint8 ``(N,H,W)`` / ``(N,H,W,3)`` array of >= 2 images, or a 422."""
    from training.evaluate.fid import _check_images  # the exact rule features() applies

    if not isinstance(images, np.ndarray):
        shapes = {np.shape(img) for img in images}
        if len(shapes) > 1:
            return _fail(422, field, f"FID needs images of one size, got sizes {sorted(shapes)[:4]}")
        images = np.stack(list(images)) if shapes else np.zeros((0, 1, 1), np.uint8)
    if limit is not None:
        images = images[:limit]
    try:
        arr = _check_images(images)
    except (TypeError, ValueError) as exc:
        return _fail(422, field, str(exc))
    if arr.shape[0] < 2:
        return _fail(422, field, f"FID needs at least 2 images, got {arr.shape[0]}")
    return arr


# -- classifiers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierRef:
    """A registry reference resolved to a concrete classifier version."""

    name: str
    version: str
    run_id: str | None
    classes: tuple[str, ...] = ()  # from the version's ``classes`` tag (informational)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _classify_images(images: Sequence[np.ndarray], max_images: int) -> list[np.ndarray] | Failure:
    """Checked uint8 ``(H,W)`` / ``(H,W,1)`` / ``(H,W,3)`` images, or a 422 naming ``images[i]``."""
    items = list(images) if images is not None else []
    if not items:
        return _fail(422, "images", "no images")
    if len(items) > max_images:
        return _fail(422, "images", f"{len(items)} images, more than the {max_images} allowed per request")
    for i, img in enumerate(items):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            return _fail(422, f"images[{i}]", f"must be uint8, got {arr.dtype}")
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))) or 0 in arr.shape[:2]:
            return _fail(422, f"images[{i}]", f"must be a non-empty (H, W), (H, W, 1) or (H, W, 3) image, got {arr.shape}")
        if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
            return _fail(422, f"images[{i}]", f"{arr.shape[0]}x{arr.shape[1]} is more than {MAX_PIXELS} pixels")
    return items


@serve.deployment
class Classifier:
    """Registry lookups, classifier cache and classification; see the module docstring.

    Args:
        settings: the MLflow URI (default: the SYNTHRAY_* environment).
        max_images: images per ``classify`` call.
        torch_threads: intra-op threads (0 = every usable CPU; Ray would leave one).
    """

    def __init__(self, settings: Settings | None = None, max_images: int = MAX_CLASSIFY_IMAGES,
                 torch_threads: int = 0) -> None:
        from infra.cpus import set_torch_threads
        from infra.tracking import configure

        set_torch_threads(torch_threads)
        self._settings = settings or get_settings()
        self._mlflow = configure(self._settings)
        self._client = self._mlflow.MlflowClient()
        self._max_images = max_images

    async def resolve(self, model: str) -> ClassifierRef | Failure:
        """``NAME@alias`` / ``NAME/VERSION`` → concrete classifier version; asked fresh every time."""
        return await asyncio.to_thread(self._resolve, model)

    def _resolve(self, model: str) -> ClassifierRef | Failure:
        import json

        from mlflow.exceptions import MlflowException, RestException

        from training.registry.classifiers import CLASSIFIER_KIND

        try:
            name, alias, version = parse_model(model)
        except (TypeError, ValueError) as exc:
            return _fail(422, "model", str(exc))
        try:
            if alias is not None:
                found = self._client.get_model_version_by_alias(name, alias)
            else:
                found = self._client.get_model_version(name, version)
            # Versions logged by hand may lack the tag; the registered model always has it.
            kind = (found.tags or {}).get(KIND_TAG) or self._client.get_registered_model(name).tags.get(KIND_TAG)
        except RestException as exc:
            reason = exc.message.removeprefix(f"{exc.error_code}: ")
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return _fail(404, "model", f"model {model!r} not found in the registry: {reason}")
            return _fail(503, "model", f"model registry error for {model!r}: {reason}")
        except MlflowException as exc:
            return _fail(503, None, f"model registry at {self._settings.mlflow_tracking_uri} unreachable: {exc.message}")
        if kind != CLASSIFIER_KIND:
            return _fail(422, "model", f"model {model!r} (version {found.version}) is a {kind or 'model of unknown kind'}, "
                                       f"not a {CLASSIFIER_KIND}")
        try:
            classes = tuple(json.loads((found.tags or {}).get("classes", "[]")))
        except ValueError:
            classes = ()
        return ClassifierRef(name=found.name, version=str(found.version), run_id=found.run_id, classes=classes)

    @serve.multiplexed(max_num_models_per_replica=CLASSIFIERS_PER_REPLICA)
    async def _classifier(self, uri: str) -> ImageClassifier:
        return await asyncio.to_thread(self._load, uri)

    def _load(self, uri: str) -> ImageClassifier:
        """Plain loader behind the multiplexed cache (``@serve.multiplexed`` needs a replica)."""
        from training.registry.classifiers import load_classifier

        return load_classifier(uri, self._settings)

    async def classify(self, model: str | ClassifierRef, images: Sequence[np.ndarray]) -> list[dict[str, Any]] | Failure:
        """Class probabilities of each uint8 image under ``model``.

        Args:
            model: ``NAME@alias`` / ``NAME/VERSION``, or a :class:`ClassifierRef` from
                :meth:`resolve` (then call with ``.options(multiplexed_model_id=ref.uri)`` so
                Serve routes to a replica that already holds it).
            images: uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` images of any size.

        Returns:
            One ``{"probabilities": {class: p}, "label": class, "model": name, "version": v}``
            per image, in order, or a :class:`Failure`.
        """
        items = _classify_images(images, self._max_images)
        if isinstance(items, Failure):
            return items
        ref = model if isinstance(model, ClassifierRef) else await self.resolve(model)
        if isinstance(ref, Failure):
            return ref
        classifier = await self._classifier(ref.uri)
        return await asyncio.to_thread(self._predict, classifier, ref, items)

    @staticmethod
    def _predict(classifier: ImageClassifier, ref: ClassifierRef, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        probs = classifier.predict_proba(list(images))
        names = classifier.class_names
        return [
            {"probabilities": {c: float(p) for c, p in zip(names, row)}, "label": names[int(row.argmax())],
             "model": ref.name, "version": ref.version}
            for row in probs
        ]
