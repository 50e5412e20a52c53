"""The Ray Serve application: synthetic radiographs, batch jobs, FID and classification over HTTP.

Deployments (sized and replicated by ``services/serving/serve_config.yaml`` only; the decorators
carry no options, so the config file is the one place to change them):

* ``Api`` — FastAPI ingress (OpenAPI at ``/docs`` and ``/openapi.json``): API keys, body
  limits, validation into 4xx that name the field, response headers, Prometheus metrics.
  It never imports torch or MLflow, so it stays small.
* ``ModelDirectory`` — alias → version map with registry polling (hot swaps; see there). The
  Api holds a copy it refreshes in the background (``DirectoryView``), so a request for a
  model already resolved makes no call to it.
* ``Synthesizer`` — generators (multiplexed), request batching by image count, latent tools.
* ``FidScorer`` — one Inception network per replica, reference statistics from the cache.
* ``Classifier`` — registered classifiers (multiplexed).
* ``Segmenter`` — registered segmenters (multiplexed), label maps for ``POST segment``.

Routes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (no key); under ``/v1`` (bearer
key): ``POST synthesize``, ``POST batches``, ``GET batches/{id}``, ``POST batches/{id}/cancel``,
``POST fid``, ``POST fid/images``, ``POST classify``, ``POST segment``, ``GET models``,
``POST latent/interpolate``, ``POST latent/sweep``, ``POST admin/reload``.

Status codes: 401 no/wrong key; 404 unknown model/alias/version/batch/dataset; 409 batch not
succeeded yet; 413 body too large; 422 invalid body, naming the field (FastAPI's error shape);
503 registry or object store unreachable, or overloaded (with ``Retry-After``). Bad input never
yields a 5xx.

Errors: every domain error is an :class:`infra.errors.SynthrayError`, whether the Api raises
it or a deployment returns it (deployments return theirs as values, so replicas do not log
tracebacks for client errors; :func:`_call` raises them here). One exception handler,
:func:`error_response`, turns any of them into the response by its class's ``http_status``;
no status is derived from message text.

No ``from __future__ import annotations`` here: Serve's ingress re-wraps the route methods,
and FastAPI then cannot resolve string annotations (the body turns into a query param).
"""

import asyncio
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from infra.errors import RETRY_AFTER_S, NotFound, SynthrayError, Unavailable
from infra.object_store import ObjectStoreUnavailable
from infra.settings import get_settings
from services.serving import prometheus as metrics
from services.serving.auth import require_key
from services.serving.body_limit import BodyLimit
from services.serving.classifier import Classifier
from services.serving.fid_scorer import FidScorer
from services.serving.model_directory import DirectoryView, ModelDirectory, ModelRef
from services.serving.segmenter import Segmenter
from services.serving.schemas import (
    API_VERSION,
    BATCHES_PATH,
    EXTENSIONS,
    MEDIA_TYPES,
    AppArgs,
    BatchCandidate,
    BatchRequest,
    FidRequest,
    InterpolateRequest,
    SweepRequest,
    TransitionRequest,
    SynthesizeRequest,
)
from services.serving import studies as studies_routes
from services.serving.synthesizer import Synthesizer, resolve_filter
from training.registry.generators import parse_model
from training.registry.tags import GENERATOR_KIND

V1 = f"/{API_VERSION}"
log = logging.getLogger("ray.serve")

api = FastAPI(
    title="synthray",
    version=API_VERSION,
    description="Synthetic knee radiographs from GAN generators registered in MLflow, batch jobs into the object "
                "store, FID scoring and classification. Every generated image is synthetic and marked as such. "
                "Every /v1 route needs 'Authorization: Bearer <key>'.",
)
api.add_middleware(BodyLimit, max_bytes=lambda: get_settings().serve_max_body_bytes)

AUTH = [Depends(require_key)]
_ERRORS = {
    401: {"description": "Missing or invalid API key."},
    404: {"description": "No such registered model, alias, version, batch or dataset."},
    409: {"description": "The batch has not succeeded (yet), or the near-copy filter could not fill the request "
                         "(the generator memorises)."},
    413: {"description": "Request body too large."},
    422: {"description": "Invalid body; the error names the field."},
    503: {"description": "Model registry or object store unreachable, or overloaded (see Retry-After)."},
}


