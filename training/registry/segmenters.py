"""Registering and loading segmenters in the MLflow Model Registry.

As :mod:`training.registry.classifiers`: the pickled :class:`~training.nets.segmenter.ImageSegmenter`
is logged with ``mlflow.pytorch`` and a version is created in one call carrying every tag. The
registered model and each version carry ``synthray.kind = segmenter``, so Serve refuses to
segment with a classifier or a generator; ``classes`` (JSON list, index = label value) says
what the label maps mean without loading the model.
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
    from training.nets.segmenter import ImageSegmenter

__all__ = ["CONTRACT", "SEGMENTER_KIND", "RegisteredSegmenter", "load_segmenter", "log_segmenter"]

SEGMENTER_KIND = tag.SEGMENTER_KIND
CONTRACT = "predict(list of uint8 (H,W) | (H,W,3) images) -> list of uint8 (H,W) label maps, values index tag 'classes'"
PIP_WITH_MONAI = [*PIP_REQUIREMENTS, "monai==1.6.1"]


@dataclass(frozen=True)
class RegisteredSegmenter:
    """A created version. ``uri`` is the concrete ``models:/NAME/VERSION``."""

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


def log_segmenter(
    segmenter: ImageSegmenter,
    name: str,
    alias: str | None = CHAMPION,
    settings: Settings | None = None,
    tags: dict[str, str] | None = None,
    *,
    run_id: str | None = None,
    description: str = "",
) -> RegisteredSegmenter:
    """Log ``segmenter`` as an MLflow model and create a version of ``name`` with its tags.

    Args:
        segmenter: the wrapped network (moved to CPU, eval mode, pickled).
        name: registered model name (must not already hold another kind).
        alias: alias pointed at the new version; None sets none.
        settings: where MLflow lives.
        tags: extra version tags (training data, metrics); the kind/classes tags win.
        run_id: run to log the model in (a new run if None).
        description: version description.
    """
    import numpy as np
    from mlflow.models import infer_signature

    from training.nets.segmenter import ImageSegmenter

    if not isinstance(segmenter, ImageSegmenter):
        raise TypeError(f"expected an ImageSegmenter, got {type(segmenter).__name__}")
    mlflow = configure(settings or get_settings())
    client = mlflow.MlflowClient()
    ensure_registered_model(client, name, SEGMENTER_KIND, "Image segmenter registered by synthray.")
    segmenter = segmenter.cpu().eval()
    version_tags = {str(k): str(v) for k, v in (tags or {}).items()} | {
        tag.KIND: SEGMENTER_KIND, "contract": CONTRACT, "classes": json.dumps(segmenter.class_names),
        "image_size": str(segmenter.image_size), "arch": segmenter.arch,
    }
    x = segmenter.preprocess(np.zeros((1, segmenter.image_size, segmenter.image_size), dtype=np.uint8))
    with mlflow.start_run(run_id=run_id) as run:
        info = mlflow.pytorch.log_model(
            segmenter, name="segmenter", pip_requirements=PIP_WITH_MONAI, serialization_format="pickle",
            signature=infer_signature(x.numpy(), segmenter(x).detach().numpy()),
            metadata={"contract": CONTRACT, "classes": segmenter.class_names, "image_size": segmenter.image_size},
        )
    version = client.create_model_version(name, source=info.model_uri, run_id=run.info.run_id, tags=version_tags,
                                          description=description, model_id=info.model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return RegisteredSegmenter(name=name, version=str(version.version), run_id=run.info.run_id, alias=alias,
                               tags=version_tags)


def load_segmenter(uri: str, settings: Settings | None = None) -> ImageSegmenter:
    """Load a registered segmenter (``models:/NAME@alias`` or ``models:/NAME/3``) on CPU, eval mode.

    Raises :class:`RegistryError` when the stored object is not an ``ImageSegmenter``.
    """
    from training.nets.segmenter import ImageSegmenter

    mlflow = configure(settings or get_settings())
    model = mlflow.pytorch.load_model(uri, map_location="cpu")
    if not isinstance(model, ImageSegmenter):
        raise RegistryError(f"{uri} holds a {type(model).__name__}, not an ImageSegmenter")
    return model.eval()
