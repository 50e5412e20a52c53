"""The images of an augmentation experiment: fixed real splits, synthetic pools, and the jobs over them.

Real train/val/test come from the catalog (patient-disjoint splits, optional subset, balanced
per class); validation and test are real only and the same for every cell. Each (generator
set, class) gets one synthetic pool, generated once with a seed derived from the experiment's
seed, and each cell takes a prefix of it, so "+100 %" contains "+50 %" image for image.
Seed r of every cell uses the same classifier seed, which pairs the cells run by run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from training.catalog.store import ImageRecord, Manifest
from training.classify.loop import ClassifierData, ClassifierJob
from training.experiments.config import Cell, ExperimentConfig
from infra.errors import BadInput
from training.registry.refs import version_uri
from infra.progress import Progress

_TRAIN_POOL, _TEST_POOL = 0, 1  # seed streams of the synthetic training pools and test sets


@dataclass(frozen=True)
class RealPools:
    """The real records of each split, in class-then-manifest order."""

    classes: list[str]
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]

    def counts(self, split: str = "train") -> dict[str, int]:
        records = getattr(self, split)
        return {c: sum(r.label == i for r in records) for i, c in enumerate(self.classes)}


def _take(manifest: Manifest, split: str, count: int | None, subset: str | None, balanced: bool) -> list[ImageRecord]:
    records = manifest.select(split=split, subset=subset)
    where = f"dataset {manifest.ref} split {split!r}" + (f" subset {subset!r}" if subset else "")
    if not records:
        raise BadInput(f"{where} has no images")
    k = len(manifest.classes)
    by_class = [[r for r in records if r.label == i] for i in range(k)]
    if balanced:
        per_class = (count // k) if count else min(len(rs) for rs in by_class)
        short = [(manifest.classes[i], len(rs)) for i, rs in enumerate(by_class) if len(rs) < per_class]
        if short or per_class == 0:
            have = ", ".join(f"{c}: {n}" for c, n in short) or "too few for one per class"
            raise BadInput(f"{where}: a balanced {count or 'selection'} needs {per_class} images per class; "
                             f"it has {have}")
        return [r for rs in by_class for r in rs[:per_class]]
    if count and len(records) < count:
        raise BadInput(f"{where} has {len(records)} images, fewer than the {count} asked for")
    chosen = records[:count] if count else records
    return sorted(chosen, key=lambda r: r.label)


def real_pools(cfg: ExperimentConfig, manifest: Manifest) -> RealPools:
    sel = cfg.real
    pools = [_take(manifest, split, count, sel.subset, sel.balanced)
             for split, count in ((sel.train_split, sel.train), (sel.val_split, sel.val), (sel.test_split, sel.test))]
    return RealPools(list(manifest.classes), *pools)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (NumPy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class SyntheticSource:
    """One generator version serving one class of a generator set."""

    set_name: str
    class_name: str
    model: str  # models:/NAME/VERSION (concrete)
    label: int | None  # the generator's own class index (conditional generators)


def resolve_sources(cfg: ExperimentConfig, cells: list[Cell], classes: list[str], client) -> dict:
    """(set, class) → :class:`SyntheticSource` for every pair a cell draws from, with the version."""
    import json

    from training.registry.generators import resolve_version

    needed = {(c.generators, name) for c in cells for name, n in c.synthetic.items() if n}
    sources, versions = {}, {}
    for set_name, class_name in sorted(needed):
        spec = cfg.generators[set_name].model_for(class_name)
        if spec is None:
            raise BadInput(f"generators.{set_name}: no generator for class {class_name!r} "
                             f"(per_class names {', '.join(cfg.generators[set_name].per_class or {})})")
        version = versions.get(spec) or resolve_version(client, spec)
        versions[spec] = version
        label = None
        if version.tags.get("conditional") == "True":
            gen_classes = json.loads(version.tags.get("classes", "[]"))
            if class_name not in gen_classes:
                raise BadInput(f"generators.{set_name}: {spec} makes classes {gen_classes}, not {class_name!r}")
            label = gen_classes.index(class_name)
        sources[(set_name, class_name)] = SyntheticSource(set_name, class_name,
                                                          version_uri(version.name, version.version), label)
    return sources, versions


def fit_size(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 images to the real images' size (bilinear, antialiased, as the classifier does)."""
    if images.shape[1:] == size:
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass
class Synthesized:
    """Synthetic pools (set, class) → images, and test sets set → (images, labels)."""

    pools: dict = field(default_factory=dict)
    tests: dict = field(default_factory=dict)


