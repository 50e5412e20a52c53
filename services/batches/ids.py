"""Identity, seeds and object layout of a batch: pure functions and plain data, no I/O.

The HTTP ingress imports this (through :mod:`services.batches.api`), so it stays torch-free.

Identity (idempotent retries)
    ``batch_id = "b-" + sha256(canonical JSON of {model name, concrete version, n, seed, render layout,
    seed derivation (training.nets.SEED_DERIVATION), per_class})[:20]``: re-POSTing a request returns the same batch. A failed or cancelled
    batch is resumed by submitting it again; an existing batch keeps its recorded shard size.

Seed rule (idempotent over seed ranges)
    The shards of class ``c`` (``c = -1`` without ``per_class``) are numbered ``k = 0, 1, …``;
    all shards hold ``shard_size`` images except each class's last. Shard ``k`` is exactly
    ``sampler.generate(count, shard_seed, label=c or None)`` with ::

        shard_seed = SeedSequence([seed, c + 1, k]).generate_state(1, uint64)[0] & (2**63 - 1)

    so any shard can be regenerated alone, on any worker, byte for byte
    (:mod:`services.batches.shard`). With ``filter=near-copy`` a shard is
    ``filtered_generate(sampler, count, shard_seed, …)`` (:mod:`training.evaluate.nearcopy`): its
    near copies are refilled from the replacement stream of ``shard_seed``, and the manifest lists
    each shard's rejections.

Layout (``s3://{bucket}/``)::

    synthetic/{batch_id}/shards/{class|all}-{k:06d}.npz   services.serving.packaging.to_npz: images + embedded manifest
    synthetic/{batch_id}/manifest.json                    one PUT after every shard exists; never for a cancelled batch
    synthetic/{batch_id}/status.json                      state, progress, error, timestamps

Every object's metadata says ``synthetic=true`` and names the model, its version, run id
and seed (shards add ``shard-seed``, ``shard``, ``class``, ``count``, ``sha256``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from infra.errors import BadInput
from infra.settings import Settings
from training.nets import RENDER_LAYOUT, SEED_DERIVATION
from training.registry.refs import version_uri

NAMESPACE = "synthray"  # Ray namespace of the coordinator actors
PREFIX = "synthetic"
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
BATCH_ID = re.compile(r"^b-[0-9a-f]{20}$")
_SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class BatchModel:
    """A registry model resolved to a concrete version (aliases move; batches must not)."""

    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        return version_uri(self.name, self.version)


@dataclass(frozen=True)
class Shard:
    """One Ray task and one object: ``generate(count, seed, label=label)``."""

    index: int  # position in the batch (plan order), 0-based
    label: int | None  # class index, None without per_class
    k: int  # shard number within its class
    count: int
    offset: int  # batch-wide index of its first image
    seed: int  # shard_seed (see the module docstring)
    key: str

    @property
    def class_name(self) -> str:
        return "all" if self.label is None else str(self.label)


@dataclass(frozen=True)
class Job:
    """Everything a coordinator and its tasks need; pickled into Ray."""

    batch_id: str
    model: BatchModel
    n: int
    seed: int
    per_class: tuple[tuple[int, int], ...] | None
    shard_size: int
    settings: Settings = field(repr=False)
    filter: str = "none"  # "near-copy": each shard is filtered (training.evaluate.nearcopy)
    filter_percentile: float | None = None

    def plan(self) -> list[Shard]:
        return plan_shards(self.batch_id, self.n, self.seed, self.per_class, self.shard_size)


# -- identity, seeds, layout -----------------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def per_class_json(per_class: tuple[tuple[int, int], ...] | None) -> dict[str, int] | None:
    return None if per_class is None else {str(c): n for c, n in per_class}


def normalize_request(n: int, seed: int, per_class: dict[int, int] | None, settings: Settings | None = None
               ) -> tuple[tuple[int, int], ...] | None:
    """Validate the request; per_class as sorted ``(class, count)`` pairs without zero counts."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadInput(f"n must be a positive integer, got {n!r}", field="n")
    if settings is not None and n > settings.batch_max_images:
        raise BadInput(f"n={n} is above the per-batch limit of {settings.batch_max_images} images (batch_max_images)",
                       field="n")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _SEED_MASK:
        raise BadInput(f"seed must be an integer in 0..2**63-1, got {seed!r}", field="seed")
    if per_class is None:
        return None
    if not isinstance(per_class, dict) or not per_class:
        raise BadInput("per_class must be a non-empty mapping {class index: count}", field="per_class")
    pairs: dict[int, int] = {}
    for key, count in per_class.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise BadInput(f"per_class keys must be class indices, got {key!r}", field="per_class") from None
        if label < 0 or label in pairs:
            raise BadInput(f"per_class has an invalid or repeated class index {key!r}", field="per_class")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadInput(f"per_class[{key!r}] must be a non-negative integer, got {count!r}", field="per_class")
        pairs[label] = count
    if sum(pairs.values()) != n:
        raise BadInput(f"per_class counts sum to {sum(pairs.values())}, but n is {n}; they must be equal",
                       field="per_class")
    return tuple(sorted((c, k) for c, k in pairs.items() if k))


