"""Creating a study: validate the request, pick the images, freeze them in S3.

Two steps, so the HTTP ingress and the CLI share everything but the renderer:

1. :func:`plan` (torch- and MLflow-free): real images drawn, seeded, from the catalog selection;
   one recorded seed per fake; the ``--require-disjoint`` check against the generator's
   training selection (its ``dataset`` / ``dataset.selection`` version tags).
2. :func:`freeze`: the caller renders the plan's seeds through the ``/v1/synthesize`` code
   path (:class:`~training.nets.sampler.GeneratorSampler` behind the registry, one image per
   seed, so any fake is reproducible with ``{"model": "NAME/VERSION", "n": 1, "seed": S}``),
   then every image is re-encoded identically (:mod:`training.studies.images`) under an opaque
   id and written, with the truth, the readers and their link tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infra.errors import BadInput
from training.catalog.splits import overlap, select
from training.catalog.store import Catalog, ImageRecord
from training.studies import images as enc
from training.studies.store import Reader, Study, StudyStore, new_image_id, new_study_id

_GROUP = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
MAX_IMAGES = 500
MAX_READERS = 200
SEED_SPACE = 2**31


@dataclass(frozen=True)
class StudyRequest:
    """What ``synthray study create`` / ``POST /v1/studies`` asks for (validated on construction)."""

    model: str
    reference: str  # NAME[@VERSION][:SELECTOR]
    n_real: int = 30
    n_fake: int = 30
    size: int = 315
    readers: int = 15
    groups: dict[str, int] = field(default_factory=dict)
    time_limit_s: float | None = None
    seed: int | None = None
    require_disjoint: bool = False
    cls: str | int | None = None
    title: str = ""

    def __post_init__(self) -> None:
        def bad(field_: str, msg: str) -> BadInput:
            return BadInput(f"{field_}: {msg}", field=field_)

        for name in ("n_real", "n_fake"):
            if not 1 <= getattr(self, name) <= MAX_IMAGES:
                raise bad(name, f"must be between 1 and {MAX_IMAGES}")
        if not 32 <= self.size <= 2048:
            raise bad("size", "must be between 32 and 2048 pixels")
        if not 1 <= self.readers <= MAX_READERS:
            raise bad("readers", f"must be between 1 and {MAX_READERS}")
        if self.groups:
            for name, count in self.groups.items():
                if not _GROUP.match(name) or count < 1:
                    raise bad("groups", f"{name}={count}: names are letters/digits/_/- and counts are >= 1")
            if sum(self.groups.values()) != self.readers:
                raise bad("groups", f"group sizes add up to {sum(self.groups.values())}, not --readers {self.readers}")
        if self.time_limit_s is not None and not 3 <= self.time_limit_s <= 3600:
            raise bad("time_limit_s", "must be between 3 and 3600 seconds")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise bad("seed", "must be >= 0")
        if len(self.title) > 200:
            raise bad("title", "at most 200 characters")
        parse_reference(self.reference)

    def reader_list(self) -> list[Reader]:
        groups = self.groups or {"reader": self.readers}
        width = max(2, len(str(self.readers)))
        out, n = [], 0
        for group, count in groups.items():
            for _ in range(count):
                n += 1
                out.append(Reader(f"r{n:0{width}d}", group))
        return out


def parse_groups(text: str | None) -> dict[str, int]:
    """``radiologist=8,surgeon=7`` → {"radiologist": 8, "surgeon": 7}."""
    out: dict[str, int] = {}
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        name, _, count = term.partition("=")
        if not count.strip().isdigit():
            raise BadInput(f"groups: {term!r} is not NAME=COUNT", field="groups")
        out[name.strip()] = out.get(name.strip(), 0) + int(count)
    return out


def parse_reference(text: str) -> tuple[str, str]:
    """``NAME[@VERSION][:SELECTOR]`` → (dataset, selector)."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput("reference: give NAME[@VERSION][:SELECTOR], e.g. phantom-knee@1a2b:split=test", field="reference")
    dataset, _, selector = text.partition(":")
    from training.catalog.store import DatasetRef

    try:
        DatasetRef.parse(dataset)
    except BadInput as exc:
        raise BadInput(f"reference: {exc}", field="reference") from None
    return dataset, selector


@dataclass(frozen=True)
class Plan:
    """A study before rendering: everything decided, nothing written."""

    request: StudyRequest
    model: dict[str, Any]  # name, version, run_id, spec, uri
    dataset: str  # name@version (resolved)
    selector: str
    reals: list[ImageRecord]
    fake_seeds: list[int]
    seed: int
    disjoint: str  # the overlap report, or "not checked"


@dataclass(frozen=True)
class CreatedStudy:
    study: Study
    tokens: dict[str, str]  # reader id → token

    def links(self, base_url: str) -> dict[str, str]:
        return {rid: reader_url(base_url, token) for rid, token in self.tokens.items()}


def reader_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/study/{token}"


def training_records(catalog: Catalog, tags: Mapping[str, str]) -> list[ImageRecord] | None:
    """The generator's training selection from its version tags, or None when it has no lineage.

    ``limit`` and ``balance`` are ignored: the check is against every image the training
    selection drew from (a superset, so it can only refuse more, never less).
    """
    dataset, selection = tags.get("dataset"), tags.get("dataset.selection")
    if not dataset or not selection:
        return None
    sel = json.loads(selection)
    manifest = catalog.manifest(dataset)
    return manifest.select(split=sel.get("split"), labels=sel.get("labels"), subset=sel.get("subset"))


