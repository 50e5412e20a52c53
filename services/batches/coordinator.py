"""The coordinator: one detached Ray actor per batch run, from plan to manifest.

A detached, named actor (namespace ``synthray``, name ``synthray-batch-{id}``, ``num_cpus=0``)
keeps a bounded number of shard tasks (:mod:`services.batches.shard`) in flight, records
progress in ``status.json`` and publishes the manifest once every shard exists (one PUT:
readers see all or nothing). It exits when the batch ends; its status stays in S3, so any
process can answer ``GET /v1/batches/{id}`` (:mod:`services.batches.api`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import ray

from infra.logs import FIELDS, configure as configure_logs
from infra.object_store import ObjectNotFoundError, ObjectStore
from services.batches.ids import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Job,
    Shard,
    base_metadata,
    canonical_json,
    manifest_key,
    now_iso,
    per_class_json,
    status_key,
)
from services.batches.shard import SHARD_MAX_RETRIES, check_classes, describe, generate_shard
from services.serving.packaging import SYNTHETIC_NOTICE
from training.nets import RENDER_LAYOUT, SEED_DERIVATION

log = logging.getLogger("synthray.batch")

_STATUS_EVERY_S = 1.0  # status.json is rewritten at most this often while shards finish (and at every state change)


def read_status(store: ObjectStore, batch_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(status_key(batch_id)))
    except ObjectNotFoundError:
        return None


def _shards_per_node(shard_cpus: float) -> int:
    """Shard tasks Ray can run at once per node: the CPUs nobody has reserved (the Serve app's
    replicas hold theirs) ÷ ``shard_cpus``, spread over the nodes that have CPUs."""
    free = ray.available_resources().get("CPU", 0.0)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU"))
    return max(1, math.ceil(int(free // shard_cpus) / max(1, nodes)))


def _reraise(done: set[asyncio.Future]) -> None:
    """Surface a coordinator error (e.g. S3 unreachable while recording a shard); shard failures are handled."""
    for future in done:
        future.result()


@ray.remote
class Coordinator:
    """One run of one batch: plans, keeps shard tasks in flight, reports, publishes, exits.

    An asyncio actor, so ``status`` and ``cancel`` are answered while shards run.
    """

    def __init__(self, job: Job, fail_once: int | None) -> None:
        configure_logs(log, job.settings)  # text, or JSON lines with SYNTHRAY_LOG_FORMAT=json
        self.job, self.fail_once = job, fail_once
        self.store = ObjectStore(job.settings)
        self.shards = job.plan()
        self.results: dict[int, dict[str, Any]] = {}
        self.inflight: dict[int, ray.ObjectRef] = {}
        self.per_node = 0  # shard tasks per node at once (torch threads per shard), set when shards start
        self.task: asyncio.Task | None = None
        self.generated = self.images_done = self.reused = 0  # running totals: 10^4 shards must not cost O(n^2)
        self.t0 = time.monotonic()
        self.last_write = 0.0
        previous = read_status(self.store, job.batch_id) or {}
        self.state: dict[str, Any] = {
            "batch_id": job.batch_id, "state": QUEUED, "error": None,
            "model": {"name": job.model.name, "version": str(job.model.version), "run_id": job.model.run_id,
                      "uri": job.model.uri},
            "n": job.n, "seed": job.seed, "per_class": per_class_json(job.per_class), "shard_size": job.shard_size,
            "progress": {}, "created_at": previous.get("created_at") or now_iso(), "started_at": None,
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
            check_classes(self.job, await describe.remote(self.job.model.uri, self.job.settings))
            if self.state["state"] == QUEUED:
                self.state |= {"state": RUNNING, "started_at": now_iso()}
                self._save(force=True)
            await self._shards()
            if self.state["state"] == RUNNING:
                self._publish()
                self.state |= {"state": SUCCEEDED, "finished_at": now_iso()}
        except Exception as exc:  # noqa: BLE001 - any error ends the batch as failed, with its text
            if self.state["state"] not in TERMINAL:
                self._stop(FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            try:
                self._save(force=True)
            finally:
                if self.state["state"] == SUCCEEDED:
                    log.info("batch %s: succeeded, manifest published", self.job.batch_id,
                             extra=self._fields(event="succeeded"))
                try:
                    ray.actor.exit_actor()  # marks the actor to exit; status lives on in status.json
                except ray.exceptions.AsyncioActorExit:
                    pass

    async def _shards(self) -> None:
        """Bounded concurrency: about two tasks per CPU in flight, the rest not yet submitted."""
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self.per_node = _shards_per_node(self.job.settings.batch_shard_cpus)
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
        ref = generate_shard.options(name=f"{self.job.batch_id}/{shard.index}",
                                      num_cpus=self.job.settings.batch_shard_cpus).remote(
            self.job, shard, self.fail_once, self.per_node)
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
                 " (already written)" if result["reused"] else "",
                 extra=self._fields(event="shard", shard=shard.index, reused=bool(result["reused"]), **p))
        self._save()

    def _stop(self, state: str, error: str | None) -> None:
        """End the run as cancelled/failed: no more submissions, in-flight tasks cancelled."""
        self.state |= {"state": state, "error": error, "finished_at": now_iso()}
        for ref in list(self.inflight.values()):
            ray.cancel(ref)
        self._save(force=True)
        log.info("batch %s: %s%s", self.job.batch_id, state, f" ({error})" if error else "",
                 extra=self._fields(event=state, error=error))

    def _fields(self, **more: Any) -> dict[str, Any]:
        """The JSON-line fields of a record (infra.logs): batch id as the request id, model, timing."""
        model = self.state["model"]
        return {FIELDS: {"request_id": self.job.batch_id, "batch_id": self.job.batch_id, "model": model["name"],
                         "model_version": model["version"], "elapsed_s": round(time.monotonic() - self.t0, 3),
                         **more}}

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
        self.state["updated_at"] = now_iso()
        self.store.put_bytes(status_key(self.job.batch_id), canonical_json(self.state), content_type="application/json",
                             metadata=base_metadata(self.job))

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
            "filter": self.job.filter,
        }
        if self.job.filter == "near-copy":  # each shard's row lists its own rejections
            manifest |= {"filter_percentile": self.job.filter_percentile or 1.0,
                         "near_copy_rejected": sum(row["near_copy"]["rejected"] for row in rows)}
        self.store.put_bytes(manifest_key(self.job.batch_id), canonical_json(manifest), content_type="application/json",
                             metadata=base_metadata(self.job) | {"kind": "manifest"})
