"""Large synthetic batches (``POST /v1/batches``): Ray tasks write shards and a manifest to S3.

A data team asks for up to millions of images from one registered generator version. The
request is split into shards of ``settings.batch_shard_size`` images; each shard is one Ray
task that writes one ``.npz`` object. A detached, named coordinator actor per batch
(namespace ``synthray``, name ``synthray-batch-{id}``, ``num_cpus=0``) keeps a bounded number
of shard tasks in flight, records progress in ``status.json`` and publishes the manifest
once every shard exists. It exits when the batch ends; its status stays in S3, so any
process can answer ``GET /v1/batches/{id}``.

Identity (idempotent retries)
    ``batch_id = "b-" + sha256(canonical JSON of {model name, concrete version, n, seed, render layout,
    seed derivation (infra.seeds.SEED_DERIVATION), per_class})[:20]``: re-POSTing a request returns the same batch. A failed or cancelled
    batch is resumed by submitting it again; an existing batch keeps its recorded shard size.

Seed rule (idempotent over seed ranges)
    The shards of class ``c`` (``c = -1`` without ``per_class``) are numbered ``k = 0, 1, …``;
    all shards hold ``shard_size`` images except each class's last. Shard ``k`` is exactly
    ``sampler.generate(count, shard_seed, label=c or None)`` with ::

        shard_seed = SeedSequence([seed, c + 1, k]).generate_state(1, uint64)[0] & (2**63 - 1)

    so any shard can be regenerated alone, on any worker, byte for byte. A shard object that
    already exists with the expected metadata (same batch, shard seed and count, and its
    content sha256) is skipped, which makes Ray's task retries and resubmission cheap.

Layout (``s3://{bucket}/``)::

    synthetic/{batch_id}/shards/{class|all}-{k:06d}.npz   services.serving.packaging.to_npz: images + embedded manifest
    synthetic/{batch_id}/manifest.json                    one PUT after every shard exists; never for a cancelled batch
    synthetic/{batch_id}/status.json                      state, progress, error, timestamps

Every object's metadata says ``synthetic=true`` and names the model, its version, run id
and seed (shards add ``shard-seed``, ``shard``, ``class``, ``count``, ``sha256``).

Failures: shard tasks use Ray's ``max_retries`` (a killed worker) and ``retry_exceptions``
(an ordinary exception); a shard that still fails fails the batch, which a resubmission
resumes. Test hook: ``SYNTHRAY_BATCH_FAIL_ONCE=<shard index>`` (or ``submit(fail_once=…)``)
kills that shard's first attempt with ``os._exit``; a marker object under
``_test-hooks/batches/{batch_id}/`` makes "once" hold across worker processes.

torch stays out of this module's imports: the HTTP ingress imports it; tasks import
``training`` lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import ray

from infra.object_store import ObjectNotFoundError, ObjectStore
from infra.settings import Settings
from services.serving.packaging import SYNTHETIC_NOTICE, read_images, to_npz
from training.nets import RENDER_LAYOUT, SEED_DERIVATION
from infra.errors import BadInput, Unavailable

log = logging.getLogger("synthray.batch")

NAMESPACE = "synthray"
PREFIX = "synthetic"
FAIL_ONCE_ENV = "SYNTHRAY_BATCH_FAIL_ONCE"  # test hook, see the module docstring
SHARD_MAX_RETRIES = 3
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
_ID = re.compile(r"^b-[0-9a-f]{20}$")
_SEED_MASK = (1 << 63) - 1
_STATUS_EVERY_S = 1.0  # status.json is rewritten at most this often while shards finish (and at every state change)


class BatchBusyError(Unavailable):
    """The batch's coordinator is winding down (cancel in progress or just exiting); retry in a few seconds."""


@dataclass(frozen=True)
class BatchModel:
    """A registry model resolved to a concrete version (aliases move; batches must not)."""

    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


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

    def plan(self) -> list[Shard]:
        return plan_shards(self.batch_id, self.n, self.seed, self.per_class, self.shard_size)


# -- identity, seeds, layout -----------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _per_class_json(per_class: tuple[tuple[int, int], ...] | None) -> dict[str, int] | None:
    return None if per_class is None else {str(c): n for c, n in per_class}


