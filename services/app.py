"""The Ray Serve application: synthetic radiographs over HTTP.

Two deployments, sized and replicated by ``services/serve_config.yaml`` (the decorators
below carry no options on purpose, so the config file is the one place to change them):

* ``Api`` — FastAPI ingress (OpenAPI at ``/docs`` and ``/openapi.json``). Validates
  requests, turns failures into 4xx that name the offending field, sets response headers.
  It never imports torch or MLflow, so it stays small.
* ``Synthesizer`` — resolves ``NAME@alias`` / ``NAME/VERSION`` against the MLflow Model
  Registry, loads generators (an LRU of a few per replica via ``@serve.multiplexed``,
  keyed by the *concrete* version so a moved alias never serves a stale model), generates
  and packages the images. Requests are routed by that same key, so a replica that already
  holds the model gets the request.

HTTP contract (``/v1``)::

    GET  /v1/healthz      → 200 {"status": "ok", "max_sync_images": 256}
    POST /v1/synthesize   {"model": "NAME@alias" | "NAME/3", "n": 1.., "seed": 0..,
                           "format": "png-zip" | "npz"}
         200 application/zip (png-zip: img-00000.png … + manifest.json)
             application/x-npz (npz: images uint8 (N,H,W), manifest JSON string)
             headers X-Model-Name, X-Model-Version, X-MLflow-Run-Id, X-Seed, X-Synthetic,
             X-Request-Id (set by the Serve proxy; a client-sent one is echoed)
         404 unknown model / alias / version;  422 invalid body or n > max_sync_images;
         503 model registry unreachable

The same request always returns the same bytes: generation is seeded on CPU and the
containers are deterministic (see :mod:`services.packaging`).

No ``from __future__ import annotations`` here: Serve's ingress re-wraps the route methods,
and FastAPI then cannot resolve string annotations (the body turns into a query param).
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from infra.settings import Settings, get_settings
from training.model_registry import MODEL_REF_HELP, parse_model

API_VERSION = "v1"
BATCHES_PATH = f"/{API_VERSION}/batches"
MODELS_PER_REPLICA = 3  # generators cached per Synthesizer replica (LRU)
MEDIA_TYPES = {"png-zip": "application/zip", "npz": "application/x-npz"}
EXTENSIONS = {"png-zip": "zip", "npz": "npz"}

_MODEL_HELP = MODEL_REF_HELP


@dataclass(frozen=True)
class LookupFailure:
    """Why a model reference did not resolve, as an HTTP status and message.

    Returned rather than raised: an unknown model is an ordinary client error, and a raised
    exception would be logged by the replica as a failed request with a traceback.
    """

    status: int  # 404 unknown model/alias/version, 503 registry unreachable
    detail: str


@dataclass(frozen=True)
class ModelRef:
    """A registry reference resolved to a concrete version."""

    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class SynthesizeRequest(BaseModel):
    """Body of ``POST /v1/synthesize``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "gan-phantom-knee-wgan-gp-knee-small@champion", "n": 16, "seed": 0, "format": "png-zip"}]
        },
    )

    model: str = Field(description=f"Registered generator: {_MODEL_HELP}.")
    n: int = Field(ge=1, description=f"Number of images; at most max_sync_images (see /{API_VERSION}/healthz). Larger sets: {BATCHES_PATH}.")
    seed: int = Field(ge=0, le=2**63 - 1, description="Latent seed; the same request always returns the same bytes.")
    format: Literal["png-zip", "npz"] = Field(default="png-zip", description="png-zip: zip of PNGs + manifest.json; npz: numpy arrays.")

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_model(value)
        return value