def synthesize(cfg: ExperimentConfig, cells: list[Cell], sources: dict, pools: RealPools, size: tuple[int, int],
               settings, progress: Progress) -> Synthesized:
    """Generate each pool once (the largest count any cell needs) and, for TRTS, a test set per set."""
    from training.registry.generators import load_generator

    loaded: dict = {}
    out = Synthesized()
    set_index = {name: i for i, name in enumerate(cfg.generators)}

    def make(source: SyntheticSource, n: int, stream: int) -> np.ndarray:
        gen = loaded.get(source.model) or loaded.setdefault(source.model, load_generator(source.model, settings))
        seed = derived_seed(cfg.seed, set_index[source.set_name], pools.classes.index(source.class_name), stream)
        started = time.perf_counter()
        images = gen.generate(n, seed, label=source.label)
        progress(f"synthesize: {n} x {source.class_name} from {source.model} "
                 f"({n / max(time.perf_counter() - started, 1e-9):.0f} img/s)")
        return fit_size(images, size)

    for key, source in sources.items():
        n = max(c.synthetic.get(key[1], 0) for c in cells if c.generators == key[0])
        out.pools[key] = make(source, n, _TRAIN_POOL)
    if cfg.tstr:
        test_counts = pools.counts("test")
        for set_name in dict.fromkeys(k[0] for k in sources):
            parts = [(make(sources[(set_name, c)], n, _TEST_POOL), pools.classes.index(c))
                     for c, n in test_counts.items() if n and (set_name, c) in sources]
            if {pools.classes[label] for _, label in parts} == {c for c, n in test_counts.items() if n}:
                out.tests[set_name] = (np.concatenate([p for p, _ in parts]),
                                       np.concatenate([np.full(len(p), label) for p, label in parts]))
    return out


def assemble(cfg: ExperimentConfig, cells: list[Cell], pools: RealPools, real: dict[str, np.ndarray],
             synthetic: Synthesized, sources: dict, base_params: dict) -> tuple[ClassifierData, list[ClassifierJob]]:
    """The training pool (real train + every synthetic pool) and one job per cell and seed.

    Args:
        real: split → uint8 images of ``pools``' records, in the same order.
        base_params: logged on every job's run (hyperparameters, dataset).
    """
    labels = {s: np.array([r.label for r in getattr(pools, s)], dtype=np.int64) for s in ("train", "val", "test")}
    blocks, offset, starts = [real["train"]], len(real["train"]), {}
    block_labels = [labels["train"]]
    for key, images in synthetic.pools.items():
        starts[key] = offset
        blocks.append(images)
        block_labels.append(np.full(len(images), pools.classes.index(key[1]), dtype=np.int64))
        offset += len(images)
    data = ClassifierData(np.concatenate(blocks), np.concatenate(block_labels), real["val"], labels["val"],
                          real["test"], labels["test"], synthetic_tests=synthetic.tests)
    real_index = {i: np.flatnonzero(labels["train"] == i) for i in range(len(pools.classes))}
    jobs = []
    for cell in cells:
        index = [idx[: round(cell.real * len(idx))] for idx in real_index.values()]
        index += [np.arange(starts[(cell.generators, c)], starts[(cell.generators, c)] + n)
                  for c, n in cell.synthetic.items() if n]
        train_index = np.concatenate(index).astype(np.int64)
        n_real = sum(round(cell.real * len(idx)) for idx in real_index.values())
        params = {**base_params, "cell": cell.name, "n_real": n_real, "n_synthetic": cell.n_synthetic,
                  "synthetic_per_class": cell.synthetic, "generator_set": cell.generators or "-",
                  "generators": {c: sources[(cell.generators, c)].model for c in cell.synthetic
                                 if (cell.generators, c) in sources}}
        for r in range(cfg.repeats):
            seed = cfg.seed + r
            jobs.append(ClassifierJob(key=f"{cell.name} | seed {seed}", cell=cell.name, seed=seed,
                                      train_index=train_index, params=params,
                                      synthetic_eval=cell.is_baseline and bool(synthetic.tests)))
    return data, jobs
