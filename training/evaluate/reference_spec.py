"""The text that names a reference selection, parsed by one rule for the CLI and for HTTP.

``NAME[@VER][:SUBSET][:CLASS]`` names real images in the catalog: a dataset (``NAME``, the
latest version, or ``NAME@VERSION``), optionally one of its subsets, optionally one class (a
class name or index, resolved against the dataset's manifest). Leave SUBSET empty to give only
a class: ``phantom-knee@abc::KL2``.

``synthray eval … --reference`` (:mod:`services.cli.eval`) and ``POST /v1/fid``'s
``reference`` field (:mod:`services.serving.fid_scorer`) both use :meth:`ReferenceSpec.parse`
and :func:`resolve_labels`; their errors are :class:`~infra.errors.BadInput` with
``field="reference"``, and each front end words the field its own way (``--reference`` /
``reference: …``).

Plain text rules only: no torch, no catalog access (the caller reads the manifest and passes
its classes), so either front end can import this cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from infra.errors import BadInput

__all__ = ["REFERENCE_FIELD", "REFERENCE_SYNTAX", "ReferenceSpec", "resolve_labels"]

REFERENCE_SYNTAX = "NAME[@VER][:SUBSET][:CLASS]"
REFERENCE_FIELD = "reference"  # the HTTP field / the option the errors name
_EXAMPLE = "phantom-knee@1a2b:gan-train:KL0"
# A class index is ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() then
# rejects or reads as another number.
_INDEX = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ReferenceSpec:
    """A parsed ``NAME[@VER][:SUBSET][:CLASS]``; the dataset part is checked by the catalog."""

    dataset: str  # NAME or NAME@VERSION (training.catalog.store.DatasetRef parses it)
    subset: str | None = None
    label: str | None = None  # class name or index, resolved against the manifest

    @classmethod
    def parse(cls, text: str) -> ReferenceSpec:
        """``NAME[@VER][:SUBSET][:CLASS]`` → spec; BadInput (field ``reference``) when malformed."""
        if not isinstance(text, str):
            raise BadInput(f"{text!r}: use {REFERENCE_SYNTAX}, e.g. {_EXAMPLE}", field=REFERENCE_FIELD)
        parts = text.split(":")
        if len(parts) > 3 or not parts[0]:
            raise BadInput(f"{text!r}: use {REFERENCE_SYNTAX}, e.g. {_EXAMPLE}", field=REFERENCE_FIELD)
        parts += [""] * (3 - len(parts))
        return cls(parts[0], parts[1] or None, parts[2] or None)


def resolve_labels(classes: Sequence[str], label: str | None, dataset: str) -> list[int] | None:
    """A class name or index → the label list of a reference selection (None: every class).

    Args:
        classes: the dataset manifest's class names, in label order.
        label: the spec's CLASS part: a class name, or an index in ASCII digits.
        dataset: the dataset as resolved (named in the error).

    Raises:
        BadInput: (field ``reference``) the class is neither a name nor an index of ``classes``.
    """
    if label is None:
        return None
    names = list(classes)
    if label in names:
        return [names.index(label)]
    if _INDEX.fullmatch(label) and int(label) < len(names):
        return [int(label)]
    raise BadInput(f"class {label!r} is not in {dataset} (classes: {', '.join(names)})", field=REFERENCE_FIELD)
