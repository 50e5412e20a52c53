"""The ``Synthesizer`` deployment: registered generators → packaged images.

* **Multiplexing.** A few generators per replica (``@serve.multiplexed``, LRU), keyed by the
  concrete ``models:/NAME/VERSION`` URI, so a moved alias never serves a stale model and
  the router sends a request to a replica that already holds its model.
* **Batching by images, not requests.** ``@serve.batch`` with ``batch_size_fn`` = total
  images: many small requests share forward passes, and one 256-image request is not
  merged with others into a 2,000-image pass. Sizes come from serve_config.yaml.
* **Determinism survives batching.** Each request's latents come from its own seed, and
  :meth:`GeneratorSampler.render` runs fixed-shape passes in which a row depends only on its
  own latent; so an image is byte-identical whether its request ran alone or batched.
* **Near-copy filter** (``filter=near-copy``, :mod:`training.evaluate.nearcopy`): the request
  runs alone (not batched) on the torch thread: render, Inception features, query the version's
  training index, refill rejected rows from the replacement stream. The version's index is read
  once per replica from its model artifacts. What it did (rejections, their rows and stream
  positions) comes back beside the bytes and goes into the manifest and the response headers.
* **Image + mask pairs.** A generator trained with masks (:mod:`training.nets.masks`) returns
  each image with its argmax label map from the same forward pass: ``mask-NNNNN.png`` next to
  ``img-NNNNN.png`` in a png-zip, a ``masks`` array in an npz, their classes in the manifest.
  Same request, same bytes, masks included. dicom-zip and the near-copy filter refuse pairs
  (422); the latent tools return the image channel.
* **Latent tools** (knee paper, Fig. 4): a linear path between the latents of two seeds, and
  one latent dimension swept from −4.2 to +4.2 around a seed's latent; both take a condition
  (``class``, or multi-hot ``labels``). The chest paper's label transition holds z fixed and
  moves one condition from 0 to 1, returning frames and difference maps.

Client errors (unknown class, a class for an unconditional model) come back as a
:class:`~infra.errors.BadInput` value naming the field, returned rather than raised, so the
replica does not log a traceback for an ordinary client error.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from infra.errors import BadInput, SynthrayError
from infra.settings import Settings, get_settings
from services.serving.model_directory import ModelRef

MODELS_PER_REPLICA = 3  # generators cached per replica (LRU)
SWEEP_RANGE = (-4.2, 4.2)  # knee paper, Fig. 4


@dataclass(frozen=True)
class _Job:
    """One request's share of a batched forward pass."""

    sampler: Any  # GeneratorSampler (torch stays out of this module's import)
    n: int
    seed: int
    label: int | tuple[int, ...] | None  # class index, or multi-hot findings of a multi-label generator


@dataclass(frozen=True)
class _Pairs:
    """An image + mask generator's share of a render: uint8 images and (N, H, W) label maps."""

    images: np.ndarray
    masks: np.ndarray


def _job_images(jobs: Sequence[_Job]) -> int:
    return sum(job.n for job in jobs)


def resolve_label(sampler: Any, ref: ModelRef, value: str | int | None) -> int | None | BadInput:
    """A request's ``class`` (name or index) → the label to generate with, or why not.

    A per-class generator (trained on one class only) accepts its own class and nothing else.
    """
    if value is None:
        return None
    names = list(ref.classes)
    # Only ASCII digits are an index: "²".isdigit() is True, and int("²") would raise (a 500).
    if isinstance(value, str) and not re.fullmatch(r"[0-9]+", value):
        if value not in names:
            return BadInput(f"unknown class {value!r} for {ref.name}/{ref.version}; classes: {names}", field="class")
        index = names.index(value)
    else:
        index = int(value)
    if sampler.conditional:
        if not 0 <= index < sampler.num_classes:
            return BadInput(f"class {value!r} is outside {ref.name}/{ref.version}'s classes "
                            f"0..{sampler.num_classes - 1} {names}", field="class")
        return index
    if sampler.class_index is not None:
        if index != sampler.class_index:
            return BadInput(f"{ref.name}/{ref.version} was trained on class {sampler.class_name!r} "
                            f"(index {sampler.class_index}) only; got class {value!r}", field="class")
        return None
    return BadInput(f"{ref.name}/{ref.version} is unconditional; omit class", field="class")