api.include_router(studies_routes.router)  # reader studies: /v1/studies (key) and /study/{token} (reader link)


def server_timing(durations: dict[str, float]) -> str:
    """A ``Server-Timing`` header value (W3C Server Timing): ``name;dur=ms`` entries, comma-separated."""
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in durations.items())


def parse_server_timing(header: str) -> dict[str, float]:
    """The inverse of :func:`server_timing`: ``"render;dur=57.70, pack;dur=0.80"`` → ``{"render": 57.7, "pack": 0.8}`` (ms)."""
    entries = (entry.strip().split(";") for entry in header.split(","))
    return {name: float(dur.removeprefix("dur=")) for name, dur in entries}


class _CountRequests:
    """Requests and latency by route template (not raw path, so ids don't explode labels).

    With ``SYNTHRAY_LOG_FORMAT=json`` also one structured log record per request: Serve's JSON
    encoding (``deploy.logging_config``) adds the request id, route and replica; this adds the
    status, the model and model version that answered (from the response headers) and
    ``duration_ms``. In text mode Serve's own access log line says the same.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` runs every request through an
    extra task and memory streams, a measurable share of a small request's time here.

    A route's ``Server-Timing`` header (ms; only ``/v1/synthesize`` sends one: its ``render`` and
    ``pack``) is completed here with ``request-body`` (until the body had arrived: a Serve replica
    pulls it from the proxy with a call back) and ``api`` (this replica's first look at the request
    to its response start); the client's time minus ``api`` is the client, the proxy and the
    transfer. Other routes get none: a reader study's image responses must not differ by
    provenance, and timing would.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen: dict[str, Any] = {}

        async def receive_and_time():
            message = await receive()
            seen.setdefault("body_ms", 1e3 * (time.perf_counter() - start))
            return message

        async def send_and_see(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                ours = ({"request-body": seen["body_ms"]} if "body_ms" in seen else {}) | {
                    "api": 1e3 * (time.perf_counter() - start)}
                suffix = b", " + server_timing(ours).encode()
                seen["headers"] = message["headers"] = [
                    (name, value + suffix if name.lower() == b"server-timing" else value)
                    for name, value in message.get("headers") or []]
            await send(message)

        await self.app(scope, receive_and_time, send_and_see)
        elapsed = time.perf_counter() - start
        route = getattr(scope.get("route"), "path", "unmatched")
        status = seen.get("status", 500)
        metrics.REQUESTS.labels(scope["method"], route, str(status)).inc()
        metrics.LATENCY.labels(scope["method"], route).observe(elapsed)
        if get_settings().log_format == "json":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in seen.get("headers", [])}
            log.info("request", extra={"ray_serve_extra_fields": {  # Serve's documented custom fields
                "method": scope["method"], "path_template": route, "status": status,
                "model": headers.get("x-model-name"), "model_version": headers.get("x-model-version"),
                "duration_ms": round(elapsed * 1000, 2)}})


api.add_middleware(_CountRequests)  # outermost: counts BodyLimit's 413s too


def field_error(field: str, msg: str, value: Any = None, kind: str = "value_error") -> RequestValidationError:
    """A 422 in FastAPI's own validation shape, so clients parse one error format."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": msg, "input": value}])


@api.exception_handler(SynthrayError)
async def error_response(request: Request, exc: SynthrayError) -> JSONResponse:
    """The one mapping of the error vocabulary to HTTP, by the class's ``http_status``.

    A 422 that names a field has FastAPI's own validation shape (what a pydantic error gives),
    so clients parse one format; anything else is ``{"detail": message}``. An
    :class:`~infra.errors.Unavailable` (registry or S3 down, overload, a lost replica) says
    when to retry (``Retry-After``).
    """
    if exc.http_status == 422 and exc.field:
        return await request_validation_exception_handler(request, field_error(exc.field, exc.message))
    detail = exc.message
    if isinstance(exc, ObjectStoreUnavailable):  # S3 down or restarting (batch status, references…)
        detail = f"object store unavailable, retry later: {detail}"
    headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, Unavailable) else None
    return JSONResponse({"detail": detail}, status_code=exc.http_status, headers=headers)


