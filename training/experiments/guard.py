"""The leakage guard: no test (or validation) image or patient may be in a generator's training data.

A registered generator records its training data's lineage in version tags (``dataset`` =
``name@version`` and ``dataset.selection`` = the split/class/subset/limit arguments), so the
guard rebuilds that exact selection from the catalog and intersects it with the experiment's
real evaluation sets by patient id and image hash. A federated generator records every site's
selection instead (``dataset.sites``, a list of such selections); its training data is their
union. A generator without lineage is refused: nothing could show it is safe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from training.catalog.store import Catalog, ImageRecord
from training.catalog.splits import overlap
from infra.errors import BadInput
from training.registry.refs import version_uri
from training.registry.tags import DATASET_SITES


class LeakageError(BadInput):
    """A generator's training data shares patients or images with a real evaluation set."""


@dataclass(frozen=True)
class Lineage:
    """A generator version and the records it was trained on."""

    model: str  # models:/NAME/VERSION
    dataset: str
    selection: dict
    records: list[ImageRecord]


def lineage(version, catalog: Catalog) -> Lineage:
    """The training records of a registered generator version (from its ``dataset*`` tags)."""
    model = version_uri(version.name, version.version)
    tags = version.tags or {}
    if "dataset" in tags and DATASET_SITES in tags:  # federated: the union of the sites' selections
        sites = [selection_lineage(model, tags["dataset"], s, catalog) for s in json.loads(tags[DATASET_SITES])]
        return Lineage(model, sites[0].dataset, {"sites": "; ".join(_describe(s.selection) for s in sites)},
                       [r for s in sites for r in s.records])
    if "dataset" not in tags or "dataset.selection" not in tags:
        raise LeakageError(f"{model} has no dataset lineage tags (dataset, dataset.selection): cannot show its "
                           "training data is disjoint from the test set; register it from a training run")
    return selection_lineage(model, tags["dataset"], json.loads(tags["dataset.selection"]), catalog)


def selection_lineage(model: str, dataset: str, selection: dict, catalog: Catalog) -> Lineage:
    """The records ``select_records(dataset, **selection)`` picks: a generator's training data.

    Used for registered versions (their tags) and for training-run checkpoints (their config).
    """
    from training.catalog.selection import select_records

    manifest = catalog.manifest(dataset)
    return Lineage(model, str(manifest.ref), selection, select_records(manifest, **selection))


def check_disjoint(lineages: Sequence[Lineage], evaluation: dict[str, Sequence[ImageRecord]]) -> list[str]:
    """One line per generator saying it is disjoint; raises :class:`LeakageError` at the first leak.

    Args:
        lineages: the generators' training records.
        evaluation: split name (``test``, ``val``) → the experiment's real records of that split.
    """
    lines = []
    for item in lineages:
        for split, records in evaluation.items():
            found = overlap(item.records, records)
            if not found.disjoint:
                raise LeakageError(f"refused: {item.model} was trained on {item.dataset} {_describe(item.selection)}, "
                                   f"which shares data with the real {split} set: {found}")
        lines.append(f"guard: {item.model} ({len(item.records)} training images of {item.dataset} "
                     f"{_describe(item.selection)}) is disjoint from {' and '.join(evaluation)}")
    return lines


def _describe(selection: dict) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in selection.items() if v not in (None, "none")) + "]"