def resolve_condition(sampler: Any, ref: ModelRef, cls: str | int | None, labels: Sequence[int] | None
                      ) -> int | tuple[int, ...] | None | BadInput:
    """A request's ``class`` or multi-hot ``labels`` → what the sampler generates with, or why not.

    ``labels`` need a multi-label generator and exactly one 0/1 entry per finding; a
    multi-label generator takes ``labels``, never ``class`` (its classes are findings, and an
    image may have several).
    """
    if labels is not None:
        try:
            sampler.condition(labels)
        except BadInput as err:
            return BadInput(f"{ref.name}/{ref.version}: {err.message}", field="labels")
        return tuple(int(v) for v in labels)
    if cls is not None and getattr(sampler, "is_multilabel", False):
        return BadInput(f"{ref.name}/{ref.version} is multi-label: give labels (one 0/1 per finding of "
                        f"{list(ref.classes)}) instead of class", field="class")
    return resolve_label(sampler, ref, cls)


def condition_index(sampler: Any, ref: ModelRef, value: str | int) -> int | BadInput:
    """The index of a transition's moving condition (finding or class name, or index)."""
    names = list(ref.classes)
    if isinstance(value, str) and not re.fullmatch(r"[0-9]+", value):
        if value not in names:
            return BadInput(f"unknown condition {value!r} for {ref.name}/{ref.version}; conditions: {names}",
                            field="condition")
        return names.index(value)
    if not 0 <= int(value) < sampler.num_classes:
        return BadInput(f"condition {value!r} is outside {ref.name}/{ref.version}'s conditions "
                        f"0..{sampler.num_classes - 1} {names}", field="condition")
    return int(value)