def plan(request: StudyRequest, model: Mapping[str, Any], model_tags: Mapping[str, str], catalog: Catalog) -> Plan:
    """Choose the real images and fake seeds; refuse a non-disjoint reference when asked to.

    Args:
        request: the validated request.
        model: the resolved generator version: ``name``, ``version``, ``run_id``, ``spec``, ``uri``.
        model_tags: that version's tags (the lineage for ``require_disjoint``).
        catalog: where the reference dataset lives.
    """
    dataset, selector = parse_reference(request.reference)
    manifest = catalog.manifest(dataset)
    records = select(manifest, selector)
    if len(records) < request.n_real:
        raise BadInput(f"reference {request.reference!r} selects {len(records)} images; the study needs "
                       f"n_real={request.n_real}", field="n_real")
    seed = request.seed if request.seed is not None else secrets.randbelow(SEED_SPACE)
    rng = np.random.default_rng(seed)
    reals = [records[i] for i in sorted(rng.choice(len(records), request.n_real, replace=False).tolist())]
    fake_seeds = [int(s) for s in rng.choice(SEED_SPACE, request.n_fake, replace=False)]
    disjoint = "not checked"
    trained = training_records(catalog, model_tags)
    if trained is not None:
        found = overlap(trained, records)
        disjoint = f"{found} (reference {request.reference} vs training selection of {model['name']}/{model['version']})"
        if request.require_disjoint and not found.disjoint:
            raise BadInput(f"--require-disjoint: reference {request.reference!r} shares data with the training "
                           f"selection of {model['name']}/{model['version']}: {found}", field="reference")
    elif request.require_disjoint:
        raise BadInput(f"--require-disjoint: {model['name']}/{model['version']} has no dataset lineage tags "
                       "(dataset, dataset.selection), so disjointness cannot be checked", field="reference")
    return Plan(request, dict(model), str(manifest.ref), selector, reals, fake_seeds, seed, disjoint)


def freeze(plan: Plan, fakes: Sequence[np.ndarray], catalog: Catalog, studies: StudyStore,
           progress: Callable[[str], None] = lambda _: None) -> CreatedStudy:
    """Re-encode and write every image, the truth, the readers and their tokens.

    ``fakes[i]`` is the image of ``plan.fake_seeds[i]``; real pixels are read from the catalog
    (hash-verified).
    """
    request = plan.request
    if len(fakes) != len(plan.fake_seeds):
        raise BadInput(f"{len(fakes)} rendered fakes for {len(plan.fake_seeds)} seeds")
    study_id = new_study_id()
    real_pixels = catalog.read_pixels(plan.reals)
    truth: dict[str, dict[str, Any]] = {}
    blobs: dict[str, bytes] = {}
    for record, pixels in zip(plan.reals, real_pixels, strict=True):
        iid = new_image_id()
        blobs[iid] = enc.study_png(pixels, request.size)
        truth[iid] = {"truth": "real", "sha256": record.sha256, "patient_id": record.patient_id,
                      "label": record.label_name, "source_path": record.source_path,
                      "native_size": [int(record.height), int(record.width)]}
    for seed, pixels in zip(plan.fake_seeds, fakes, strict=True):
        iid = new_image_id()
        arr = np.asarray(pixels)
        arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
        blobs[iid] = enc.study_png(arr, request.size)
        truth[iid] = {"truth": "synthetic", "seed": seed, "n": 1, "class": request.cls,
                      "native_size": list(arr.shape[:2])}
    progress(f"study {study_id}: writing {len(blobs)} images of {request.size}x{request.size}")
    store = studies.store
    for iid, data in blobs.items():
        store.put_bytes(studies.key(study_id, "images", f"{iid}.png"), data, content_type="image/png")
    readers = request.reader_list()
    tokens = {r.reader_id: secrets.token_urlsafe(24) for r in readers}
    study = Study(
        study_id=study_id, created_at=time.time(), model=plan.model,
        reference={"dataset": plan.dataset, "selector": plan.selector, "given": request.reference},
        n_real=request.n_real, n_fake=request.n_fake, size=request.size, time_limit_s=request.time_limit_s,
        seed=plan.seed, readers=readers, images=sorted(blobs), groups=request.groups or {"reader": request.readers},
        title=request.title, encoding=enc.ENCODING, disjoint=plan.disjoint,
    )
    studies.put_json(studies.key(study_id, "truth.json"), {
        "study_id": study_id, "images": truth,
        "sha256": {iid: hashlib.sha256(data).hexdigest() for iid, data in blobs.items()},
    })
    studies.put_json(studies.key(study_id, "readers.json"), {
        "study_id": study_id, "readers": {r.reader_id: {"group": r.group, "token": tokens[r.reader_id]} for r in readers},
    })
    for rid, token in tokens.items():
        studies.put_json(studies.token_key(token), {"study_id": study_id, "reader_id": rid})
    studies.put_json(studies.key(study_id, "study.json"), study.to_json())  # last: the study exists once complete
    return CreatedStudy(study, tokens)