# Deployment-side field names → the request field a client sent.
_FIELDS = {"images": "candidate", "batch_id": "candidate", "limit": "candidate"}


async def _call(response, uploads: bool = False) -> Any:
    """Await a handle call; overload or a lost replica → Unavailable; a returned SynthrayError is raised.

    Deployments return their client errors (see the module docstring); raised here, the one
    handler answers them. Their field is the deployment's argument name, remapped to the
    request field the client sent (``uploads``: images came as ``files``).
    """
    try:
        value = await response
    except BackPressureError as exc:
        raise Unavailable(f"overloaded, retry later: {exc.message}",
                          retry_after_s=exc.retry_after_s or RETRY_AFTER_S) from None
    except (RayActorError, ActorUnavailableError) as exc:
        # The replica died mid-request (Serve starts another in seconds): transient, and every
        # call here is idempotent, so say "retry" (503) rather than "bug" (500).
        log.warning("replica lost during a request: %s", str(exc).splitlines()[0])
        raise Unavailable("a serving replica restarted during the request; retry") from None
    if isinstance(value, SynthrayError):
        if value.field:  # a fresh copy from Ray: ours to re-field
            field = value.field
            value.field = "files" if uploads and field.startswith("images") else _FIELDS.get(field.split("[")[0], field)
        raise value
    return value


def _images_response(data: bytes, fmt: str, ref: ModelRef, filename: str, extra: dict[str, str]) -> Response:
    return Response(
        content=data,
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{filename}.{EXTENSIONS[fmt]}"',
            "X-Model-Name": ref.name,
            "X-Model-Version": ref.version,
            "X-MLflow-Run-Id": ref.run_id or "",
            "X-Synthetic": "true",
        } | extra,
    )


def _raise_bad(value: Any) -> Any:
    """A validated value, or its BadInput raised (the handler answers a 422 naming the field)."""
    if isinstance(value, SynthrayError):
        raise value
    return value


def _filter_headers(report: dict[str, Any]) -> dict[str, str]:
    """``X-Filter`` always; with near-copy also the rejection count and the replacement seed."""
    headers = {"X-Filter": report["filter"]}
    if report["filter"] == "near-copy":
        headers |= {"X-Near-Copy-Rejected": str(report["rejected"]),
                    "X-Near-Copy-Replacement-Seed": str(report["replacement_seed"])}
    return headers


def _valid_batch_id(batch_id: str) -> bool:
    from pydantic import ValidationError

    try:
        BatchCandidate(batch_id=batch_id)
    except ValidationError:
        return False
    return True


_IMAGES_200 = {
    200: {"description": "The images (X-Model-Version, X-MLflow-Run-Id, X-Seed, X-Request-Id headers; /v1/synthesize "
                         "adds X-Filter and, with filter=near-copy, X-Near-Copy-Rejected and "
                         "X-Near-Copy-Replacement-Seed and Server-Timing in ms: render, pack, request-body, api).",
          "content": {media: {} for media in MEDIA_TYPES.values()}},
} | _ERRORS