class AppArgs(BaseModel):
    """``args:`` of the application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    max_sync_images: int = Field(default=256, ge=1, le=65536)


api = FastAPI(
    title="synthray",
    version=API_VERSION,
    description="Synthetic knee radiographs from GAN generators registered in MLflow. Every image is synthetic and marked as such.",
)


@serve.deployment
@serve.ingress(api)
class Api:
    """HTTP ingress; see the module docstring for the contract."""

    def __init__(self, synthesizer: DeploymentHandle, max_sync_images: int = 256) -> None:
        self.synthesizer = synthesizer
        self.max_sync_images = max_sync_images

    @api.get(f"/{API_VERSION}/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness of the ingress replica (Serve health-checks every replica itself)."""
        return {"status": "ok", "max_sync_images": self.max_sync_images}

    @api.post(
        f"/{API_VERSION}/synthesize",
        response_class=Response,
        responses={
            200: {
                "description": "The images, with X-Model-Version, X-MLflow-Run-Id, X-Seed and X-Request-Id headers.",
                "content": {media: {} for media in MEDIA_TYPES.values()},
            },
            404: {"description": "No such registered model, alias or version."},
            422: {"description": f"Invalid body, or n above max_sync_images (use {BATCHES_PATH})."},
            503: {"description": "The model registry is unreachable."},
        },
    )
    async def synthesize(self, body: SynthesizeRequest) -> Response:
        """Generate ``n`` images from ``model`` with ``seed``; deterministic."""
        if body.n > self.max_sync_images:
            # Same shape as FastAPI's own validation errors, so clients parse one format.
            raise RequestValidationError([{
                "type": "less_than_equal",
                "loc": ("body", "n"),
                "msg": f"n must be at most {self.max_sync_images} for a synchronous request; "
                       f"submit larger sets to {BATCHES_PATH}",
                "input": body.n,
                "ctx": {"le": self.max_sync_images},
            }])
        ref = await self.synthesizer.resolve.remote(body.model)
        if isinstance(ref, LookupFailure):
            raise HTTPException(status_code=ref.status, detail=ref.detail)
        data: bytes = await self.synthesizer.options(multiplexed_model_id=ref.uri).synthesize.remote(
            ref, body.n, body.seed, body.format
        )
        filename = f"{ref.name}-v{ref.version}-seed{body.seed}-n{body.n}.{EXTENSIONS[body.format]}"
        return Response(
            content=data,
            media_type=MEDIA_TYPES[body.format],
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Model-Name": ref.name,
                "X-Model-Version": ref.version,
                "X-MLflow-Run-Id": ref.run_id or "",
                "X-Seed": str(body.seed),
                "X-Synthetic": "true",
            },
        )


@serve.deployment
class Synthesizer:
    """Registry lookups, generator cache and generation; torch and MLflow live here only."""

    def __init__(self, settings: Settings | None = None) -> None:
        # Settings (the MLflow URI) come from the SYNTHRAY_* variables that serve.up puts
        # into the application's runtime_env (a pod's environment in a cluster).
        from infra.tracking import configure

        self._settings = settings or get_settings()
        self._mlflow = configure(self._settings)
        self._client = self._mlflow.MlflowClient()

    async def resolve(self, model: str) -> ModelRef | LookupFailure:
        """Alias or version → concrete version and run id, asked fresh on every request.

        Not cached, so moving an alias takes effect on the next request.
        """
        return await asyncio.to_thread(self._resolve, model)

    def _resolve(self, model: str) -> ModelRef | LookupFailure:
        from mlflow.exceptions import MlflowException, RestException

        name, alias, version = parse_model(model)
        try:
            if alias is not None:
                found = self._client.get_model_version_by_alias(name, alias)
            else:
                found = self._client.get_model_version(name, version)
        except RestException as exc:
            # The server answered: RESOURCE_DOES_NOT_EXIST, or INVALID_PARAMETER_VALUE for
            # an alias not set on an existing model. MLflow prefixes its message with the code.
            reason = exc.message.removeprefix(f"{exc.error_code}: ")
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return LookupFailure(404, f"model {model!r} not found in the registry: {reason}")
            return LookupFailure(503, f"model registry error for {model!r}: {reason}")
        except MlflowException as exc:
            return LookupFailure(503, f"model registry at {self._settings.mlflow_tracking_uri} unreachable: {exc.message}")
        return ModelRef(name=found.name, version=str(found.version), run_id=found.run_id)

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def _generator(self, uri: str):
        from training.model_registry import load_generator

        return await asyncio.to_thread(load_generator, uri, self._settings)

    async def synthesize(self, ref: ModelRef, n: int, seed: int, fmt: str) -> bytes:
        """``n`` images from the resolved model, packaged as ``fmt``; byte-deterministic."""
        from services.packaging import to_npz, to_png_zip

        sampler = await self._generator(ref.uri)
        images = await asyncio.to_thread(sampler.generate, n, seed)
        meta = {"model": ref.name, "version": ref.version, "run_id": ref.run_id, "uri": ref.uri, "seed": seed}
        pack = to_png_zip if fmt == "png-zip" else to_npz
        return await asyncio.to_thread(pack, images, meta)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by serve_config.yaml (``import_path``); ``args`` → AppArgs."""
    options = AppArgs.model_validate(args or {})
    return Api.bind(Synthesizer.bind(), max_sync_images=options.max_sync_images)
