"""Large synthetic batches (``POST /v1/batches``): the calls the HTTP route (and any process) makes.

A data team asks for up to millions of images from one registered generator version. The
request is split into shards of ``settings.batch_shard_size`` images; each shard is one Ray
task that writes one ``.npz`` object (:mod:`services.batches.shard`). A detached coordinator
actor per batch (:mod:`services.batches.coordinator`) keeps a bounded number of shard tasks in
flight, records progress in ``status.json`` and publishes the manifest once every shard
exists. Ids, seeds and the object layout are :mod:`services.batches.ids`.

This module: :func:`submit` (idempotent: the id is a hash of the resolved request),
:func:`get_status`, :func:`cancel`, :func:`load_images` and :func:`active_batches`; it also
re-exports the ids, keys and states callers need, so one import serves them.

Errors are :mod:`infra.errors` classes, so the HTTP layer answers by class: an invalid request
is a BadInput naming ``n``, ``seed`` or ``per_class``; an unknown batch :class:`BatchNotFound`
(404), one that has not succeeded :class:`BatchNotReady` (409), a shard failing its sha256
:class:`BatchCorrupt` (500), a coordinator still winding down :class:`BatchBusyError` (503).

torch stays out of this package's imports: the HTTP ingress imports it; tasks import
``training`` lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray

from infra.errors import BadInput, Conflict, NotFound, SynthrayError, Unavailable
from infra.object_store import ObjectStore
from infra.settings import Settings
from services.batches.coordinator import Coordinator, read_status
from services.batches.ids import (
    BATCH_ID,
    CANCELLED,
    FAILED,
    NAMESPACE,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    BatchModel,
    Job,
    Shard,
    actor_name,
    batch_id,
    canonical_json,
    manifest_key,
    normalize_request,
    now_iso,
    plan_shards,
    prefix,
    shard_key,
    shard_seed,
    status_key,
)
from services.batches.shard import FAIL_ONCE_ENV
from services.serving.packaging import read_images

__all__ = [
    "CANCELLED", "FAILED", "QUEUED", "RUNNING", "SUCCEEDED", "TERMINAL",
    "BatchBusyError", "BatchCorrupt", "BatchModel", "BatchNotFound", "BatchNotReady", "Job", "Shard",
    "active_batches", "batch_id", "cancel", "get_status", "load_images", "manifest_key", "plan_shards", "prefix",
    "shard_key", "shard_seed", "status_key", "submit",
]

log = logging.getLogger("synthray.batch")


class BatchBusyError(Unavailable):
    """The batch's coordinator is winding down (cancel in progress or just exiting); retry in a few seconds."""


# The two below are also ValueErrors: ``load_images`` raised ValueError for them before the error
# vocabulary existed, and callers that catch that keep working.
class BatchNotFound(NotFound, ValueError):
    """No batch has this id (HTTP 404)."""


class BatchNotReady(Conflict, ValueError):
    """The batch exists but has not succeeded (queued, running, failed, cancelled): no images yet (HTTP 409)."""


class BatchCorrupt(SynthrayError):
    """A stored shard does not match its manifest's sha256: the store's problem, not the client's (HTTP 500)."""

    http_status = 500


# -- the API the route calls -----------------------------------------------------------------
def _connect(settings: Settings) -> None:
    from infra.ray_runtime import connect

    connect(settings)


def _actor(batch_id: str):
    try:
        return ray.get_actor(actor_name(batch_id), namespace=NAMESPACE)
    except ValueError:
        return None


