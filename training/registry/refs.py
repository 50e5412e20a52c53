"""The one model-reference value type: ``models:/NAME/VERSION`` or ``models:/NAME@alias``.

Every ``models:/`` string synthray builds comes from :attr:`ModelReference.uri`; every model
reference a user types (CLI option, HTTP field, experiment config) is parsed by
:meth:`ModelReference.parse`. Torch- and MLflow-free: the Serve ingress parses model names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.errors import BadInput
from infra.names import safe_name

# NAME@alias or NAME/VERSION, optionally written as a full models:/ URI.
_MODEL_REF = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[1-9][0-9]*))$")
MAX_VERSION = 2**31 - 1  # MLflow's model version column is a 32-bit integer
MODEL_REF_HELP = "'NAME@alias' (e.g. 'gan-phantom-knee-wgan-gp-knee-small@champion') or 'NAME/VERSION' (e.g. '…/3')"


@dataclass(frozen=True)
class ModelReference:
    """A registered model named by exactly one of ``alias`` or ``version``.

    Args:
        name: the registered model's name (letters, digits, ``_ . -``).
        alias: e.g. ``champion``; None when ``version`` is given.
        version: a positive integer as text; None when ``alias`` is given.

    Raises:
        BadInput: (field ``model``) when both or neither of alias and version are given.
    """

    name: str
    alias: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        # a model name is a key in the registry's artifact store: one safe path component
        safe_name(self.name, "model")
        if (self.alias is None) == (self.version is None):
            raise BadInput(f"model {self.name!r} needs exactly one of an alias or a version", field="model")
        if self.version is not None:
            object.__setattr__(self, "version", str(self.version))

    @classmethod
    def parse(cls, spec: str, default_alias: str | None = None) -> ModelReference:
        """``NAME@alias``, ``NAME/VERSION`` or either as a ``models:/`` URI.

        Args:
            spec: the text a user gave.
            default_alias: the alias a bare ``NAME`` means (e.g. ``champion``); None refuses a bare name.

        Raises:
            BadInput: (field ``model``) for anything else, naming the accepted forms.
        """
        if not isinstance(spec, str):
            raise BadInput(f"model must be {MODEL_REF_HELP}, got {spec!r}", field="model")
        if default_alias is not None and "@" not in spec and "/" not in spec:
            spec = f"{spec}@{default_alias}"
        match = _MODEL_REF.match(spec)
        if match is None:
            raise BadInput(f"model must be {MODEL_REF_HELP}, got {spec!r}", field="model")
        if match["version"] is not None and int(match["version"]) > MAX_VERSION:
            # MLflow stores versions as 32-bit integers; a larger one makes its server fail (5xx)
            raise BadInput(f"model version {match['version']} is out of range (at most {MAX_VERSION})", field="model")
        return cls(match["name"], alias=match["alias"], version=match["version"])

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION`` or ``models:/NAME@alias`` (what ``mlflow.*.load_model`` takes)."""
        return f"models:/{self.name}/{self.version}" if self.version is not None else f"models:/{self.name}@{self.alias}"

    @property
    def spec(self) -> str:
        """The short form a user types: ``NAME/VERSION`` or ``NAME@alias``."""
        return self.uri.removeprefix("models:/")

    def __str__(self) -> str:
        return self.uri


def version_uri(name: str, version: str | int) -> str:
    """``models:/NAME/VERSION``."""
    return ModelReference(name, version=str(version)).uri


def alias_uri(name: str, alias: str) -> str:
    """``models:/NAME@alias``."""
    return ModelReference(name, alias=alias).uri


__all__ = ["MODEL_REF_HELP", "ModelReference", "alias_uri", "version_uri"]
