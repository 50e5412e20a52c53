"""The shard task: one Ray task writes one shard object of a batch (or finds it written).

Shard ``k`` of class ``c`` is ``sampler.generate(count, shard_seed, label=c)`` (the seed rule
is in :mod:`services.batches.ids`); an image + mask generator's shard also holds the
``masks`` (``sampler.generate_pairs``, same latents, see :mod:`training.nets.masks`). A shard
object that already exists with the expected metadata (same batch, shard seed and count, and
its content sha256) is skipped, which makes Ray's task retries and resubmission cheap.

Failures: shard tasks use Ray's ``max_retries`` (a killed worker) and ``retry_exceptions``
(an ordinary exception); a shard that still fails fails the batch, which a resubmission
resumes. Test hook: ``SYNTHRAY_BATCH_FAIL_ONCE=<shard index>`` (or ``submit(fail_once=…)``)
kills that shard's first attempt with ``os._exit``; a marker object under
``_test-hooks/batches/{batch_id}/`` makes "once" hold across worker processes.

``training`` (torch) is imported inside the tasks only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from typing import Any

import ray

from infra.errors import BadInput
from infra.object_store import ObjectNotFoundError, ObjectStore
from infra.settings import Settings
from services.batches.ids import Job, Shard, base_metadata, fail_once_key
from services.serving.packaging import to_npz

FAIL_ONCE_ENV = "SYNTHRAY_BATCH_FAIL_ONCE"  # test hook, see the module docstring
SHARD_MAX_RETRIES = 3
_SAMPLERS: dict[tuple[str, str], Any] = {}  # per worker process: tasks of one batch reuse the loaded generator
_INDEXES: dict[tuple[str, str], Any] = {}  # and its near-copy index


def _sampler(uri: str, settings: Settings):
    key = (uri, settings.mlflow_tracking_uri)
    if key not in _SAMPLERS:
        from training.registry.generators import load_generator

        _SAMPLERS.clear()  # one generator per worker is enough; do not hoard memory
        _SAMPLERS[key] = load_generator(uri, settings)
    return _SAMPLERS[key]


@ray.remote(num_cpus=1, max_retries=SHARD_MAX_RETRIES, retry_exceptions=True)
def describe(uri: str, settings: Settings) -> dict[str, Any]:
    """What the coordinator must know about a generator before planning per_class shards."""
    sampler = _sampler(uri, settings)
    return {"conditional": bool(sampler.conditional), "num_classes": getattr(sampler, "num_classes", None),
            "paired": bool(getattr(sampler, "paired", False))}


def _index(uri: str, settings: Settings):
    key = (uri, settings.mlflow_tracking_uri)
    if key not in _INDEXES:
        from training.registry.privacy import load_index

        index = load_index(uri, settings)
        if index is None:
            raise BadInput(f"{uri} has no near-copy index; submit with filter=none", field="filter")
        _INDEXES.clear()
        _INDEXES[key] = index
    return _INDEXES[key]


def _images(job: Job, shard: Shard) -> tuple[Any, dict[str, Any] | None, Any]:
    """The shard's images, when filtered the filter's report, and an image + mask generator's masks."""
    sampler = _sampler(job.model.uri, job.settings)
    if job.filter != "near-copy":
        images, masks = sampler.generate_pairs(shard.count, shard.seed, label=shard.label)
        return images, None, masks
    from training.evaluate.nearcopy import embedder, filtered_generate

    index = _index(job.model.uri, job.settings)
    images, report = filtered_generate(sampler, shard.count, shard.seed, index, embedder(index, job.settings),
                                       shard.label, job.filter_percentile or 1.0)
    return images, report.as_dict(), None


def _existing(store: ObjectStore, job: Job, shard: Shard) -> dict[str, Any] | None:
    """The recorded result of a shard already written with the expected metadata, else None."""
    try:
        meta = store.head(shard.key).get("Metadata", {})
    except ObjectNotFoundError:
        return None
    expected = {"batch-id": job.batch_id, "shard-seed": str(shard.seed), "count": str(shard.count),
                "model-version": str(job.model.version)}
    if any(meta.get(k) != v for k, v in expected.items()) or not meta.get("sha256"):
        return None
    near_copy = None
    if job.filter == "near-copy":  # the report rides in the shard's own manifest (S3 metadata is 2 KB at most)
        from services.serving.packaging import read_manifest

        near_copy = _near_copy_row(read_manifest(store.get_bytes(shard.key))["filter"])
    return _result(shard, meta["sha256"], meta.get("pixels-sha256", ""), int(meta.get("bytes", 0)),
                   json.loads(meta.get("shape", "[]")), reused=True, near_copy=near_copy)


def _near_copy_row(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("rejected", "rejected_rows", "replacement_seed", "rejected_draws")}