def _normalize(n: int, seed: int, per_class: dict[int, int] | None, settings: Settings | None = None
               ) -> tuple[tuple[int, int], ...] | None:
    """Validate the request; per_class as sorted ``(class, count)`` pairs without zero counts."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadInput(f"n must be a positive integer, got {n!r}")
    if settings is not None and n > settings.batch_max_images:
        raise BadInput(f"n={n} is above the per-batch limit of {settings.batch_max_images} images (batch_max_images)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _SEED_MASK:
        raise BadInput(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    if per_class is None:
        return None
    if not isinstance(per_class, dict) or not per_class:
        raise BadInput("per_class must be a non-empty mapping {class index: count}")
    pairs: dict[int, int] = {}
    for key, count in per_class.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise BadInput(f"per_class keys must be class indices, got {key!r}") from None
        if label < 0 or label in pairs:
            raise BadInput(f"per_class has an invalid or repeated class index {key!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadInput(f"per_class[{key!r}] must be a non-negative integer, got {count!r}")
        pairs[label] = count
    if sum(pairs.values()) != n:
        raise BadInput(f"per_class counts sum to {sum(pairs.values())}, but n is {n}; they must be equal")
    return tuple(sorted((c, k) for c, k in pairs.items() if k))


def batch_id(model: BatchModel, n: int, seed: int, per_class: dict[int, int] | None) -> str:
    """``b-`` + 20 hex of the sha256 of the resolved request; equal requests, equal ids."""
    pairs = _normalize(n, seed, per_class)
    request = {"model": model.name, "version": str(model.version), "n": n, "seed": seed,
               "per_class": _per_class_json(pairs), "render_layout": RENDER_LAYOUT,
               "seed_derivation": SEED_DERIVATION}
    return "b-" + hashlib.sha256(_canonical(request)).hexdigest()[:20]


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


def _fail_once_key(batch_id: str, index: int) -> str:
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


def _actor_name(batch_id: str) -> str:
    return f"synthray-batch-{batch_id}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _base_metadata(job: Job) -> dict[str, str]:
    """Object metadata every file of a batch carries."""
    meta = {"synthetic": "true", "batch-id": job.batch_id, "model": job.model.name,
            "model-version": str(job.model.version), "seed": str(job.seed)}
    if job.model.run_id:
        meta["run-id"] = job.model.run_id
    return meta


# -- shard tasks -----------------------------------------------------------------------------
_SAMPLERS: dict[tuple[str, str], Any] = {}  # per worker process: tasks of one batch reuse the loaded generator


def _sampler(uri: str, settings: Settings):
    key = (uri, settings.mlflow_tracking_uri)
    if key not in _SAMPLERS:
        from training.registry.generators import load_generator

        _SAMPLERS.clear()  # one generator per worker is enough; do not hoard memory
        _SAMPLERS[key] = load_generator(uri, settings)
    return _SAMPLERS[key]


@ray.remote(num_cpus=1, max_retries=SHARD_MAX_RETRIES, retry_exceptions=True)
def _describe(uri: str, settings: Settings) -> dict[str, Any]:
    """What the coordinator must know about a generator before planning per_class shards."""
    sampler = _sampler(uri, settings)
    return {"conditional": bool(sampler.conditional), "num_classes": getattr(sampler, "num_classes", None)}


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
    return _result(shard, meta["sha256"], meta.get("pixels-sha256", ""), int(meta.get("bytes", 0)),
                   json.loads(meta.get("shape", "[]")), reused=True)


def _result(shard: Shard, sha256: str, pixels: str, size: int, shape: list[int], reused: bool) -> dict[str, Any]:
    return {"index": shard.index, "key": shard.key, "class": shard.label, "k": shard.k, "count": shard.count,
            "offset": shard.offset, "shard_seed": shard.seed, "sha256": sha256, "sha256_pixels": pixels,
            "bytes": size, "shape": shape, "reused": reused}


def _maybe_fail_once(store: ObjectStore, job: Job, shard: Shard, fail_once: int | None) -> None:
    """TEST HOOK ONLY: kill this worker on the shard's first attempt (see FAIL_ONCE_ENV).

    The marker object is written before dying, so the retry (in any process) goes through.
    """
    if fail_once is None or fail_once != shard.index:
        return
    marker = _fail_once_key(job.batch_id, shard.index)
    if store.exists(marker):
        return
    store.put_bytes(marker, b"killed once by the SYNTHRAY_BATCH_FAIL_ONCE test hook\n")
    print(f"batch {job.batch_id}: test hook {FAIL_ONCE_ENV} kills the worker of shard {shard.index}",
          file=sys.stderr, flush=True)  # os._exit skips logging's flush
    os._exit(1)


@ray.remote(num_cpus=1, max_retries=SHARD_MAX_RETRIES, retry_exceptions=True)
def _generate_shard(job: Job, shard: Shard, fail_once: int | None = None) -> dict[str, Any]:
    """Write one shard (or find it already written); returns its manifest row."""
    store = ObjectStore(job.settings)
    if (done := _existing(store, job, shard)) is not None:
        return done
    _maybe_fail_once(store, job, shard, fail_once)
    images = _sampler(job.model.uri, job.settings).generate(shard.count, shard.seed, label=shard.label)
    meta = {"model": job.model.name, "version": str(job.model.version), "run_id": job.model.run_id,
            "seed": job.seed, "batch_id": job.batch_id, "shard": shard.index, "class": shard.label, "k": shard.k,
            "shard_seed": shard.seed, "offset": shard.offset,
            "call": "sampler.generate(count, shard_seed, label=class)"}
    data = to_npz(images, meta, compress=True)  # at rest for good: deflate is ~1 % of a 210² shard's forward
    sha, pixels = hashlib.sha256(data).hexdigest(), hashlib.sha256(images.tobytes()).hexdigest()
    shape = list(images.shape[1:])
    store.put_bytes(shard.key, data, metadata=_base_metadata(job) | {
        "shard": str(shard.index), "class": shard.class_name, "k": str(shard.k), "count": str(shard.count),
        "shard-seed": str(shard.seed), "sha256": sha, "pixels-sha256": pixels, "bytes": str(len(data)),
        "shape": json.dumps(shape)})
    return _result(shard, sha, pixels, len(data), shape, reused=False)


def _check_classes(job: Job, info: dict[str, Any]) -> None:
    """per_class needs a conditional generator that knows every requested class."""
    if job.per_class is None:
        return
    if not info["conditional"]:
        raise BadInput(f"per_class needs a conditional generator; {job.model.uri} is unconditional")
    k = info["num_classes"]
    if bad := [c for c, _ in job.per_class if c >= k]:
        raise BadInput(f"per_class names class(es) {bad} outside {job.model.uri}'s classes 0..{k - 1}")


def _reraise(done: set[asyncio.Future]) -> None:
    """Surface a coordinator error (e.g. S3 unreachable while recording a shard); shard failures are handled."""
    for future in done:
        future.result()


# -- the coordinator -------------------------------------------------------------------------
@ray.remote
class _Coordinator:
    """One run of one batch: plans, keeps shard tasks in flight, reports, publishes, exits.

    An asyncio actor, so ``status`` and ``cancel`` are answered while shards run.
    """

    def __init__(self, job: Job, fail_once: int | None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        log.setLevel(logging.INFO)
        self.job, self.fail_once = job, fail_once
        self.store = ObjectStore(job.settings)
        self.shards = job.plan()
        self.results: dict[int, dict[str, Any]] = {}
        self.inflight: dict[int, ray.ObjectRef] = {}
        self.task: asyncio.Task | None = None
        self.generated = self.images_done = self.reused = 0  # running totals: 10^4 shards must not cost O(n^2)
        self.t0 = time.monotonic()
        self.last_write = 0.0
        previous = _read_status(self.store, job.batch_id) or {}
        self.state: dict[str, Any] = {
            "batch_id": job.batch_id, "state": QUEUED, "error": None,
            "model": {"name": job.model.name, "version": str(job.model.version), "run_id": job.model.run_id,
                      "uri": job.model.uri},
            "n": job.n, "seed": job.seed, "per_class": _per_class_json(job.per_class), "shard_size": job.shard_size,
            "progress": {}, "created_at": previous.get("created_at") or _now(), "started_at": None,
            "updated_at": None, "finished_at": None, "runs": int(previous.get("runs", 0)) + 1,
        }
        self._progress()

    # -- remote API --
    async def start(self) -> dict[str, Any] | None:
        """Begin the run (idempotent while it runs); the current status, None while winding down."""
        if self.task is None:
            self._save(force=True)
            self.task = asyncio.get_running_loop().create_task(self._run())
        elif self.state["state"] in (FAILED, CANCELLED):
            return None  # in-flight tasks are being cancelled; this actor exits next
        return self.status()

    def status(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.state))

    async def cancel(self) -> dict[str, Any]:
        if self.state["state"] not in TERMINAL:
            self._stop(CANCELLED, None)
        return self.status()

    # -- the run --
    async def _run(self) -> None:
        try:
            _check_classes(self.job, await _describe.remote(self.job.model.uri, self.job.settings))
            if self.state["state"] == QUEUED:
                self.state |= {"state": RUNNING, "started_at": _now()}
                self._save(force=True)
            await self._shards()
            if self.state["state"] == RUNNING:
                self._publish()
                self.state |= {"state": SUCCEEDED, "finished_at": _now()}
        except Exception as exc:  # noqa: BLE001 - any error ends the batch as failed, with its text
            if self.state["state"] not in TERMINAL:
                self._stop(FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            try:
                self._save(force=True)
            finally:
                if self.state["state"] == SUCCEEDED:
                    log.info("batch %s: succeeded, manifest published", self.job.batch_id)
                try:
                    ray.actor.exit_actor()  # marks the actor to exit; status lives on in status.json
                except ray.exceptions.AsyncioActorExit:
                    pass

    async def _shards(self) -> None:
        """Bounded concurrency: about two tasks per CPU in flight, the rest not yet submitted."""
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: set[asyncio.Future] = set()
        for shard in self.shards:
            if self.state["state"] != RUNNING:
                break
            if len(pending) >= limit:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                _reraise(done)
            if self.state["state"] == RUNNING:
                pending.add(asyncio.ensure_future(self._shard(shard)))
        if pending:
            _reraise((await asyncio.wait(pending))[0])

    async def _shard(self, shard: Shard) -> None:
        ref = _generate_shard.options(name=f"{self.job.batch_id}/{shard.index}",
                                      num_cpus=self.job.settings.batch_shard_cpus).remote(
            self.job, shard, self.fail_once)
        self.inflight[shard.index] = ref
        try:
            result = await ref
        except ray.exceptions.TaskCancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - Ray's retries are spent: the batch fails
            if self.state["state"] == RUNNING:
                self._stop(FAILED, f"shard {shard.index} ({shard.key}) failed after {SHARD_MAX_RETRIES} "
                                   f"retries: {exc}")
            return
        finally:
            self.inflight.pop(shard.index, None)
        self.results[shard.index] = result
        self.images_done += result["count"]
        self.reused += result["reused"]
        self.generated += 0 if result["reused"] else result["count"]
        p = self._progress()
        log.info("batch %s: shard %d/%d, %d/%d images, %.0f img/s%s", self.job.batch_id, p["shards_done"],
                 p["shards_total"], p["images_done"], p["images_total"], p["images_per_s"],
                 " (already written)" if result["reused"] else "")
        self._save()

    def _stop(self, state: str, error: str | None) -> None:
        """End the run as cancelled/failed: no more submissions, in-flight tasks cancelled."""
        self.state |= {"state": state, "error": error, "finished_at": _now()}
        for ref in list(self.inflight.values()):
            ray.cancel(ref)
        self._save(force=True)
        log.info("batch %s: %s%s", self.job.batch_id, state, f" ({error})" if error else "")

    def _progress(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        p = {"shards_done": len(self.results), "shards_total": len(self.shards), "shards_reused": self.reused,
             "images_done": self.images_done, "images_total": self.job.n,
             "images_per_s": round(self.generated / elapsed, 1)}
        self.state["progress"] = p
        return p

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < _STATUS_EVERY_S:
            return
        self.last_write = now
        self.state["updated_at"] = _now()
        self.store.put_bytes(status_key(self.job.batch_id), _canonical(self.state), content_type="application/json",
                             metadata=_base_metadata(self.job))

    def _publish(self) -> None:
        """One PUT of the manifest, after every shard exists: readers see all or nothing."""
        rows = [self.results[s.index] for s in self.shards]
        totals: dict[str, int] = {}
        for row in rows:
            name = "all" if row["class"] is None else str(row["class"])
            totals[name] = totals.get(name, 0) + row["count"]
        manifest = {
            "synthetic": True, "notice": SYNTHETIC_NOTICE, "batch_id": self.job.batch_id,
            "model": self.state["model"], "n": self.job.n, "seed": self.job.seed, "render_layout": RENDER_LAYOUT,
            "seed_derivation": SEED_DERIVATION,
            "per_class": self.state["per_class"], "shard_size": self.job.shard_size,
            "seed_rule": "shard_seed = SeedSequence([seed, class + 1, k]).generate_state(1, uint64)[0] & (2**63 - 1), "
                         "class = -1 without per_class; images = sampler.generate(count, shard_seed, label=class)",
            "format": "npz (images uint8 (N, H, W[, C]) + manifest with per-image sha256_pixels)",
            "image_shape": rows[0]["shape"], "dtype": "uint8", "count": sum(totals.values()), "totals": totals,
            "shards": [{k: v for k, v in row.items() if k != "reused"} | {"uri": self.store.uri(row["key"])}
                       for row in rows],
        }
        self.store.put_bytes(manifest_key(self.job.batch_id), _canonical(manifest), content_type="application/json",
                             metadata=_base_metadata(self.job) | {"kind": "manifest"})


# -- the API the route calls -----------------------------------------------------------------
def _connect(settings: Settings) -> None:
    from infra.ray_runtime import connect

    connect(settings)


def _actor(batch_id: str):
    try:
        return ray.get_actor(_actor_name(batch_id), namespace=NAMESPACE)
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


def _read_status(store: ObjectStore, batch_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(status_key(batch_id)))
    except ObjectNotFoundError:
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
           *, fail_once: int | None = None) -> dict[str, Any]:
    """Start (or find) the batch for this request; its status, at once (the work runs in Ray).

    Idempotent: a running or succeeded batch is returned as is; a failed or cancelled one
    is resumed (shards already written are kept). Raises ValueError for an invalid request
    (``per_class`` not summing to ``n``, ``n`` above ``batch_max_images``), BatchBusyError
    when the batch's previous coordinator is still shutting down.

    Args:
        fail_once: TEST HOOK: shard index whose first attempt is killed (default: the
            ``SYNTHRAY_BATCH_FAIL_ONCE`` variable of this process).
    """
    pairs = _normalize(n, seed, per_class, settings)
    bid = batch_id(model, n, seed, per_class)
    _connect(settings)
    if (actor := _actor(bid)) is not None:
        with contextlib.suppress(ray.exceptions.RayActorError):  # exited between lookup and call: status.json decides
            return _finish(_start(actor, bid), settings, live=True)
    store = ObjectStore(settings)
    previous = _read_status(store, bid)
    if previous is not None and previous["state"] == SUCCEEDED:
        return _finish(previous, settings, live=False)
    from infra.ray_runtime import worker_env

    job = Job(batch_id=bid, model=model, n=n, seed=seed, per_class=pairs, settings=settings,
              shard_size=int(previous["shard_size"]) if previous else settings.batch_shard_size)
    actor = _Coordinator.options(
        name=_actor_name(bid), namespace=NAMESPACE, lifetime="detached", num_cpus=0, get_if_exists=True,
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
    if not _ID.match(batch_id or ""):
        return None
    _connect(settings)
    if (status := _actor_status(batch_id)) is not None:
        return _finish(status, settings, live=True)
    status = _read_status(ObjectStore(settings), batch_id)
    return None if status is None else _finish(status, settings, live=False)


def active_batches(settings: Settings) -> list[str]:
    """Ids of the batches whose coordinator is alive (queued or running), from Ray's named actors."""
    _connect(settings)
    prefix = _actor_name("")
    return sorted(a["name"].removeprefix(prefix) for a in ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == NAMESPACE and a["name"].startswith(prefix))


