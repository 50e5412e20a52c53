"""Request bodies of the HTTP API and the application's arguments (pydantic; shown in OpenAPI).

Every model forbids unknown fields, so a typo is a 422 naming it rather than a silently
ignored option. ``class`` is a Python keyword, hence the ``cls`` attribute with its alias.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from training.registry.generators import MODEL_REF_HELP, parse_model
from infra.errors import BadInput

API_VERSION = "v1"
BATCHES_PATH = f"/{API_VERSION}/batches"
MEDIA_TYPES = {"png-zip": "application/zip", "npz": "application/x-npz", "dicom-zip": "application/zip"}
EXTENSIONS = {"png-zip": "zip", "npz": "npz", "dicom-zip": "zip"}
MAX_SEED = 2**63 - 1
_EXAMPLE_MODEL = "gan-phantom-knee-wgan-gp-knee-small@champion"

Format = Literal["png-zip", "npz", "dicom-zip"]
ClassRef = Annotated[int, Field(ge=0, le=10_000)] | Annotated[str, Field(min_length=1, max_length=128)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
#: Multi-hot findings of a multi-label conditional generator: K entries of 0 or 1 (JSON integers).
MultiHot = list[Annotated[StrictInt, Field(ge=0, le=1)]]
_LABELS_HELP = ("Multi-hot findings for a multi-label conditional generator, one 0/1 entry per finding in the "
                "model's classes order, e.g. [1, 0, 1]; not together with class.")


def _labels_field():
    return Field(default=None, min_length=1, max_length=1024, description=_LABELS_HELP)


class _Conditioned(BaseModel):
    """``class`` (single-label) or ``labels`` (multi-hot): one condition, never both."""

    @model_validator(mode="after")
    def _one_condition(self):
        if getattr(self, "labels", None) is not None and getattr(self, "cls", None) is not None:
            raise BadInput("give class or labels, not both", field="labels")
        return self


# Near-copy filter (training.evaluate.nearcopy): None = the model version's default (its card).
FilterName = Literal["none", "near-copy"]
_FILTER_HELP = ("Synthesis filter: near-copy drops images closer to a training image than the real→real "
                "nearest-neighbour percentile and refills them deterministically; omitted = the model's default.")
_PERCENTILE_HELP = "near-copy threshold: real→real nearest-neighbour percentile, in (0, 50] (default 1)."


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _ModelBody(_Body):
    model: str = Field(description=f"Registered generator: {MODEL_REF_HELP}.", max_length=300)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_model(value)
        return value


class SynthesizeRequest(_ModelBody, _Conditioned):
    """Body of ``POST /v1/synthesize``."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": _EXAMPLE_MODEL, "n": 16, "seed": 0, "format": "png-zip"}]})

    n: int = Field(ge=1, description=f"Number of images; at most max_sync_images (see /healthz). Larger sets: {BATCHES_PATH}.")
    seed: Seed = Field(description="Latent seed; the same request always returns the same bytes.")
    cls: ClassRef | None = Field(default=None, alias="class",
                                 description="Class name or index, for conditional (or that class's) generators.")
    labels: MultiHot | None = _labels_field()
    format: Format = Field(default="png-zip", description="png-zip: zip of PNGs + manifest.json; npz: numpy arrays; "
                        "dicom-zip: zip of DICOM Secondary Capture files (ConversionType SYN) + manifest.json.")
    filter: FilterName | None = Field(default=None, description=_FILTER_HELP)
    filter_percentile: float | None = Field(default=None, gt=0, le=50, description=_PERCENTILE_HELP)