def _result(shard: Shard, sha256: str, pixels: str, size: int, shape: list[int], reused: bool,
            near_copy: dict[str, Any] | None = None) -> dict[str, Any]:
    row = {"index": shard.index, "key": shard.key, "class": shard.label, "k": shard.k, "count": shard.count,
           "offset": shard.offset, "shard_seed": shard.seed, "sha256": sha256, "sha256_pixels": pixels,
           "bytes": size, "shape": shape, "reused": reused}
    if near_copy is not None:  # rejected count, rows and replacement-stream positions (re-derivable)
        row["near_copy"] = near_copy
    return row


def _maybe_fail_once(store: ObjectStore, job: Job, shard: Shard, fail_once: int | None) -> None:
    """TEST HOOK ONLY: kill this worker on the shard's first attempt (see FAIL_ONCE_ENV).

    The marker object is written before dying, so the retry (in any process) goes through.
    """
    if fail_once is None or fail_once != shard.index:
        return
    marker = fail_once_key(job.batch_id, shard.index)
    if store.exists(marker):
        return
    store.put_bytes(marker, b"killed once by the SYNTHRAY_BATCH_FAIL_ONCE test hook\n")
    print(f"batch {job.batch_id}: test hook {FAIL_ONCE_ENV} kills the worker of shard {shard.index}",
          file=sys.stderr, flush=True)  # os._exit skips logging's flush
    os._exit(1)


def shard_threads(shard_cpus: float, concurrent_per_node: int) -> int:
    """torch threads for a shard task: the node's usable CPUs shared among the shard tasks that
    run on it at once, and never fewer than the CPUs Ray reserved for it.

    Ray starts a task with ``OMP_NUM_THREADS`` = its reserved CPUs, which left a 1-CPU shard on
    one thread while the other core of a 2-CPU head sat idle (the Serve app reserves 0.7 CPU
    there but is quiet during a batch): half the speed of generation alone (docs/benchmarks.md).
    """
    from infra.cpus import available_cpus

    return max(math.ceil(shard_cpus), available_cpus() // max(1, concurrent_per_node))


@ray.remote(num_cpus=1, max_retries=SHARD_MAX_RETRIES, retry_exceptions=True)
def generate_shard(job: Job, shard: Shard, fail_once: int | None = None, concurrent_per_node: int = 0
                   ) -> dict[str, Any]:
    """Write one shard (or find it already written); returns its manifest row.

    ``concurrent_per_node``: how many shard tasks the coordinator expects on one node at once
    (sets torch's threads, :func:`shard_threads`); 0 leaves Ray's thread count.
    """
    store = ObjectStore(job.settings)
    if (done := _existing(store, job, shard)) is not None:
        return done
    _maybe_fail_once(store, job, shard, fail_once)
    if concurrent_per_node:
        from infra.cpus import set_torch_threads

        set_torch_threads(shard_threads(job.settings.batch_shard_cpus, concurrent_per_node))
    images, report, masks = _images(job, shard)
    meta = {"model": job.model.name, "version": str(job.model.version), "run_id": job.model.run_id,
            "seed": job.seed, "batch_id": job.batch_id, "shard": shard.index, "class": shard.label, "k": shard.k,
            "shard_seed": shard.seed, "offset": shard.offset,
            "call": "sampler.generate(count, shard_seed, label=class)"}
    if masks is not None:
        meta |= {"call": "sampler.generate_pairs(count, shard_seed, label=class)",
                 "mask_classes": list(_sampler(job.model.uri, job.settings).mask_classes)}
    near_copy = None
    if report is not None:
        near_copy = _near_copy_row(report)
        meta |= {"call": "filtered_generate(sampler, count, shard_seed, index, label=class)", "filter": report}
    # at rest for good, deflated at zlib level 1 (packaging.NPZ_DEFLATE_LEVEL)
    data = to_npz(images, meta, compress=True, masks=masks)
    sha, pixels = hashlib.sha256(data).hexdigest(), hashlib.sha256(images.tobytes()).hexdigest()
    shape = list(images.shape[1:])
    store.put_bytes(shard.key, data, metadata=base_metadata(job) | {
        "shard": str(shard.index), "class": shard.class_name, "k": str(shard.k), "count": str(shard.count),
        "shard-seed": str(shard.seed), "sha256": sha, "pixels-sha256": pixels, "bytes": str(len(data)),
        "shape": json.dumps(shape)} | ({"near-copy-rejected": str(near_copy["rejected"])} if near_copy else {}))
    return _result(shard, sha, pixels, len(data), shape, reused=False, near_copy=near_copy)


def check_classes(job: Job, info: dict[str, Any]) -> None:
    """per_class needs a conditional generator that knows every requested class; the near-copy
    filter does not handle an image + mask generator's masks yet."""
    if job.filter == "near-copy" and info.get("paired"):
        raise BadInput(f"{job.model.uri} makes image + mask pairs; the near-copy filter does not handle masks yet, "
                       "submit with filter=none", field="filter")
    if job.per_class is None:
        return
    if not info["conditional"]:
        raise BadInput(f"per_class needs a conditional generator; {job.model.uri} is unconditional")
    k = info["num_classes"]
    if bad := [c for c, _ in job.per_class if c >= k]:
        raise BadInput(f"per_class names class(es) {bad} outside {job.model.uri}'s classes 0..{k - 1}")
