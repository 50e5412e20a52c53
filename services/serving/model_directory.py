"""Which concrete model version every ``NAME@alias`` means right now: one answer for all replicas.

A single-replica deployment holds the alias → version map of every model the API has been
asked for, and re-reads it from the MLflow registry every ``registry_poll_s`` seconds (one
``get_registered_model`` call per name: it returns the aliases) or at once on
``POST /v1/admin/reload``. So when ``champion`` moves (``synthray registry promote`` or the
MLflow UI), new requests get the new version within one poll interval, and a reload reaches
every replica at once because there is only one map. A version's details (run id, tags)
never change, so they are cached until the version is deleted or archived: every poll and
reload drops those, and the next request for one is a 404.

Requests are resolved to a concrete :class:`ModelRef` *before* any work starts and carry it
through, so a request in flight during a swap finishes on the version it started with.

**No round trip per request.** The ingress holds a :class:`DirectoryView`: a copy of every
reference the directory has resolved (``NAME@alias`` and ``NAME/VERSION`` → ModelRef), which it
pulls from :meth:`ModelDirectory.snapshot` every ``alias_refresh_s`` (serve_config.yaml) and
at once after ``POST /v1/admin/reload``. A reference in that copy is answered in the ingress;
anything else (a name or alias not seen yet, a dropped version) goes to the directory as
before, so every error and every registry read happens there. A move seen by the directory's
poll reaches the ingress within ``alias_refresh_s`` more; a reload through an ingress replica
reaches that replica before the reload's response (another ingress replica, within
``alias_refresh_s``).
If the registry is unreachable during a poll, the last known map keeps serving (logged);
only a name never seen before needs the registry there and then (else 503).

Client errors come back as :mod:`infra.errors` values (:class:`~infra.errors.NotFound` for an
unknown model, :class:`~infra.errors.Unavailable` for a registry that does not answer), returned
rather than raised: an unknown model is an ordinary client error, and a raised exception would
be logged by the replica as a failed request with a traceback. They pickle across Ray as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from infra.errors import NotFound, SynthrayError, Unavailable
from infra.settings import Settings, get_settings
from training.registry.generators import parse_model
from training.registry.tags import KIND as KIND_TAG
from training.registry.refs import version_uri

log = logging.getLogger("ray.serve")

# (name, alias, version) as parse_model gives it: exactly one of alias/version is set.
RefKey = tuple[str, "str | None", "str | None"]

# Version tags shown by GET /v1/models (generators' evaluation and classifiers' test metrics).
KEY_METRICS = (
    "fid", "fid.n_real", "kid", "kid.ci_low", "kid.ci_high", "memorization.fraction_below_real_p1",
    "accuracy", "auc", "macro_f1", "image_size", "dataset", "class",
)


ARCHIVED = "Archived"  # MLflow's stage name for a retired version


@dataclass(frozen=True)
class ModelRef:
    """A registry reference resolved to a concrete, immutable version."""

    name: str
    version: str
    run_id: str | None
    kind: str = ""
    classes: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    stage: str = field(default="", compare=False)  # MLflow's stage; "Archived" versions are not served

    @property
    def uri(self) -> str:
        return version_uri(self.name, self.version)


@dataclass
class _Entry:
    kind: str
    aliases: dict[str, str]
    read_at: float


@serve.deployment
class ModelDirectory:
    """Alias map with polling; see the module docstring."""

    def __init__(self, poll_s: float | None = None, settings: Settings | None = None) -> None:
        from infra.tracking import configure

        self._settings = settings or get_settings()
        self._poll_s = poll_s or self._settings.registry_poll_s
        self._client = configure(self._settings).MlflowClient()
        self._models: dict[str, _Entry] = {}
        self._versions: dict[tuple[str, str], ModelRef] = {}
        self._poller: asyncio.Task | None = None
        # snapshot() identity: a restarted directory has a new id, so an ingress never keeps a
        # map because a fresh directory's counter happens to equal the one it last saw.
        self._snapshot_id, self._epoch = uuid.uuid4().hex, 0
        self._last: dict[RefKey, ModelRef] = {}

    # -- the registry (blocking calls, run in a thread) ----------------------------------------
    def _read_model(self, name: str) -> _Entry:
        model = self._client.get_registered_model(name)
        return _Entry(kind=model.tags.get(KIND_TAG, ""), aliases={a: str(v) for a, v in model.aliases.items()},
                      read_at=time.monotonic())

    def _read_version(self, name: str, version: str, kind: str) -> ModelRef:
        found = self._client.get_model_version(name, version)
        tags = dict(found.tags)
        try:
            classes = tuple(json.loads(tags.get("classes", "[]")) or ())
        except json.JSONDecodeError:
            classes = ()
        return ModelRef(name=name, version=str(found.version), run_id=found.run_id,
                        kind=tags.get(KIND_TAG, kind), classes=classes, tags=tags, stage=found.current_stage or "")

    def _lookup(self, spec: str) -> ModelRef | SynthrayError:
        from mlflow.exceptions import MlflowException, RestException

        name, alias, version = parse_model(spec)
        try:
            entry = self._models.get(name)
            if entry is None:
                entry = self._models[name] = self._read_model(name)
            if alias is not None and alias not in entry.aliases:  # maybe set since the last poll
                entry = self._models[name] = self._read_model(name)
            if alias is not None:
                version = entry.aliases.get(alias)
                if version is None:
                    return NotFound(f"model {spec!r} not found: {name!r} has no alias {alias!r} "
                                    f"(aliases: {sorted(entry.aliases) or 'none'})", field="model")
            key = (name, version)
            if key not in self._versions:
                ref = self._read_version(name, version, entry.kind)
                if ref.stage == ARCHIVED:
                    return NotFound(f"model {spec!r} not found: version {version} is archived", field="model")
                self._versions[key] = ref
            return self._versions[key]
        except RestException as exc:
            reason = exc.message.removeprefix(f"{exc.error_code}: ")
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return NotFound(f"model {spec!r} not found in the registry: {reason}", field="model")
            return Unavailable(f"model registry error for {spec!r}: {reason}")
        except MlflowException as exc:
            return Unavailable(f"model registry at {self._settings.mlflow_tracking_uri} unreachable: {exc.message}")

    def _refresh(self) -> dict[str, dict[str, str]]:
        """Re-read every known model's aliases and live versions; ``{name: {alias: "old -> new"}}`` of what moved.

        Versions never change, but they can be deleted or archived: a cached version that is
        no longer live is dropped here (poll and reload alike), so the next request for it
        reads the registry and gets a 404. A model deleted as a whole is forgotten.
        """
        from mlflow.exceptions import MlflowException, RestException

        moved: dict[str, dict[str, str]] = {}
        for name, old in list(self._models.items()):
            try:
                new = self._read_model(name)
                live = self._live_versions(name)
            except RestException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    log.info("registered model %s was deleted; forgetting it", name)
                    self._forget(name, keep=set())
                    moved[name] = {a: f"{v} -> None" for a, v in old.aliases.items()}
                    continue
                log.warning("registry poll of %s failed; keeping its last known aliases: %s", name, exc.message)
                continue
            except MlflowException as exc:
                log.warning("registry poll of %s failed; keeping its last known aliases: %s", name, exc.message)
                continue
            self._forget(name, keep=live)
            changes = {a: f"{old.aliases.get(a)} -> {v}" for a, v in new.aliases.items() if old.aliases.get(a) != v}
            changes |= {a: f"{v} -> None" for a, v in old.aliases.items() if a not in new.aliases}
            if changes:
                log.info("registry aliases of %s moved: %s", name, changes)
                moved[name] = changes
            self._models[name] = new
        return moved

    def _live_versions(self, name: str) -> set[str]:
        """Versions of ``name`` that exist and are not archived (one registry call per model)."""
        found = self._client.search_model_versions(f"name = '{name}'", max_results=10_000)
        return {str(v.version) for v in found if (v.current_stage or "") != ARCHIVED}

    def _forget(self, name: str, keep: set[str]) -> None:
        """Drop cached versions of ``name`` outside ``keep`` (and the model itself when ``keep`` is empty)."""
        for key in [k for k in self._versions if k[0] == name and k[1] not in keep]:
            log.info("model version %s/%s was deleted or archived; no longer served", *key)
            del self._versions[key]
        if not keep:
            self._models.pop(name, None)

    # -- the deployment's methods ------------------------------------------------------------
    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await asyncio.to_thread(self._refresh)

    async def resolve(self, spec: str) -> ModelRef | SynthrayError:
        """``NAME@alias`` / ``NAME/VERSION`` → :class:`ModelRef`, from the map (registry on a miss)."""
        self._ensure_poller()
        return await asyncio.to_thread(self._lookup, spec)

    def _resolved(self) -> dict[RefKey, ModelRef]:
        """Every reference :meth:`_lookup` would answer from memory right now, and its answer."""
        refs: dict[RefKey, ModelRef] = {(name, None, version): ref for (name, version), ref in self._versions.items()}
        for name, entry in self._models.items():
            for alias, version in entry.aliases.items():
                if (ref := self._versions.get((name, version))) is not None:
                    refs[(name, alias, None)] = ref
        return refs

    async def snapshot(self, seen: tuple[str, int] | None = None
                       ) -> tuple[tuple[str, int], dict[RefKey, ModelRef]] | None:
        """The resolved map for a :class:`DirectoryView`, with its ``(id, epoch)``; None when
        ``seen`` is already the current one (nothing moved, nothing to send)."""
        self._ensure_poller()
        refs = self._resolved()
        if refs != self._last:
            self._last, self._epoch = refs, self._epoch + 1
        token = (self._snapshot_id, self._epoch)
        return None if seen == token else (token, refs)

    async def reload(self) -> dict[str, Any]:
        """Re-read every alias now (``POST /v1/admin/reload``)."""
        self._ensure_poller()
        moved = await asyncio.to_thread(self._refresh)
        return {"reloaded": sorted(self._models), "moved": moved, "poll_s": self._poll_s}

    async def ready(self) -> str | None:
        """None when the registry answers, else why not (``GET /readyz``)."""
        from mlflow.exceptions import MlflowException

        try:
            await asyncio.to_thread(self._client.search_registered_models, max_results=1)
        except MlflowException as exc:
            return f"model registry at {self._settings.mlflow_tracking_uri} unreachable: {exc.message}"
        return None

    async def list_models(self) -> list[dict[str, Any]] | SynthrayError:
        """Every registered model with its aliases and the key metrics of each aliased version."""
        from mlflow.exceptions import MlflowException

        def read() -> list[dict[str, Any]]:
            rows, token = [], None
            while True:
                page = self._client.search_registered_models(max_results=200, page_token=token)
                for model in page:
                    aliases = {a: str(v) for a, v in model.aliases.items()}
                    versions = {}
                    for version in sorted(set(aliases.values()), key=int):
                        ref = self._versions.get((model.name, version)) or self._read_version(
                            model.name, version, model.tags.get(KIND_TAG, ""))
                        self._versions[(model.name, version)] = ref
                        versions[version] = {
                            "run_id": ref.run_id, "classes": list(ref.classes),
                            "metrics": {k: ref.tags[k] for k in KEY_METRICS if k in ref.tags},
                        }
                    rows.append({"name": model.name, "kind": model.tags.get(KIND_TAG, ""), "aliases": aliases,
                                 "versions": versions})
                token = page.token
                if not token:
                    return rows

        try:
            return await asyncio.to_thread(read)
        except MlflowException as exc:
            return Unavailable(f"model registry at {self._settings.mlflow_tracking_uri} unreachable: {exc.message}")


class DirectoryView:
    """The ingress's copy of the directory's resolved references (see the module docstring).

    ``resolve`` answers a reference the directory has already resolved without a Ray call; a
    miss (or a reference that does not parse) goes to :meth:`ModelDirectory.resolve`, which
    returns the ModelRef or the error value exactly as before. ``pull`` refreshes the copy; a
    background task pulls every ``refresh_s`` once the first request has arrived.
    """

    def __init__(self, directory: Any, refresh_s: float) -> None:
        self._directory, self._refresh_s = directory, refresh_s
        self._refs: dict[RefKey, ModelRef] = {}
        self._token: tuple[str, int] | None = None
        self._task: asyncio.Task | None = None

    def cached(self, spec: str) -> ModelRef | None:
        """The held answer for ``spec``, or None (ask the directory)."""
        try:
            key = parse_model(spec)
        except ValueError:
            return None  # the directory answers malformed references (as before)
        return self._refs.get(key)

    async def pull(self) -> None:
        """Fetch the directory's map if it changed since the last pull."""
        found = await self._directory.snapshot.remote(self._token)
        if found is None:
            return
        token, refs = found
        # A background pull and a reload's pull may cross: never go back to an older epoch.
        if self._token is None or token[0] != self._token[0] or token[1] > self._token[1]:
            self._token, self._refs = token, refs

    def ensure_refreshing(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.pull()
            except Exception as exc:  # noqa: BLE001 - a restarting directory: keep the last map, retry
                log.warning("alias map refresh failed; keeping the last one: %s", str(exc).splitlines()[0])
            await asyncio.sleep(self._refresh_s)
