"""The ``Classifier`` deployment of the Serve app: registered classifiers over HTTP.

It resolves ``NAME@alias`` / ``NAME/VERSION`` against the MLflow registry on every request (a
moved alias takes effect at once), refuses versions not tagged ``synthray.kind=classifier``
(e.g. a generator), and keeps a few loaded classifiers per replica with ``@serve.multiplexed``
keyed by the concrete ``models:/NAME/V``.

It follows :class:`services.serving.synthesizer.Synthesizer`: torch and MLflow are imported
inside methods (the Api ingress imports this module for :class:`ClassifierRef` and stays
small), blocking work runs in ``asyncio.to_thread``, and ordinary client errors come back as an
:mod:`infra.errors` value naming the request field instead of being raised, so the replica does
not log tracebacks for them.

Uploaded images are classified in memory only and never persisted (see :mod:`services.serving.uploads`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from infra.errors import BadInput, NotFound, SynthrayError, Unavailable
from infra.settings import Settings, get_settings
from training.registry.generators import parse_model
from training.registry.tags import CLASSIFIER_KIND
from training.registry.tags import KIND as KIND_TAG
from training.registry.refs import version_uri

if TYPE_CHECKING:
    from training.nets.classifier import ImageClassifier

__all__ = ["Classifier", "ClassifierRef"]

CLASSIFIERS_PER_REPLICA = 3  # classifiers cached per Classifier replica (LRU, @serve.multiplexed)
MAX_CLASSIFY_IMAGES = 256  # images per classify call
MAX_PIXELS = 4096 * 4096  # per image, as services.serving.uploads


def _bad(field: str, message: str) -> BadInput:
    """A 422 naming the request field at fault (``model``, ``images``, ``images[i]``)."""
    return BadInput(f"{field}: {message}", field=field)


@dataclass(frozen=True)
class ClassifierRef:
    """A registry reference resolved to a concrete classifier version."""

    name: str
    version: str
    run_id: str | None
    classes: tuple[str, ...] = ()  # from the version's ``classes`` tag (informational)

    @property
    def uri(self) -> str:
        return version_uri(self.name, self.version)


def _classify_images(images: Sequence[np.ndarray], max_images: int) -> list[np.ndarray] | BadInput:
    """Checked uint8 ``(H,W)`` / ``(H,W,1)`` / ``(H,W,3)`` images, or a 422 naming ``images[i]``."""
    items = list(images) if images is not None else []
    if not items:
        return _bad("images", "no images")
    if len(items) > max_images:
        return _bad("images", f"{len(items)} images, more than the {max_images} allowed per request")
    for i, img in enumerate(items):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            return _bad(f"images[{i}]", f"must be uint8, got {arr.dtype}")
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))) or 0 in arr.shape[:2]:
            return _bad(f"images[{i}]", f"must be a non-empty (H, W), (H, W, 1) or (H, W, 3) image, got {arr.shape}")
        if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
            return _bad(f"images[{i}]", f"{arr.shape[0]}x{arr.shape[1]} is more than {MAX_PIXELS} pixels")
    return items


@serve.deployment
class Classifier:
    """Registry lookups, classifier cache and classification; see the module docstring.

    Args:
        settings: the MLflow URI (default: the SYNTHRAY_* environment).
        max_images: images per ``classify`` call.
        torch_threads: intra-op threads (0 = every usable CPU; Ray would leave one).
    """

    kind = CLASSIFIER_KIND  # the registry kind this deployment serves (the segmenter subclass: "segmenter")

    def __init__(self, settings: Settings | None = None, max_images: int = MAX_CLASSIFY_IMAGES,
                 torch_threads: int = 0) -> None:
        from infra.cpus import set_torch_threads
        from infra.tracking import configure

        set_torch_threads(torch_threads)
        self._settings = settings or get_settings()
        self._mlflow = configure(self._settings)
        self._client = self._mlflow.MlflowClient()
        self._max_images = max_images

    async def resolve(self, model: str) -> ClassifierRef | SynthrayError:
        """``NAME@alias`` / ``NAME/VERSION`` → concrete classifier version; asked fresh every time."""
        return await asyncio.to_thread(self._resolve, model)

    def _resolve(self, model: str) -> ClassifierRef | SynthrayError:
        import json

        from mlflow.exceptions import MlflowException, RestException

        try:
            name, alias, version = parse_model(model)
        except (TypeError, ValueError) as exc:
            return _bad("model", str(exc))
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
                return NotFound(f"model: model {model!r} not found in the registry: {reason}", field="model")
            return Unavailable(f"model: model registry error for {model!r}: {reason}", field="model")
        except MlflowException as exc:
            return Unavailable(f"model registry at {self._settings.mlflow_tracking_uri} unreachable: {exc.message}")
        if kind != self.kind:
            return _bad("model", f"model {model!r} (version {found.version}) is a {kind or 'model of unknown kind'}, "
                                 f"not a {self.kind}")
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

    async def classify(self, model: str | ClassifierRef, images: Sequence[np.ndarray]
                       ) -> list[dict[str, Any]] | SynthrayError:
        """Class probabilities of each uint8 image under ``model``.

        Args:
            model: ``NAME@alias`` / ``NAME/VERSION``, or a :class:`ClassifierRef` from
                :meth:`resolve` (then call with ``.options(multiplexed_model_id=ref.uri)`` so
                Serve routes to a replica that already holds it).
            images: uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` images of any size.

        Returns:
            One ``{"probabilities": {class: p}, "label": class, "model": name, "version": v}``
            per image, in order, or the :class:`~infra.errors.SynthrayError` that says why not.
        """
        return await self._answer(model, images, self._predict)

    async def _answer(self, model: str | ClassifierRef, images: Sequence[np.ndarray], predict
                      ) -> list[dict[str, Any]] | SynthrayError:
        """Check the images, resolve ``model``, load it (cached) and run ``predict(model, ref, images)`` off the loop."""
        items = _classify_images(images, self._max_images)
        if isinstance(items, SynthrayError):
            return items
        ref = model if isinstance(model, ClassifierRef) else await self.resolve(model)
        if isinstance(ref, SynthrayError):
            return ref
        loaded = await self._classifier(ref.uri)
        return await asyncio.to_thread(predict, loaded, ref, items)

    @staticmethod
    def _predict(classifier: ImageClassifier, ref: ClassifierRef, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        probs = classifier.predict_proba(list(images))
        names = classifier.class_names
        return [
            {"probabilities": {c: float(p) for c, p in zip(names, row)}, "label": names[int(row.argmax())],
             "model": ref.name, "version": ref.version}
            for row in probs
        ]
