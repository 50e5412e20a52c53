"""Sites of a federated run: K disjoint subsets ``site-0`` … ``site-{K-1}`` of a catalog version.

A site is a hospital: it keeps its images, and every image of one patient stays at one site
(tested). ``by="patient"`` deals whole patients to K sites, seeded, each patient to the site
with the fewest images so far (balanced to within one patient's images); ``by="attribute=NAME"``
uses a record attribute such as ``hospital`` (layouts that carry the site), one or more
attribute values per site, largest first onto the smallest site. Records without a patient id
count as patients of their own.

The subsets are declared on a new version of the dataset (versions are immutable), like
``synthray catalog split --subset``; the images are not copied.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from infra.errors import BadInput
from training.catalog.splits import select
from training.catalog.store import Catalog, ImageRecord, Manifest

SITE_PREFIX = "site-"
_SITE = re.compile(rf"^{SITE_PREFIX}(\d+)$")


def site_name(index: int) -> str:
    return f"{SITE_PREFIX}{index}"


def site_subsets(manifest: Manifest) -> list[str]:
    """The version's site subsets in index order (``site-0``, ``site-1``, …); [] when it has none."""
    found = sorted((int(m.group(1)), name) for name in manifest.subsets if (m := _SITE.match(name)))
    return [name for _, name in found]


def check_sites(manifest: Manifest, sites: int) -> list[str]:
    """The version's ``sites`` site subsets, refusing another count or a multi-label version.

    Raises:
        BadInput: (field ``sites``) the version declares another number of sites; (``dataset``)
            it is multi-label (federated training takes single-label versions).
    """
    found = site_subsets(manifest)
    if len(found) != sites:
        raise BadInput(f"dataset {manifest.ref} has {len(found)} site subsets, not sites {sites}: "
                       f"run `synthray catalog split {manifest.ref} --sites {sites}` first", field="sites")
    if manifest.multilabel:
        raise BadInput(f"dataset {manifest.ref} is multi-label; federated training takes single-label versions",
                       field="dataset")
    return found


def _patient(record: ImageRecord) -> str:
    return record.patient_id or f"image:{record.sha256}"


def _groups(records: Sequence[ImageRecord], by: str) -> dict[str, list[ImageRecord]]:
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    if by == "patient":
        for r in records:
            groups[_patient(r)].append(r)
        return groups
    kind, sep, attribute = by.partition("=")
    if kind != "attribute" or not sep or not attribute:
        raise BadInput(f"--by must be 'patient' or 'attribute=NAME' (e.g. attribute=hospital), got {by!r}", field="by")
    for r in records:
        if attribute not in r.attributes:
            raise BadInput(f"record {r.source_path} has no attribute {attribute!r} "
                           f"(attributes: {', '.join(sorted(r.attributes)) or 'none'})", field="by")
        groups[r.attributes[attribute]].append(r)
    return groups


def assign_sites(records: Sequence[ImageRecord], sites: int, by: str = "patient", seed: int = 0) -> list[list[str]]:
    """Image hashes of each of ``sites`` disjoint sites covering ``records``.

    Raises:
        BadInput: fewer patients (or attribute values) than sites, a missing attribute, or a
            patient whose images carry two attribute values that landed at different sites.
    """
    if sites < 1:
        raise BadInput(f"--sites must be >= 1, got {sites}", field="sites")
    groups = _groups(records, by)
    if len(groups) < sites:
        what = "patients" if by == "patient" else f"values of {by.partition('=')[2]!r}"
        raise BadInput(f"{len(records)} images of {len(groups)} {what} cannot fill {sites} sites", field="sites")
    keys = sorted(groups)
    if by == "patient":  # seeded order: sites get a random, balanced mix of patients
        order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    else:  # hospitals: largest first (ties by name), so K hospitals make exactly K sites
        order = sorted(keys, key=lambda k: (-len(groups[k]), k))
    members: list[list[ImageRecord]] = [[] for _ in range(sites)]
    for key in order:
        target = min(range(sites), key=lambda i: (len(members[i]), i))
        members[target].extend(groups[key])
    where: dict[str, int] = {}
    for i, site in enumerate(members):
        for r in site:
            if where.setdefault(_patient(r), i) != i:
                raise BadInput(f"patient {r.patient_id} has images at {site_name(where[_patient(r)])} and "
                               f"{site_name(i)} (its images carry two {by} values)", field="by")
    return [sorted(r.sha256 for r in site) for site in members]


def publish_sites(catalog: Catalog, ref: str, sites: int, by: str = "patient", within: str = "split=train",
                  seed: int = 0, name: str | None = None) -> Manifest:
    """A new version of ``ref`` declaring ``site-0`` … ``site-{K-1}`` over the ``within`` selection.

    Earlier ``site-*`` subsets are replaced; every other subset is kept.
    """
    source = catalog.manifest(ref)
    chosen = select(source, within)
    if not chosen:
        raise BadInput(f"dataset {source.ref} has no images in {within!r}", field="within")
    assigned = assign_sites(chosen, sites, by, seed)
    kept = {k: v for k, v in source.subsets.items() if not _SITE.match(k)}
    declared = kept | {site_name(i): shas for i, shas in enumerate(assigned)}
    note = f"derived from {source.ref}; {sites} sites by {by} within {within} seed {seed}"
    return catalog.publish_records(
        name or source.name, source.records, source.classes,
        description=f"{source.description} | {note}", subsets=declared, preprocessing=source.preprocessing,
        findings=source.findings, mask_classes=source.mask_classes)