def batch_id(model: BatchModel, n: int, seed: int, per_class: dict[int, int] | None, filter: str = "none",
             filter_percentile: float | None = None) -> str:
    """``b-`` + 20 hex of the sha256 of the resolved request; equal requests, equal ids.

    A filtered batch is another batch (other pixels); an unfiltered one keeps the id it always had.
    """
    pairs = normalize_request(n, seed, per_class)
    request = {"model": model.name, "version": str(model.version), "n": n, "seed": seed,
               "per_class": per_class_json(pairs), "render_layout": RENDER_LAYOUT,
               "seed_derivation": SEED_DERIVATION}
    if filter != "none":
        request |= {"filter": filter, "filter_percentile": filter_percentile}
    return "b-" + hashlib.sha256(canonical_json(request)).hexdigest()[:20]


def shard_seed(seed: int, label: int | None, k: int) -> int:
    """The seed of shard ``k`` of class ``label`` (None: unconditional); see the module docstring."""
    c = -1 if label is None else label
    return int(np.random.SeedSequence([seed, c + 1, k]).generate_state(1, np.uint64)[0]) & _SEED_MASK


def prefix(batch_id: str) -> str:
    return f"{PREFIX}/{batch_id}/"


def manifest_key(batch_id: str) -> str:
    return f"{prefix(batch_id)}manifest.json"


def status_key(batch_id: str) -> str:
    return f"{prefix(batch_id)}status.json"


def shard_key(batch_id: str, label: int | None, k: int) -> str:
    return f"{prefix(batch_id)}shards/{'all' if label is None else label}-{k:06d}.npz"


def fail_once_key(batch_id: str, index: int) -> str:
    return f"_test-hooks/batches/{batch_id}/fail-once-{index:06d}"


def plan_shards(batch_id: str, n: int, seed: int, per_class: tuple[tuple[int, int], ...] | None,
                shard_size: int) -> list[Shard]:
    """Every shard of a batch in manifest order: classes ascending, then ``k``."""
    groups = list(per_class) if per_class else [(None, n)]
    shards: list[Shard] = []
    offset = 0
    for label, total in groups:
        for k, start in enumerate(range(0, total, shard_size)):
            count = min(shard_size, total - start)
            shards.append(Shard(index=len(shards), label=label, k=k, count=count, offset=offset,
                                seed=shard_seed(seed, label, k), key=shard_key(batch_id, label, k)))
            offset += count
    return shards


def actor_name(batch_id: str) -> str:
    return f"synthray-batch-{batch_id}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def base_metadata(job: Job) -> dict[str, str]:
    """Object metadata every file of a batch carries."""
    meta = {"synthetic": "true", "batch-id": job.batch_id, "model": job.model.name,
            "model-version": str(job.model.version), "seed": str(job.seed)}
    if job.model.run_id:
        meta["run-id"] = job.model.run_id
    return meta
