"""Registered models in MLflow, whatever they hold: alias names, the kind check, RegistryError.

Generators (:mod:`.generators`) and classifiers (:mod:`.classifiers`) share these, so a name
is created one way, a name that holds one kind never receives versions of another, and a
reference resolves to its version one way (:func:`resolve_version`).
"""

from __future__ import annotations

from infra.errors import BadInput, Conflict, classify
from training.registry import tags as tag
from training.registry.refs import ModelReference

CHALLENGER, CHAMPION, PREVIOUS_CHAMPION = "challenger", "champion", "previous-champion"
# Explicit requirements: MLflow would otherwise infer them by re-importing the model in a
# subprocess, which costs ~15 s per registration on 2 cores.
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy"]


class RegistryError(BadInput):
    """A registry request that cannot be honoured; the message says which name/version/alias."""


class KindConflict(Conflict, RegistryError):
    """A registered model name already holds versions of another kind (HTTP 409)."""


def ensure_registered_model(client, name: str, kind: str, description: str) -> None:
    """Create ``name`` tagged ``synthray.kind = kind``, or check that the existing one holds that kind.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        kind: one of the ``*_KIND`` values of :mod:`training.registry.tags`.
        description: shown in the MLflow UI for a new name.

    Raises:
        KindConflict: ``name`` exists and is tagged with another kind.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={tag.KIND: kind}, description=description)
        return
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    existing = client.get_registered_model(name).tags.get(tag.KIND)
    if existing not in (None, kind):
        raise KindConflict(f"registered model {name!r} holds {existing} versions; a {kind} needs another name")


def resolve_version(client, spec: str):
    """The ``ModelVersion`` of ``NAME@alias`` or ``NAME/VERSION`` (a bare NAME means @champion)."""
    from mlflow.exceptions import MlflowException

    ref = ModelReference.parse(spec, default_alias=CHAMPION)
    name, alias, version = ref.name, ref.alias, ref.version
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        # not found → NotFound (404 / "not found"), outage → Unavailable, else a RegistryError
        known = classify(exc, f"model {spec!r}")
        if known is not None:
            raise known from None
        reason = exc.message.removeprefix(f"{exc.error_code}: ").splitlines()[0]
        raise RegistryError(f"model {spec!r}: {reason}") from None