def _actor_status(batch_id: str) -> dict[str, Any] | None:
    """The live coordinator's status; None when there is none (or it just exited)."""
    actor = _actor(batch_id)
    if actor is None:
        return None
    try:
        return ray.get(actor.status.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def _finish(status: dict[str, Any], settings: Settings, live: bool) -> dict[str, Any]:
    """Add the manifest URI and presigned URLs (succeeded only); flag a lost coordinator."""
    status = dict(status)
    if not live and status["state"] not in TERMINAL:
        # status.json says "running" but no coordinator exists (Ray restarted, actor killed).
        status |= {"state": FAILED, "error": "the batch's coordinator is gone (Ray restarted, or the object store "
                                             "was down when it tried to record its end); submit the same request "
                                             "again to resume it"}
    store = ObjectStore(settings)
    bid = status["batch_id"]
    status |= {"prefix": store.uri(prefix(bid)), "status_uri": store.uri(status_key(bid)),
               "manifest_uri": None, "urls": None}
    if status["state"] == SUCCEEDED:
        ttl = settings.batch_url_ttl_s
        shards = plan_shards(bid, status["n"], status["seed"], _pairs(status["per_class"]), status["shard_size"])
        status["manifest_uri"] = store.uri(manifest_key(bid))
        status["urls"] = {"expires_in_s": ttl, "manifest": store.presign_get(manifest_key(bid), ttl),
                          "shards": [store.presign_get(s.key, ttl) for s in shards]}
    return status


def _pairs(per_class: dict[str, int] | None) -> tuple[tuple[int, int], ...] | None:
    return None if per_class is None else tuple(sorted((int(c), n) for c, n in per_class.items()))


def _fail_once_from_env() -> int | None:
    value = os.environ.get(FAIL_ONCE_ENV, "").strip()
    return int(value) if value else None


def _start(actor, batch_id: str) -> dict[str, Any]:
    """Ask a coordinator to run (a no-op if it runs); RayActorError if it has exited."""
    status = ray.get(actor.start.remote(), timeout=120)
    if status is None:
        raise BatchBusyError(f"batch {batch_id} was cancelled or failed just now and its coordinator is "
                             f"shutting down; submit again in a few seconds to resume it")
    return status


def submit(model: BatchModel, n: int, seed: int, per_class: dict[int, int] | None, settings: Settings,
           *, fail_once: int | None = None, filter: str = "none", filter_percentile: float | None = None) -> dict[str, Any]:
    """Start (or find) the batch for this request; its status, at once (the work runs in Ray).

    Idempotent: a running or succeeded batch is returned as is; a failed or cancelled one
    is resumed (shards already written are kept). Raises :class:`~infra.errors.BadInput`
    naming the field (``n``, ``seed``, ``per_class``) for an invalid request (``per_class`` not
    summing to ``n``, ``n`` above ``batch_max_images``), BatchBusyError when the batch's previous
    coordinator is still shutting down.

    Args:
        fail_once: TEST HOOK: shard index whose first attempt is killed (default: the
            ``SYNTHRAY_BATCH_FAIL_ONCE`` variable of this process).
        filter, filter_percentile: the near-copy filter, resolved (the ingress checked the
            version has an index): every shard is filtered and the manifest counts rejections.
    """
    pairs = normalize_request(n, seed, per_class, settings)
    if filter not in ("none", "near-copy"):
        raise BadInput(f"filter must be none or near-copy, got {filter!r}", field="filter")
    bid = batch_id(model, n, seed, per_class, filter, filter_percentile)
    _connect(settings)
    if (actor := _actor(bid)) is not None:
        with contextlib.suppress(ray.exceptions.RayActorError):  # exited between lookup and call: status.json decides
            return _finish(_start(actor, bid), settings, live=True)
    store = ObjectStore(settings)
    previous = read_status(store, bid)
    if previous is not None and previous["state"] == SUCCEEDED:
        return _finish(previous, settings, live=False)
    from infra.ray_runtime import worker_env

    job = Job(batch_id=bid, model=model, n=n, seed=seed, per_class=pairs, settings=settings,
              shard_size=int(previous["shard_size"]) if previous else settings.batch_shard_size,
              filter=filter, filter_percentile=filter_percentile)
    actor = Coordinator.options(
        name=actor_name(bid), namespace=NAMESPACE, lifetime="detached", num_cpus=0, get_if_exists=True,
        runtime_env={"env_vars": worker_env(settings)},
    ).remote(job, _fail_once_from_env() if fail_once is None else fail_once)
    try:
        status = _start(actor, bid)
    except ray.exceptions.RayActorError as exc:  # get_if_exists found the previous coordinator as it exited
        raise BatchBusyError(f"batch {bid}: its previous coordinator is shutting down; submit again shortly") from exc
    log.info("batch %s: submitted (%d images, %d shards)", bid, n, status["progress"]["shards_total"])
    return _finish(status, settings, live=True)


def get_status(batch_id: str, settings: Settings) -> dict[str, Any] | None:
    """Status of a batch from any process: the live coordinator, else status.json; None if unknown.

    Fields: batch_id, state (queued|running|succeeded|failed|cancelled), error, model
    {name, version, run_id, uri}, n, seed, per_class, shard_size, progress {shards_done,
    shards_total, shards_reused, images_done, images_total, images_per_s}, created_at,
    started_at, updated_at, finished_at, runs, prefix, status_uri, and — when succeeded —
    manifest_uri and urls {manifest, shards[], expires_in_s} (presigned GETs); else None.
    """
    if not BATCH_ID.match(batch_id or ""):
        return None
    _connect(settings)
    if (status := _actor_status(batch_id)) is not None:
        return _finish(status, settings, live=True)
    status = read_status(ObjectStore(settings), batch_id)
    return None if status is None else _finish(status, settings, live=False)


def active_batches(settings: Settings) -> list[str]:
    """Ids of the batches whose coordinator is alive (queued or running), from Ray's named actors."""
    _connect(settings)
    prefix = actor_name("")
    return sorted(a["name"].removeprefix(prefix) for a in ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == NAMESPACE and a["name"].startswith(prefix))


def cancel(batch_id: str, settings: Settings) -> dict[str, Any] | None:
    """Stop a batch: pending shards are never started, running ones are cancelled (``ray.cancel``).

    The manifest is not published. A finished batch is left as it is; its status is
    returned. None for an unknown id.
    """
    if not BATCH_ID.match(batch_id or ""):
        return None
    _connect(settings)
    if (actor := _actor(batch_id)) is not None:
        try:
            return _finish(ray.get(actor.cancel.remote(), timeout=30), settings, live=True)
        except ray.exceptions.RayActorError:
            pass  # it just finished: status.json has the final word
    store = ObjectStore(settings)
    status = read_status(store, batch_id)
    if status is None:
        return None
    if status["state"] not in TERMINAL:  # a coordinator that was lost: record the cancel
        status |= {"state": CANCELLED, "finished_at": now_iso(), "updated_at": now_iso()}
        store.put_bytes(status_key(batch_id), canonical_json(status), content_type="application/json",
                        metadata={"synthetic": "true", "batch-id": batch_id})
    return _finish(status, settings, live=False)


def _manifest(batch_id: str, settings: Settings) -> dict[str, Any]:
    status = get_status(batch_id, settings)
    if status is None:
        raise BatchNotFound(f"unknown batch {batch_id!r}", field="batch_id")
    if status["state"] != SUCCEEDED:
        raise BatchNotReady(f"batch {batch_id} is {status['state']}, not succeeded; its images cannot be loaded yet",
                            field="batch_id")
    return json.loads(ObjectStore(settings).get_bytes(manifest_key(batch_id)))


def _shard_images(batch_id: str, settings: Settings, limit: int | None) -> Iterator[np.ndarray]:
    rows = _manifest(batch_id, settings)["shards"]
    store = ObjectStore(settings)
    keys, total = [], 0
    for row in rows:
        if limit is not None and total >= limit:
            break
        keys.append(row["key"])
        total += row["count"]
    by_key = {row["key"]: row for row in rows}
    for key, data in store.get_many(keys):
        if hashlib.sha256(data).hexdigest() != by_key[key]["sha256"]:
            raise BatchCorrupt(f"{store.uri(key)} does not match the sha256 in batch {batch_id}'s manifest")
        yield read_images(data)


def load_images(batch_id: str, settings: Settings, limit: int | None = None) -> np.ndarray:
    """uint8 images of a succeeded batch in manifest order (at most ``limit``), each shard verified.

    Raises BatchNotFound (404) for an unknown batch, BatchNotReady (409) for one that has not
    succeeded (both also ValueErrors), BatchCorrupt (500) for a shard failing its sha256.
    """
    if limit is not None and limit < 1:
        raise BadInput(f"limit must be positive, got {limit}", field="limit")
    images = np.concatenate(list(_shard_images(batch_id, settings, limit)))
    return images if limit is None else images[:limit]