def difference_maps(frames: np.ndarray) -> np.ndarray:
    """uint8 maps of ``frame_i − frame_0``, encoded as ``(d + 255) // 2`` (127 = unchanged,
    0 = 255 darker, 255 = 255 brighter), so they travel as images next to the frames."""
    diff = frames.astype(np.int16) - frames[:1].astype(np.int16)
    return ((diff + 255) // 2).astype(np.uint8)


def resolve_filter(ref: ModelRef, name: str | None, percentile: float | None) -> tuple[str, float | None] | BadInput:
    """A request's ``filter`` (None = the version's ``filter.default`` tag) and ``filter_percentile``, or why not."""
    name = name or ref.tags.get("filter.default") or "none"
    if name == "near-copy" and "near_copy.threshold" not in ref.tags:
        return BadInput(f"{ref.name}/{ref.version} has no near-copy index (registered without a training run or "
                        "before the filter existed; register it again); use filter=none", field="filter")
    if name != "near-copy":
        if percentile is not None:
            return BadInput("filter_percentile applies only with filter=near-copy", field="filter_percentile")
        return name, None
    return name, 1.0 if percentile is None else float(percentile)


def _meta(ref: ModelRef, **extra: Any) -> dict[str, Any]:
    return {"model": ref.name, "version": ref.version, "run_id": ref.run_id, "uri": ref.uri} | extra


@serve.deployment
class Synthesizer:
    """Generator cache, request batching and packaging; torch and MLflow live here."""

    def __init__(self, max_batch_images: int = 256, batch_wait_timeout_s: float = 0.02, torch_threads: int = 0,
                 settings: Settings | None = None) -> None:
        # Settings (the MLflow URI) come from the SYNTHRAY_* variables that serve.up puts
        # into the application's runtime_env (a pod's environment in a cluster).
        from infra.cpus import set_torch_threads
        from infra.tracking import configure

        set_torch_threads(torch_threads)  # Ray gave this 0.3-CPU replica OMP_NUM_THREADS=1
        # Every forward pass runs on this one thread. torch's intra-op pool already uses all the
        # cores, and each extra Python thread that calls torch starts its own OpenMP team: two
        # teams then fight for the same cores (measured: a render 30 % slower than in-process).
        self._torch_thread = ThreadPoolExecutor(1, thread_name_prefix="synthesizer-torch")

        self._settings = settings or get_settings()
        configure(self._settings)
        self._max_batch_images = max_batch_images
        self._indexes: dict[str, Any] = {}  # near-copy index per version URI (the LRU's models, at most)
        self._render_batch.set_max_batch_size(max_batch_images)
        self._render_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def _generator(self, uri: str):
        from training.registry.generators import load_generator

        return await asyncio.to_thread(load_generator, uri, self._settings)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.02, batch_size_fn=_job_images)
    async def _render_batch(self, jobs: list[_Job]) -> list[np.ndarray]:
        return await self._on_torch_thread(self._render_jobs, jobs)

    async def _on_torch_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._torch_thread, fn, *args)

    @staticmethod
    def _render_jobs(jobs: Sequence[_Job]) -> list[np.ndarray | _Pairs]:
        """One fixed-shape render per generator in the batch, split back per request (an image +
        mask generator's share is a :class:`_Pairs`)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(jobs)
        by_model: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_model.setdefault(id(job.sampler), []).append(i)
        for indices in by_model.values():
            sampler = jobs[indices[0]].sampler
            z = torch.cat([sampler.latents(jobs[i].n, jobs[i].seed) for i in indices])
            labels = torch.cat([sampler.labels(jobs[i].n, jobs[i].label) for i in indices]) if sampler.conditional else None
            images, masks = sampler.render_pairs(z, labels)  # masks: None unless an image + mask generator
            bounds = np.cumsum([0] + [jobs[i].n for i in indices])
            for i, start, stop in zip(indices, bounds[:-1], bounds[1:], strict=True):
                out[i] = images[start:stop] if masks is None else _Pairs(images[start:stop], masks[start:stop])
        return out  # type: ignore[return-value]

    async def _pack(self, images: np.ndarray, meta: dict[str, Any], fmt: str, masks: np.ndarray | None = None
                    ) -> bytes:
        from services.serving.packaging import to_dicom_zip, to_npz, to_png_zip

        if fmt == "npz":  # stored npz: a copy and 64 hashes, well under a millisecond; a thread hop costs more
            return to_npz(images, meta, masks=masks)
        pairs = {} if masks is None else {"masks": masks}  # png-zip only: synthesize refuses dicom-zip for pairs
        pack = {"png-zip": to_png_zip, "dicom-zip": to_dicom_zip}[fmt]
        return await asyncio.to_thread(pack, images, meta, **pairs)

    async def synthesize(self, ref: ModelRef, n: int, seed: int, cls: str | int | None, fmt: str,
                         labels: Sequence[int] | None = None, filter: str = "none", percentile: float | None = None,
                         ) -> tuple[bytes, dict[str, Any], dict[str, float]] | SynthrayError:
        """``n`` images of ``ref`` from ``seed`` (optionally of class ``cls``, or with multi-hot
        ``labels``), packaged as ``fmt``; the filter's report (``filter``/``percentile`` as
        resolved by :func:`resolve_filter`); and where the time went, in ms: ``render`` (the batch
        queue and the forward pass; with near-copy also the filter) and ``pack`` (the container),
        which the Api returns as ``Server-Timing``."""
        started = time.perf_counter()
        masks, mask_meta = None, {}
        if filter == "near-copy":
            found = await self._filtered(ref, n, seed, cls, labels, percentile)
            if isinstance(found, SynthrayError):
                return found
            images, report = found
        else:
            images, report = await self._rendered(ref, n, seed, cls, labels), {"filter": "none", "rejected": 0}
            if isinstance(images, SynthrayError):
                return images
            if isinstance(images, _Pairs):
                if fmt == "dicom-zip":
                    return BadInput(f"{ref.name}/{ref.version} makes image + mask pairs; dicom-zip carries no "
                                    "masks, use png-zip or npz", field="format")
                images, masks = images.images, images.masks
                mask_meta = {"mask_classes": list((await self._generator(ref.uri)).mask_classes)}
        # unfiltered responses keep their manifest (and bytes) as before the filter existed
        extra = ({"class": cls} if cls is not None else {}) | ({"labels": list(labels)} if labels is not None else {})
        meta = _meta(ref, seed=seed, **extra, **mask_meta, **({"filter": report} if filter == "near-copy" else {}))
        rendered = time.perf_counter()
        data = await self._pack(images, meta, fmt, masks)
        return data, report, {"render": 1e3 * (rendered - started), "pack": 1e3 * (time.perf_counter() - rendered)}

    async def _filtered(self, ref: ModelRef, n: int, seed: int, cls: str | int | None,
                        labels: Sequence[int] | None, percentile: float | None
                        ) -> tuple[np.ndarray, dict[str, Any]] | SynthrayError:
        from training.evaluate.nearcopy import embedder, filtered_generate

        sampler = await self._generator(ref.uri)
        label = resolve_condition(sampler, ref, cls, labels)
        if isinstance(label, SynthrayError):
            return label
        if getattr(sampler, "paired", False):  # the filter refills rows by image alone; masks would be lost
            return BadInput(f"{ref.name}/{ref.version} makes image + mask pairs; the near-copy filter does not "
                            "handle masks yet, use filter=none", field="filter")
        index = self._indexes.get(ref.uri)
        if index is None:
            from training.registry.privacy import load_index

            index = await asyncio.to_thread(load_index, ref.uri, self._settings)
            if index is None:
                return BadInput(f"{ref.name}/{ref.version} has no near-copy index; use filter=none", field="filter")
            while len(self._indexes) >= MODELS_PER_REPLICA:
                self._indexes.pop(next(iter(self._indexes)))
            self._indexes[ref.uri] = index

        def run() -> tuple[np.ndarray, dict[str, Any]]:
            images, report = filtered_generate(sampler, n, seed, index, embedder(index, self._settings), label,
                                               percentile or 1.0)
            return images, report.as_dict()

        try:
            return await self._on_torch_thread(run)
        except SynthrayError as exc:  # Conflict: the generator could not fill the request with non-copies
            return exc

    async def images(self, ref: ModelRef, n: int, seed: int, cls: str | int | None,
                     labels: Sequence[int] | None = None) -> np.ndarray | SynthrayError:
        """The raw uint8 images of a synthesize request (for FID scoring), same pixels as synthesize."""
        found = await self._rendered(ref, n, seed, cls, labels)
        return found.images if isinstance(found, _Pairs) else found

    async def _rendered(self, ref: ModelRef, n: int, seed: int, cls: str | int | None,
                        labels: Sequence[int] | None = None) -> np.ndarray | _Pairs | SynthrayError:
        """A request's images, or an image + mask generator's :class:`_Pairs` (one batched render)."""
        sampler = await self._generator(ref.uri)
        label = resolve_condition(sampler, ref, cls, labels)
        if isinstance(label, SynthrayError):
            return label
        job = _Job(sampler, n, seed, label)
        if n > self._max_batch_images:  # e.g. FID candidates: too big to share a batch, and needs none
            return (await self._on_torch_thread(self._render_jobs, [job]))[0]
        return await self._render_batch(job)

    async def class_indices(self, ref: ModelRef, per_class: dict[str, int]) -> dict[int, int] | SynthrayError:
        """A batch's ``per_class`` counts keyed by label index; only for conditional generators."""
        sampler = await self._generator(ref.uri)
        if not sampler.conditional or sampler.is_multilabel:
            return BadInput(f"per_class needs a single-label conditional generator; {ref.name}/{ref.version} is "
                            f"{'multi-label' if sampler.conditional else 'unconditional'}", field="per_class")
        counts: dict[int, int] = {}
        for name, count in per_class.items():
            label = resolve_label(sampler, ref, name)
            if isinstance(label, SynthrayError):
                return BadInput(f"per_class: {label.message}", field="per_class")
            counts[label] = counts.get(label, 0) + count
        return counts

    async def interpolate(self, ref: ModelRef, seed_a: int, seed_b: int, steps: int, cls: str | int | None,
                          fmt: str, labels: Sequence[int] | None = None) -> bytes | SynthrayError:
        """``steps`` images along the straight line from seed_a's latent to seed_b's."""
        import torch

        sampler = await self._generator(ref.uri)
        label = resolve_condition(sampler, ref, cls, labels)
        if isinstance(label, SynthrayError):
            return label
        t = torch.linspace(0, 1, steps).unsqueeze(1)
        z = (1 - t) * sampler.latents(1, seed_a) + t * sampler.latents(1, seed_b)
        images = await self._render_latents(sampler, z, label)
        meta = _meta(ref, tool="interpolate", seed_a=seed_a, seed_b=seed_b, steps=steps)
        return await self._pack(images, meta, fmt)

    async def sweep(self, ref: ModelRef, seed: int, dim: int, steps: int, cls: str | int | None,
                    fmt: str, labels: Sequence[int] | None = None) -> bytes | SynthrayError:
        """``steps`` images: seed's latent with dimension ``dim`` set to −4.2 … +4.2."""
        import torch

        sampler = await self._generator(ref.uri)
        if not 0 <= dim < sampler.latent_dim:
            return BadInput(f"dim must be in 0..{sampler.latent_dim - 1} for {ref.name}/{ref.version}", field="dim")
        label = resolve_condition(sampler, ref, cls, labels)
        if isinstance(label, SynthrayError):
            return label
        z = sampler.latents(1, seed).repeat(steps, 1)
        z[:, dim] = torch.linspace(*SWEEP_RANGE, steps)
        images = await self._render_latents(sampler, z, label)
        meta = _meta(ref, tool="sweep", seed=seed, dim=dim, steps=steps, range=list(SWEEP_RANGE))
        return await self._pack(images, meta, fmt)

    async def transition(self, ref: ModelRef, seed: int, condition: str | int, steps: int, cls: str | int | None,
                         labels: Sequence[int] | None, fmt: str) -> bytes | SynthrayError:
        """Label transition (chest paper, seed 003): z of ``seed`` held fixed while ``condition``
        moves 0 → 1 in ``steps`` equal steps over the base condition (``labels`` / ``class``
        one-hot / none). Returns the ``steps`` frames, then their ``steps`` difference maps
        against the first frame (:func:`difference_maps`), in one package."""
        import torch

        sampler = await self._generator(ref.uri)
        if not sampler.conditional:
            return BadInput(f"{ref.name}/{ref.version} is unconditional: a label transition needs a conditional "
                            "generator", field="model")
        index = condition_index(sampler, ref, condition)
        if isinstance(index, SynthrayError):
            return index
        if cls is not None and getattr(sampler, "is_multilabel", False):
            return BadInput(f"{ref.name}/{ref.version} is multi-label: give the base condition as labels",
                            field="class")
        base = torch.zeros(sampler.num_classes)
        if labels is not None:
            resolved = resolve_condition(sampler, ref, None, labels)
            if isinstance(resolved, SynthrayError):
                return resolved
            base = torch.tensor(resolved, dtype=torch.float32)
        elif cls is not None:
            label = resolve_label(sampler, ref, cls)
            if isinstance(label, SynthrayError):
                return label
            base[label] = 1.0
        conditions = base.repeat(steps, 1)
        conditions[:, index] = torch.linspace(0, 1, steps)
        z = sampler.latents(1, seed).repeat(steps, 1)
        frames = await self._on_torch_thread(sampler.render, z, conditions)
        meta = _meta(ref, tool="transition", seed=seed, condition=list(ref.classes)[index] if ref.classes else index,
                     index=index, steps=steps, base=base.tolist(), values=conditions[:, index].tolist(),
                     frames=list(range(steps)), difference_maps=list(range(steps, 2 * steps)),
                     difference_encoding="(frame_i - frame_0 + 255) // 2; 127 = unchanged")
        return await self._pack(np.concatenate([frames, difference_maps(frames)]), meta, fmt)

    async def _render_latents(self, sampler: Any, z, label: int | tuple[int, ...] | None) -> np.ndarray:
        labels = sampler.labels(len(z), label) if sampler.conditional else None
        return await self._on_torch_thread(sampler.render, z, labels)
