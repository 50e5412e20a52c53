"""Registering trained generators in the MLflow Model Registry.

A registered version holds a pickled :class:`~training.models.sampler.GeneratorSampler`:
``mlflow.pytorch.load_model("models:/NAME@champion").generate(n, seed)`` works in any
process that can import ``training`` (Serve replicas, notebooks), with no training state.

Naming rule (one registered model per dataset × class × architecture)::

    gan-{dataset name}[-{class}]-{architecture}      e.g. gan-phantom-knee-wgan-gp-knee-small
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.settings import Settings, get_settings
from infra.tracking import configure, model_uri
from training.models.sampler import GeneratorSampler

# Explicit requirements: MLflow would otherwise infer them by re-importing the model in a
# subprocess, which costs ~15 s per registration on 2 cores.
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy"]


def registered_name(dataset: str, arch: str, class_name: str | None = None) -> str:
    """The documented registry name for a generator."""
    parts = ["gan", dataset.split("@")[0]] + ([class_name] if class_name else []) + [arch]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))


@dataclass(frozen=True)
class RegisteredGenerator:
    name: str
    version: str
    run_id: str | None
    alias: str

    @property
    def uri(self) -> str:
        return model_uri(self.name, self.alias)


def register_generator(
    sampler: GeneratorSampler,
    name: str,
    *,
    run_id: str | None = None,
    alias: str = "champion",
    tags: dict[str, str] | None = None,
    settings: Settings | None = None,
) -> RegisteredGenerator:
    """Log ``sampler`` as an MLflow model (inside ``run_id`` if given), register it, set ``alias``.

    Args:
        sampler: the generator to publish.
        name: registered model name (see :func:`registered_name`).
        run_id: training run the version comes from; a new run is opened if None.
        alias: alias pointed at the new version.
        tags: string tags set on the model version.
        settings: where MLflow lives.
    """
    mlflow = configure(settings or get_settings())
    with mlflow.start_run(run_id=run_id) as run:
        info = mlflow.pytorch.log_model(
            sampler.cpu().eval(),
            name="generator",
            registered_model_name=name,
            pip_requirements=PIP_REQUIREMENTS,
            serialization_format="pickle",
        )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, alias, version)
    return RegisteredGenerator(name=name, version=version, run_id=run.info.run_id, alias=alias)


def load_generator(uri: str, settings: Settings | None = None) -> GeneratorSampler:
    """Load a registered generator (``models:/NAME@alias`` or ``models:/NAME/3``) on CPU."""
    mlflow = configure(settings or get_settings())
    return mlflow.pytorch.load_model(uri, map_location="cpu").eval()
