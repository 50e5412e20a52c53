"""Registering and loading image classifiers in the MLflow Model Registry.

Same approach as generators (:func:`training.registry.generators.log_generator`): the pickled
:class:`~training.nets.classifier.ImageClassifier` is logged with ``mlflow.pytorch`` and a
version is created in one call carrying every tag, so a version never changes after it
exists. The registered model and each version carry ``synthray.kind = classifier`` (the
generators' tag key), which is how Serve refuses to classify with a generator and vice versa;
``classes`` (JSON list) says what the probabilities mean without loading the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.settings import Settings, get_settings
from infra.tracking import configure
from training.registry import tags as tag
from training.registry.models import CHAMPION, PIP_REQUIREMENTS, RegistryError, ensure_registered_model
from training.registry.refs import alias_uri, version_uri

if TYPE_CHECKING:  # torch stays out of light importers
    from training.nets.classifier import ImageClassifier

__all__ = ["CLASSIFIER_KIND", "CONTRACT", "RegisteredClassifier", "load_classifier", "log_classifier"]

CLASSIFIER_KIND = tag.CLASSIFIER_KIND
CONTRACT = "predict_proba(uint8 (N,H,W) | (N,H,W,3) | list of images) -> float64 (N, K) softmax over tag 'classes'"


@dataclass(frozen=True)
class RegisteredClassifier:
    """A created version. ``uri`` is the concrete ``models:/NAME/VERSION`` (alias may be None)."""

    name: str
    version: str
    run_id: str
    alias: str | None
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return version_uri(self.name, self.version)

    @property
    def alias_uri(self) -> str | None:
        return alias_uri(self.name, self.alias) if self.alias else None


def _signature(classifier: ImageClassifier):
    import numpy as np
    from mlflow.models import infer_signature

    x = classifier.preprocess(np.zeros((2, classifier.image_size, classifier.image_size), dtype=np.uint8))
    return infer_signature(x.numpy(), classifier(x).detach().numpy())


def log_classifier(
    classifier: ImageClassifier,
    name: str,
    alias: str | None = CHAMPION,
    settings: Settings | None = None,
    tags: dict[str, str] | None = None,
    *,
    run_id: str | None = None,
    description: str = "",
) -> RegisteredClassifier:
    """Log ``classifier`` as an MLflow model and create a version of ``name`` with its tags.

    Args:
        classifier: the wrapped network (moved to CPU, eval mode, pickled).
        name: registered model name (must not already hold generators).
        alias: alias pointed at the new version; None sets none.
        settings: where MLflow lives.
        tags: extra version tags (e.g. training data, metrics); the kind/classes tags win.
        run_id: run to log the model in (a new run if None).
        description: version description.
    """
    from training.nets.classifier import ImageClassifier

    if not isinstance(classifier, ImageClassifier):
        raise TypeError(f"expected an ImageClassifier, got {type(classifier).__name__}")
    mlflow = configure(settings or get_settings())
    client = mlflow.MlflowClient()
    ensure_registered_model(client, name, CLASSIFIER_KIND, "Image classifier registered by synthray.")
    classifier = classifier.cpu().eval()
    version_tags = {str(k): str(v) for k, v in (tags or {}).items()} | {
        tag.KIND: CLASSIFIER_KIND, "contract": CONTRACT, "classes": json.dumps(classifier.class_names),
        "image_size": str(classifier.image_size), "in_channels": str(classifier.in_channels),
        "arch": type(classifier.backbone).__name__,
    }
    with mlflow.start_run(run_id=run_id) as run:
        info = mlflow.pytorch.log_model(
            classifier, name="classifier", pip_requirements=PIP_REQUIREMENTS, serialization_format="pickle",
            signature=_signature(classifier),
            metadata={"contract": CONTRACT, "classes": classifier.class_names, "image_size": classifier.image_size},
        )
    version = client.create_model_version(name, source=info.model_uri, run_id=run.info.run_id, tags=version_tags,
                                          description=description, model_id=info.model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return RegisteredClassifier(name=name, version=str(version.version), run_id=run.info.run_id, alias=alias,
                                tags=version_tags)


def load_classifier(uri: str, settings: Settings | None = None) -> ImageClassifier:
    """Load a registered classifier (``models:/NAME@alias`` or ``models:/NAME/3``) on CPU, eval mode.

    Raises :class:`RegistryError` when the stored object is not an ``ImageClassifier``.
    """
    from training.nets.classifier import ImageClassifier

    mlflow = configure(settings or get_settings())
    model = mlflow.pytorch.load_model(uri, map_location="cpu")
    if not isinstance(model, ImageClassifier):
        raise RegistryError(f"{uri} holds a {type(model).__name__}, not an ImageClassifier")
    return model.eval()