class BatchRequest(_ModelBody):
    """Body of ``POST /v1/batches``: a large set, generated in shards into the object store."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": _EXAMPLE_MODEL, "n": 100000, "seed": 7}]})

    n: int = Field(ge=1, description="Total number of images (up to batch_max_images).")
    seed: Seed = Field(description="Batch seed; each shard's seed derives from it, so a retried shard is identical.")
    per_class: dict[Annotated[str, Field(min_length=1, max_length=128)], Annotated[int, Field(ge=1)]] | None = Field(
        default=None, max_length=1000,
        description="Images per class (name or index) of a conditional generator; must sum to n.")
    filter: FilterName | None = Field(default=None, description=_FILTER_HELP)
    filter_percentile: float | None = Field(default=None, gt=0, le=50, description=_PERCENTILE_HELP)

    @model_validator(mode="after")
    def _counts_add_up(self) -> BatchRequest:
        if self.per_class is not None and sum(self.per_class.values()) != self.n:
            raise BadInput(f"per_class counts sum to {sum(self.per_class.values())}, but n is {self.n}")
        return self


class BatchCandidate(_Body):
    batch_id: str = Field(pattern=r"^b-[0-9a-f]{8,64}$", description="A succeeded batch (POST /v1/batches).")


class ModelCandidate(_ModelBody):
    n: int = Field(ge=2, description="Images to generate and score (at most max_fid_images).")
    seed: Seed = 0
    cls: ClassRef | None = Field(default=None, alias="class")


class FidRequest(_Body):
    """Body of ``POST /v1/fid``."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"reference": "phantom-knee@1a2b3c:gan-train", "candidate": {"model": _EXAMPLE_MODEL, "n": 500, "seed": 0}}]})

    reference: str = Field(min_length=1, max_length=300,
                           description="Catalog selection NAME[@VERSION][:SUBSET][:CLASS], e.g. phantom-knee@1a2b:gan-train:KL0.")
    candidate: BatchCandidate | ModelCandidate


class InterpolateRequest(_ModelBody, _Conditioned):
    """Body of ``POST /v1/latent/interpolate``: a straight line between two seeds' latents."""

    seed_a: Seed
    seed_b: Seed
    steps: int = Field(default=9, ge=2, le=64)
    cls: ClassRef | None = Field(default=None, alias="class")
    labels: MultiHot | None = _labels_field()
    format: Format = "png-zip"


class SweepRequest(_ModelBody, _Conditioned):
    """Body of ``POST /v1/latent/sweep``: one latent dimension from −4.2 to +4.2 (knee paper Fig. 4)."""

    seed: Seed
    dim: int = Field(ge=0, le=4096, description="Latent dimension to sweep.")
    steps: int = Field(default=9, ge=2, le=64)
    cls: ClassRef | None = Field(default=None, alias="class")
    labels: MultiHot | None = _labels_field()
    format: Format = "png-zip"


class TransitionRequest(_ModelBody, _Conditioned):
    """Body of ``POST /v1/latent/transition`` (chest paper, seed 003: label transitions).

    z stays fixed (from ``seed``) while condition ``condition`` moves from 0 to 1 in ``steps``
    equal steps on top of the base condition (``labels``, or ``class`` one-hot, else none).
    """

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "gan-chest-acgan-spine-small@champion", "seed": 0, "condition": "Pneumonia", "steps": 5}]})

    seed: Seed
    condition: ClassRef = Field(description="The condition (finding or class name, or index) that moves 0 → 1.")
    steps: int = Field(default=9, ge=2, le=64)
    cls: ClassRef | None = Field(default=None, alias="class", description="Base condition: this class one-hot.")
    labels: MultiHot | None = _labels_field()
    format: Format = "png-zip"


class AppArgs(BaseModel):
    """``args:`` of the application in serve_config.yaml (the one place to size the API)."""

    model_config = ConfigDict(extra="forbid")

    max_sync_images: int = Field(default=256, ge=1, le=65536)
    # Synthesizer request batching: images per forward batch (≥ max_sync_images) and wait.
    max_batch_images: int = Field(default=256, ge=1, le=65536)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, le=5)
    max_fid_images: int = Field(default=5000, ge=2, le=200_000)
    max_upload_images: int = Field(default=256, ge=1, le=65536)
    default_classifier: str = Field(default="classifier@champion", description="used when /v1/classify names none")
    default_segmenter: str = Field(default="segmenter@champion", description="used when /v1/segment names none")
    # torch intra-op threads of the Synthesizer, FidScorer and Classifier replicas; 0 = every CPU
    # the process may use. Ray would otherwise leave a fractional-CPU replica on one thread.
    torch_threads: int = Field(default=0, ge=0, le=256)
    # How often the ingress pulls the ModelDirectory's alias map (model_directory.DirectoryView):
    # requests resolve from that copy without a round trip; an alias move reaches them within
    # the registry poll plus this.
    alias_refresh_s: float = Field(default=0.5, gt=0, le=60)

    @model_validator(mode="after")
    def _batch_holds_a_request(self) -> AppArgs:
        if self.max_batch_images < self.max_sync_images:
            raise BadInput(f"max_batch_images ({self.max_batch_images}) must be >= max_sync_images "
                             f"({self.max_sync_images}): one synchronous request must fit one batch")
        return self
