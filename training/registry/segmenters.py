"""Registering and loading segmenters in the MLflow Model Registry.

As :mod:`training.registry.classifiers`: the pickled :class:`~training.nets.segmenter.ImageSegmenter`
is logged with ``mlflow.pytorch`` and a version is created in one call carrying every tag. The
registered model and each version carry ``synthray.kind = segmenter``, so Serve refuses to
segment with a classifier or a generator; ``classes`` (JSON list, index = label value) says
what the label maps mean without loading the model.

:func:`choose_segmenter` picks the segmenter that judges an image + mask generator's masks
(mask realism, :mod:`training.evaluate.mask_realism`): the one a user names, else the
``champion`` of the generator's dataset (see its docstring for the rule).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.errors import BadInput, SynthrayError
from infra.settings import Settings, get_settings
from infra.tracking import configure
from training.registry import tags as tag
from training.registry.models import (
    CHAMPION,
    PIP_REQUIREMENTS,
    RegistryError,
    ensure_registered_model,
    resolve_version,
)
from training.registry.refs import alias_uri, version_uri

if TYPE_CHECKING:  # torch stays out of light importers
    from training.nets.segmenter import ImageSegmenter

__all__ = ["CONTRACT", "SEGMENTER_KIND", "ChosenSegmenter", "RegisteredSegmenter", "choose_segmenter",
           "load_segmenter", "log_segmenter", "segmenter_name"]

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


def segmenter_name(dataset: str, arch: str) -> str:
    """Registry name of a dataset's segmenter: ``segmenter-{dataset name}-{arch}``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"segmenter-{dataset.split('@')[0]}-{arch}")


@dataclass(frozen=True)
class ChosenSegmenter:
    """The segmenter that judges a generator's masks.

    Attributes:
        model: the loaded network (CPU, eval mode).
        uri: the concrete version, ``models:/NAME/VERSION``.
        choice: ``given`` (named by the user) or ``dataset champion`` (found by :func:`choose_segmenter`).
        test_dice: its own mean test Dice on real images (version tag ``test.dice``), if recorded.
    """

    model: ImageSegmenter
    uri: str
    choice: str
    test_dice: float | None


def choose_segmenter(spec: str | None, dataset: str, mask_classes: list[str], *, field: str = "segmenter",
                     settings: Settings | None = None) -> ChosenSegmenter | None:
    """The segmenter named by ``spec``, else the champion segmenter of ``dataset``, else None.

    Without ``spec`` the choice is automatic (a generated mask that does not match its image
    is a defect the card must show, so mask realism is measured whenever it can be): among the
    registered models named ``segmenter-{dataset name}-*`` (:func:`segmenter_name`), those whose
    ``champion`` is a segmenter of the same dataset name (any version: the task and classes are
    the dataset's) with exactly ``mask_classes``; of several, the highest ``test.dice`` tag wins
    (then the name). ``--segmenter none`` on the CLI skips the measurement instead.

    Args:
        spec: ``NAME@alias`` / ``NAME/VERSION`` (a bare NAME means ``@champion``), or None.
        dataset: the generator's dataset, ``name@version``.
        mask_classes: the generator's mask classes, background first; a named segmenter must
            label exactly these, in this order.
        field: the CLI option / request field named in errors.

    Raises:
        BadInput: ``spec`` is malformed, names no segmenter, or a segmenter of other classes.
        NotFound: ``spec`` names no registered model or version.
    """
    client = configure(settings or get_settings()).MlflowClient()
    if spec is None:
        return _dataset_champion(client, dataset, mask_classes, settings)
    try:
        version = resolve_version(client, spec)
    except SynthrayError as exc:  # BadInput (syntax), NotFound, Unavailable: the same class, naming the field
        raise type(exc)(f"{field}: {exc.message}", field=field) from None
    kind = (version.tags or {}).get(tag.KIND)
    if kind != SEGMENTER_KIND:
        raise BadInput(f"{field}: {spec!r} is a {kind or 'model of unknown kind'}, not a segmenter", field=field)
    classes = json.loads(version.tags.get("classes", "[]"))
    if classes != list(mask_classes):
        raise BadInput(f"{field}: {spec!r} labels {classes}, the generator's masks {list(mask_classes)}: "
                       "mask realism needs the same classes in the same order", field=field)
    return _chosen(version, "given", settings)


def _chosen(version, choice: str, settings: Settings | None) -> ChosenSegmenter:
    uri = version_uri(version.name, version.version)
    dice = (version.tags or {}).get("test.dice")
    return ChosenSegmenter(load_segmenter(uri, settings), uri, choice, float(dice) if dice else None)


def _dataset_champion(client, dataset: str, mask_classes: list[str], settings: Settings | None
                      ) -> ChosenSegmenter | None:
    prefix = segmenter_name(dataset, "")
    name = dataset.split("@")[0]
    found = []
    # LIKE treats "_" as a wildcard: the prefix is checked again below
    for model in client.search_registered_models(filter_string=f"name LIKE '{prefix}%'", max_results=1000):
        if not model.name.startswith(prefix) or CHAMPION not in (model.aliases or {}):
            continue
        version = client.get_model_version_by_alias(model.name, CHAMPION)
        t = version.tags or {}
        if (t.get(tag.KIND) == SEGMENTER_KIND and t.get("dataset", "").split("@")[0] == name
                and json.loads(t.get("classes", "[]")) == list(mask_classes)):
            found.append((-float(t.get("test.dice") or "-inf"), model.name, version))
    return _chosen(min(found, key=lambda f: f[:2])[2], "dataset champion", settings) if found else None