@serve.deployment
@serve.ingress(api)
class Api:
    """HTTP ingress; see the module docstring for the contract."""

    def __init__(self, directory: DeploymentHandle, synthesizer: DeploymentHandle, fid: DeploymentHandle,
                 classifier: DeploymentHandle, args: dict[str, Any] | None = None,
                 segmenter: DeploymentHandle | None = None) -> None:
        self.directory, self.synthesizer, self.fid, self.classifier = directory, synthesizer, fid, classifier
        self.segmenter = segmenter
        self.args = AppArgs.model_validate(args or {})
        self.settings = get_settings()
        self.refs = DirectoryView(directory, self.args.alias_refresh_s)  # no directory round trip per request
        studies_routes.attach(directory, synthesizer)

    # -- probes and metrics ---------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness of the ingress replica, with the synchronous cap clients need."""
        return {"status": "ok", "max_sync_images": self.args.max_sync_images}

    @api.get("/readyz", responses={503: {"description": "The model registry is unreachable."}})
    async def readyz(self) -> JSONResponse:
        """Ready when the model directory answers and the registry behind it is reachable."""
        problem = await self.directory.ready.remote()
        if problem:
            return JSONResponse({"status": "not ready", "reason": problem}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"status": "ready"})

    @api.get("/metrics", response_class=Response)
    async def prometheus(self) -> Response:
        """Prometheus text format: requests, latency and images generated by model."""
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    # -- helpers -------------------------------------------------------------------------------
    async def _generator(self, model: str) -> ModelRef:
        self.refs.ensure_refreshing()
        ref = self.refs.cached(model) or await _call(self.directory.resolve.remote(model))
        if ref.kind and ref.kind != GENERATOR_KIND:
            raise field_error("model", f"{model!r} is a {ref.kind}, not a generator")
        return ref

    def _synth(self, ref: ModelRef):
        return self.synthesizer.options(multiplexed_model_id=ref.uri)

    # -- synthesis -----------------------------------------------------------------------------
    @api.post(f"{V1}/synthesize", response_class=Response, responses=_IMAGES_200, dependencies=AUTH)
    async def synthesize(self, body: SynthesizeRequest) -> Response:
        """Generate ``n`` images from ``model`` with ``seed``; the same request gives the same bytes."""
        if body.n > self.args.max_sync_images:
            raise field_error("n", f"n must be at most {self.args.max_sync_images} for a synchronous request; "
                                   f"submit larger sets to {BATCHES_PATH}", body.n, "less_than_equal")
        ref = await self._generator(body.model)
        filter_name, percentile = _raise_bad(resolve_filter(ref, body.filter, body.filter_percentile))
        data, report, timing = await _call(self._synth(ref).synthesize.remote(
            ref, body.n, body.seed, body.cls, body.format, body.labels, filter_name, percentile))
        metrics.IMAGES.labels(ref.name, ref.version, "synthesize").inc(body.n)
        return _images_response(data, body.format, ref, f"{ref.name}-v{ref.version}-seed{body.seed}-n{body.n}",
                                {"X-Seed": str(body.seed), "Server-Timing": server_timing(timing)}
                                | _filter_headers(report))

    @api.post(f"{V1}/latent/interpolate", response_class=Response, responses=_IMAGES_200, dependencies=AUTH)
    async def interpolate(self, body: InterpolateRequest) -> Response:
        """``steps`` images on the straight line between the latents of ``seed_a`` and ``seed_b``."""
        ref = await self._generator(body.model)
        data = await _call(self._synth(ref).interpolate.remote(ref, body.seed_a, body.seed_b, body.steps, body.cls,
                                                               body.format, body.labels))
        metrics.IMAGES.labels(ref.name, ref.version, "interpolate").inc(body.steps)
        return _images_response(data, body.format, ref, f"{ref.name}-v{ref.version}-interp-{body.seed_a}-{body.seed_b}",
                                {"X-Seed": f"{body.seed_a},{body.seed_b}"})

    @api.post(f"{V1}/latent/sweep", response_class=Response, responses=_IMAGES_200, dependencies=AUTH)
    async def sweep(self, body: SweepRequest) -> Response:
        """``steps`` images with latent dimension ``dim`` of ``seed``'s latent from −4.2 to +4.2."""
        ref = await self._generator(body.model)
        data = await _call(self._synth(ref).sweep.remote(ref, body.seed, body.dim, body.steps, body.cls, body.format,
                                                         body.labels))
        metrics.IMAGES.labels(ref.name, ref.version, "sweep").inc(body.steps)
        return _images_response(data, body.format, ref, f"{ref.name}-v{ref.version}-sweep-{body.seed}-d{body.dim}",
                                {"X-Seed": str(body.seed)})

    @api.post(f"{V1}/latent/transition", response_class=Response, responses=_IMAGES_200, dependencies=AUTH)
    async def transition(self, body: TransitionRequest) -> Response:
        """Label transition (chest paper): ``seed``'s z fixed, ``condition`` moving 0 → 1 in ``steps``
        steps; the package holds the ``steps`` frames, then their difference maps against frame 0."""
        ref = await self._generator(body.model)
        data = await _call(self._synth(ref).transition.remote(ref, body.seed, body.condition, body.steps, body.cls,
                                                              body.labels, body.format))
        metrics.IMAGES.labels(ref.name, ref.version, "transition").inc(body.steps)
        return _images_response(data, body.format, ref, f"{ref.name}-v{ref.version}-transition-{body.seed}",
                                {"X-Seed": str(body.seed)})

    # -- batch jobs ----------------------------------------------------------------------------
    @api.post(BATCHES_PATH, status_code=202, responses=_ERRORS, dependencies=AUTH)
    async def submit_batch(self, body: BatchRequest) -> JSONResponse:
        """Start (or find) the batch job for this request: 202 with its id; re-POSTing is idempotent."""
        from services.batches import api as batch_api

        if body.n > self.settings.batch_max_images:
            raise field_error("n", f"n must be at most {self.settings.batch_max_images} per batch", body.n)
        ref = await self._generator(body.model)
        per_class = None
        if body.per_class is not None:
            per_class = await _call(self._synth(ref).class_indices.remote(ref, body.per_class))
        filter_name, percentile = _raise_bad(resolve_filter(ref, body.filter, body.filter_percentile))
        model = batch_api.BatchModel(name=ref.name, version=ref.version, run_id=ref.run_id)
        # Invalid requests raise BadInput naming n/seed/per_class; a coordinator still winding
        # down raises BatchBusyError (Unavailable): the handler answers both.
        state = await asyncio.to_thread(batch_api.submit, model, body.n, body.seed, per_class, self.settings,
                                        filter=filter_name, filter_percentile=percentile)
        return JSONResponse(state, status_code=202, headers={"Location": f"{BATCHES_PATH}/{state['batch_id']}"})

    @api.get(BATCHES_PATH + "/{batch_id}", responses=_ERRORS, dependencies=AUTH)
    async def batch_status(self, batch_id: str) -> dict[str, Any]:
        """Status, progress, and (when done) the manifest URI and presigned URLs."""
        from services.batches import api as batch_api

        return await self._batch_call(batch_api.get_status, batch_id)

    @api.post(BATCHES_PATH + "/{batch_id}/cancel", responses=_ERRORS, dependencies=AUTH)
    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Stop a running batch (finished shards stay; no manifest is published)."""
        from services.batches import api as batch_api

        return await self._batch_call(batch_api.cancel, batch_id)

    async def _batch_call(self, fn, batch_id: str) -> dict[str, Any]:
        """``fn(batch_id, settings)`` off the event loop; 404 for a malformed or unknown id."""
        state = await asyncio.to_thread(fn, batch_id, self.settings) if _valid_batch_id(batch_id) else None
        if state is None:
            raise NotFound(f"no batch {batch_id!r}", field="batch_id")
        return state

    # -- scoring -------------------------------------------------------------------------------
    @api.post(f"{V1}/fid", responses=_ERRORS, dependencies=AUTH)
    async def fid(self, body: FidRequest) -> dict[str, Any]:
        """FID of a batch or of freshly generated images against a catalog reference."""
        candidate = body.candidate
        if isinstance(candidate, BatchCandidate):
            return await _call(self.fid.score.remote(body.reference, batch_id=candidate.batch_id,
                                                     limit=self.args.max_fid_images))
        if candidate.n > self.args.max_fid_images:
            raise field_error("candidate", f"candidate.n must be at most {self.args.max_fid_images}; "
                                           f"score a batch ({BATCHES_PATH}) for more", candidate.n)
        ref = await self._generator(candidate.model)
        images = await _call(self._synth(ref).images.remote(ref, candidate.n, candidate.seed, candidate.cls))
        return await _call(self.fid.score.remote(body.reference, images=images))

    @api.post(f"{V1}/fid/images", responses=_ERRORS, dependencies=AUTH)
    async def fid_images(self, reference: str = Form(max_length=300), files: list[UploadFile] = File()) -> dict[str, Any]:
        """FID of uploaded images (PNG/JPEG, or npz with an ``images`` array); nothing is stored."""
        images = await self._decode(files)
        import numpy as np

        if len({im.shape for im in images}) > 1:
            raise field_error("files", "all images must have the same size for FID")
        return await _call(self.fid.score.remote(reference, images=np.stack(images)), uploads=True)

    @api.post(f"{V1}/classify", responses=_ERRORS, dependencies=AUTH)
    async def classify(self, files: list[UploadFile] = File(), model: str | None = Form(default=None, max_length=300)
                       ) -> dict[str, Any]:
        """Per image: class probabilities, label and the classifier version; nothing is stored."""
        spec = model or self.args.default_classifier
        try:
            parse_model(spec)
        except ValueError as exc:
            raise field_error("model", str(exc), spec) from None
        images = await self._decode(files)
        ref = await _call(self.classifier.resolve.remote(spec))  # route by the concrete version
        results = await _call(self.classifier.options(multiplexed_model_id=ref.uri).classify.remote(ref, images), uploads=True)
        return {"model": spec, "version": ref.version, "results": results}

    @api.post(f"{V1}/segment", responses=_ERRORS, dependencies=AUTH)
    async def segment(self, files: list[UploadFile] = File(), model: str | None = Form(default=None, max_length=300)
                      ) -> dict[str, Any]:
        """Per image: a label map (base64 PNG, pixel value = index into ``classes``) at the image's size,
        per-class pixel counts and the segmenter version; nothing is stored. Limits and errors as ``classify``."""
        spec = model or self.args.default_segmenter
        try:
            parse_model(spec)
        except ValueError as exc:
            raise field_error("model", str(exc), spec) from None
        if self.segmenter is None:
            raise Unavailable("segmentation is not deployed in this application")
        images = await self._decode(files)
        ref = await _call(self.segmenter.resolve.remote(spec))
        results = await _call(self.segmenter.options(multiplexed_model_id=ref.uri).segment.remote(ref, images), uploads=True)
        return {"model": spec, "version": ref.version, "classes": list(ref.classes), "results": results}

    async def _decode(self, files: list[UploadFile]) -> list:
        """Uploaded files → uint8 arrays, in memory only; 422 naming the file that does not decode."""
        from services.serving.uploads import UploadError, decode_upload

        images: list = []
        for upload in files:
            data = await upload.read()
            try:  # the remaining budget, so an oversized npz is refused from its header, undecoded
                images += decode_upload(upload.filename or "upload", data,
                                        max_images=self.args.max_upload_images - len(images))
            except UploadError as exc:
                raise field_error("files", str(exc), upload.filename) from None
        if not images:
            raise field_error("files", "no images uploaded")
        return images

    # -- registry --------------------------------------------------------------------------------
    @api.get(f"{V1}/models", responses=_ERRORS, dependencies=AUTH)
    async def models(self) -> dict[str, Any]:
        """Registered generators and classifiers with aliases and key metrics."""
        return {"models": await _call(self.directory.list_models.remote())}

    @api.post(f"{V1}/admin/reload", responses=_ERRORS, dependencies=AUTH)
    async def reload(self) -> dict[str, Any]:
        """Re-read every registry alias now, instead of at the next poll."""
        reloaded = await self.directory.reload.remote()
        await self.refs.pull()  # requests after this response see the new map
        return reloaded


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by serve_config.yaml (``import_path``); ``args`` → AppArgs."""
    options = AppArgs.model_validate(args or {})
    synthesizer = Synthesizer.bind(max_batch_images=options.max_batch_images,
                                   batch_wait_timeout_s=options.batch_wait_timeout_s,
                                   torch_threads=options.torch_threads)
    threads = {"torch_threads": options.torch_threads}
    return Api.bind(ModelDirectory.bind(), synthesizer, FidScorer.bind(**threads), Classifier.bind(**threads),
                    args=options.model_dump(), segmenter=Segmenter.bind(**threads))


__all__ = ["Api", "ModelRef", "build_app", "error_response", "parse_model"]