def cancel(batch_id: str, settings: Settings) -> dict[str, Any] | None:
    """Stop a batch: pending shards are never started, running ones are cancelled (``ray.cancel``).

    The manifest is not published. A finished batch is left as it is; its status is
    returned. None for an unknown id.
    """
    if not _ID.match(batch_id or ""):
        return None
    _connect(settings)
    if (actor := _actor(batch_id)) is not None:
        try:
            return _finish(ray.get(actor.cancel.remote(), timeout=30), settings, live=True)
        except ray.exceptions.RayActorError:
            pass  # it just finished: status.json has the final word
    store = ObjectStore(settings)
    status = _read_status(store, batch_id)
    if status is None:
        return None
    if status["state"] not in TERMINAL:  # a coordinator that was lost: record the cancel
        status |= {"state": CANCELLED, "finished_at": _now(), "updated_at": _now()}
        store.put_bytes(status_key(batch_id), _canonical(status), content_type="application/json",
                        metadata={"synthetic": "true", "batch-id": batch_id})
    return _finish(status, settings, live=False)


def _manifest(batch_id: str, settings: Settings) -> dict[str, Any]:
    status = get_status(batch_id, settings)
    if status is None:
        raise BadInput(f"unknown batch {batch_id!r}")
    if status["state"] != SUCCEEDED:
        raise BadInput(f"batch {batch_id} is {status['state']}, not succeeded; its images cannot be loaded yet")
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
            raise BadInput(f"{store.uri(key)} does not match the sha256 in batch {batch_id}'s manifest")
        yield read_images(data)


def load_images(batch_id: str, settings: Settings, limit: int | None = None) -> np.ndarray:
    """uint8 images of a succeeded batch in manifest order (at most ``limit``), each shard verified.

    Raises ValueError if the batch is unknown or not succeeded.
    """
    if limit is not None and limit < 1:
        raise BadInput(f"limit must be positive, got {limit}")
    images = np.concatenate(list(_shard_images(batch_id, settings, limit)))
    return images if limit is None else images[:limit]

