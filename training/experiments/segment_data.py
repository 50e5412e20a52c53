"""The pairs of a segmentation experiment: paired generator sources, synthetic pools, jobs.

Real train/val/test (image, mask) pairs come from the catalog as in the augmentation
experiments (:func:`training.experiments.data.real_pools`); validation and test are real only
and the same for every cell. Each generator set gets one synthetic pool of pairs
(:meth:`GeneratorSampler.generate_pairs`), generated once with a seed derived from the
experiment's seed; each cell takes a prefix of it. Synthetic pairs are brought to the real
images' size (image bilinear, antialiased; mask nearest neighbour, so no new label value).
Seed r of every cell uses the same segmenter seed, which pairs the cells run by run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from infra.errors import BadInput, NotFound
from infra.progress import Progress
from training.experiments.data import RealPools, derived_seed, fit_size
from training.experiments.guard import Lineage, lineage, selection_lineage
from training.experiments.segment_config import CHECKPOINT_SCHEME, SegmentCell, SegmentExperimentConfig
from training.registry.refs import version_uri
from training.segment.loop import SegmenterData, SegmenterJob


@dataclass(frozen=True)
class PairSource:
    """One paired generator: a registry version (``models:/NAME/VERSION``) or a run checkpoint (``s3://…``)."""

    set_name: str
    model: str
    mask_classes: list[str]
    lineage: Lineage
    state: dict | None = None  # a checkpoint's loaded state (registry versions load on demand)


def _field(set_name: str) -> str:
    return f"generators.{set_name}"


def _check_classes(set_name: str, model: str, mask_classes: list[str] | None, dataset_classes: list[str]) -> list[str]:
    if not mask_classes:
        raise BadInput(f"{_field(set_name)}: {model} makes images without masks (train it with "
                       "`synthray train gan --masks`)", field=_field(set_name))
    if list(mask_classes) != list(dataset_classes):
        raise BadInput(f"{_field(set_name)}: {model} makes masks of classes {list(mask_classes)}, the dataset's are "
                       f"{list(dataset_classes)}", field=_field(set_name))
    return list(mask_classes)


def _checkpoint_source(set_name: str, uri: str, dataset_classes: list[str], catalog) -> PairSource:
    from training.gan.config import GanTrainConfig
    from training.gan.loop import checkpoint_state

    try:
        state = checkpoint_state(uri)
        config = state["config"]
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise BadInput(f"{_field(set_name)}: no GAN checkpoint at {uri} ({type(exc).__name__})",
                       field=_field(set_name)) from None
    cfg = GanTrainConfig(**config)
    classes = _check_classes(set_name, uri, config.get("mask_classes"), dataset_classes)
    return PairSource(set_name, uri, classes, selection_lineage(uri, cfg.dataset, cfg.selection(), catalog), state)


def resolve_pair_sources(cfg: SegmentExperimentConfig, cells: list[SegmentCell], dataset_classes: list[str],
                         client, catalog) -> dict[str, PairSource]:
    """Set name → :class:`PairSource` for every set a cell draws from, checked before any training.

    Raises:
        BadInput: naming ``generators.SET``: unknown model, no masks, or other mask classes.
        LeakageError: a registered version without lineage tags.
    """
    from training.registry.generators import resolve_version

    sources = {}
    for set_name in dict.fromkeys(c.generators for c in cells if c.synthetic):
        spec = cfg.generators[set_name]
        if spec.startswith(CHECKPOINT_SCHEME):
            sources[set_name] = _checkpoint_source(set_name, spec, dataset_classes, catalog)
            continue
        try:
            version = resolve_version(client, spec.removeprefix("models:/"))
        except (NotFound, BadInput) as exc:  # an outage (Unavailable) stays what it is
            raise BadInput(f"{_field(set_name)}: {exc}", field=_field(set_name)) from None
        model = version_uri(version.name, version.version)
        raw = (version.tags or {}).get("mask_classes")
        classes = _check_classes(set_name, model, json.loads(raw) if raw else None, dataset_classes)
        sources[set_name] = PairSource(set_name, model, classes, lineage(version, catalog))
    return sources


def _load(source: PairSource, settings):
    if source.state is None:
        from training.registry.generators import load_generator

        return load_generator(source.model, settings)
    from training.gan.trainer import sampler_from_state

    return sampler_from_state(source.state)


def synthesize_pairs(cfg: SegmentExperimentConfig, cells: list[SegmentCell], sources: dict[str, PairSource],
                     n_real: int, size: tuple[int, int], settings, progress: Progress
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Set name → (uint8 images (N, H, W), uint8 label maps (N, H, W)), N = the most any cell needs."""
    from training.catalog.preprocess import resize_labels

    pools = {}
    for index, (set_name, source) in enumerate(sources.items()):
        n = max(c.counts(n_real)[1] for c in cells if c.generators == set_name)
        sampler = _load(source, settings)
        started = time.perf_counter()
        images, masks = sampler.generate_pairs(n, derived_seed(cfg.seed, index, 0))
        progress(f"synthesize: {n} image + mask pairs from {source.model} "
                 f"({n / max(time.perf_counter() - started, 1e-9):.0f} pairs/s)")
        if masks.shape[1:] != size:
            masks = np.stack([resize_labels(m, size) for m in masks]) if n else np.empty((0, *size), np.uint8)
        pools[set_name] = (fit_size(images, size), masks)
    return pools


def assemble_pairs(cfg: SegmentExperimentConfig, cells: list[SegmentCell], pools: RealPools,
                   real: dict[str, tuple[np.ndarray, np.ndarray]], synthetic: dict[str, tuple[np.ndarray, np.ndarray]],
                   sources: dict[str, PairSource], base_params: dict) -> tuple[SegmenterData, list[SegmenterJob]]:
    """The training pool (real train pairs, then every synthetic pool) and one job per cell and seed.

    Args:
        real: split → (uint8 images, uint8 masks) of ``pools``' records, in the same order.
        synthetic: :func:`synthesize_pairs`' pools.
        base_params: logged on every job's run (hyperparameters, dataset).
    """
    blocks = [real["train"]] + list(synthetic.values())
    starts, offset = {}, len(real["train"][0])
    for set_name, (images, _) in synthetic.items():
        starts[set_name] = offset
        offset += len(images)
    data = SegmenterData(np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]),
                         *real["val"], *real["test"])
    n_pool = len(pools.train)
    jobs = []
    for cell in cells:
        n_real, n_syn = cell.counts(n_pool)
        index = [np.arange(n_real)]
        if n_syn:
            index.append(np.arange(starts[cell.generators], starts[cell.generators] + n_syn))
        train_index = np.concatenate(index).astype(np.int64)
        params = {**base_params, "cell": cell.name, "n_real": n_real, "n_synthetic": n_syn,
                  "generator_set": cell.generators or "-",
                  "generator": sources[cell.generators].model if n_syn else "-"}
        for r in range(cfg.repeats):
            seed = cfg.seed + r
            jobs.append(SegmenterJob(key=f"{cell.name} | seed {seed}", cell=cell.name, seed=seed,
                                     train_index=train_index, params=params))
    return data, jobs
