"""Segmentation experiments (issue 26, knee-MRI paper's U-Net comparison): grid, sources, a 3-cell x 2-seed run.

The stack test publishes a 32 px phantom with masks and two paired generators of the
phantom's mask classes, both untrained (seeded) on purpose, as in the augmentation test: the
test is about the plumbing (real-only evaluation, pair synthesis and sizing, table with CIs,
paired tests, MLflow runs, registration), not about whether noise helps. Generator ``A`` is
registered (``models:/…``, lineage tags on the train split); generator ``B`` is a training
run's checkpoint in S3 (``s3://…``), the other kind of source a config may name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infra.settings import Settings
from services.cli.main import main
from training.catalog.phantom import MASK_CLASSES, PhantomSpec
from training.experiments.segment_config import SegmentCell, SegmentExperimentConfig, expand_segment_cells

ARCH = "dcgan-fracture-small"  # 64 px: the pairs are resized to the 32 px real images


def _cfg(**kw) -> SegmentExperimentConfig:
    return SegmentExperimentConfig.model_validate({"name": "t", "dataset": "d", "generators": {"A": "a@champion",
                                                                                               "B": "b/1"}} | kw)


# -- grid and config (no stack) ------------------------------------------------------------------
def test_knee_segment_grid_is_real_then_one_to_one_per_set_then_synthetic_only() -> None:
    cells = expand_segment_cells(_cfg())
    assert [c.name for c in cells] == ["Real", "Real + A 1:1", "Real + B 1:1", "Synthetic only (A)",
                                       "Synthetic only (B)"]
    assert [c.counts(40) for c in cells] == [(40, 0), (40, 40), (40, 40), (0, 40), (0, 40)]
    assert [c.name for c in expand_segment_cells(_cfg(tstr=False, ratio=2))] == ["Real", "Real + A 1:2", "Real + B 1:2"]
    assert expand_segment_cells(_cfg(tstr=False, ratio=2))[1].counts(40) == (40, 80)


def test_custom_segment_grid_needs_a_baseline() -> None:
    with pytest.raises(ValueError, match="one cell must be real-only"):
        expand_segment_cells(_cfg(grid="custom", tstr=False, cells=[SegmentCell(name="half", real=0.5)]))


@pytest.mark.parametrize(("text", "message"), [
    ("name: t\ndataset: d\n", "grid knee-segment needs at least one generator set under generators"),
    ("name: t\ndataset: d\ngenerators: {A: m}\nsegmenter: {arch: unet-huge}\n", "unknown segmenter preset 'unet-huge'"),
    ("name: t\ndataset: d\ngenerators: {A: m}\ngrid: custom\ncells: [{name: x, synthetic: 1, generators: Z}]\n",
     "cell 'x': generators 'Z' is not a generator set (A)"),
    ("name: t\ndataset: d\ngenerators: {A: m}\nclasifier: {}\n", "clasifier: Extra inputs are not permitted"),
])
def test_bad_segment_config_names_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "seg.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        SegmentExperimentConfig.load(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_paired_score_test_statistic_is_the_mean_difference() -> None:
    from training.evaluate.compare import paired_score_test

    a, b = np.array([0.9, 0.8, 0.7, 0.95]), np.array([0.5, 0.6, 0.4, 0.55])
    test = paired_score_test(a, b, n_resamples=1000)
    assert test.statistic == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    # 4 pairs, all differences positive: exact test over 2**4 swap patterns, two-sided p = 2/16.
    assert test.n_resamples == 16 and test.p_value == pytest.approx(2 / 16)


# -- on the stack --------------------------------------------------------------------------------
def _paired_generator(classes: list[str], seed: int):
    from training.nets.presets import get_preset

    preset = dataclasses.replace(get_preset(ARCH), mask_channels=len(classes))
    torch.manual_seed(seed)
    return preset.build()[0], preset


def _write_checkpoint(settings: Settings, manifest, classes: list[str] | None, seed: int) -> str:
    """A GAN run's checkpoint as the training loop writes it (``gan.pt`` in a Ray checkpoint folder in S3)."""
    from infra.ray_runtime import storage
    from training.gan.config import GanTrainConfig
    from training.gan.loop import CHECKPOINT_FILE

    cfg = GanTrainConfig(dataset=str(manifest.ref), arch=ARCH, masks=bool(classes), mask_classes=classes, split="train")
    generator, preset = _paired_generator(classes or [], seed) if classes else (None, None)
    if generator is None:
        from training.nets.presets import get_preset

        torch.manual_seed(seed)
        generator = get_preset(ARCH).build()[0]
    state = {"generator": generator.state_dict(), "generator_ema": generator.state_dict(), "epoch": 1,
             "num_classes": None, "config": cfg.model_dump(), "hyperparameters": {}}
    path, fs = storage(settings)
    key = f"{path}/segment-exp-test-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / CHECKPOINT_FILE)
        with fs.open_output_stream(f"{key}/{CHECKPOINT_FILE}") as out:
            out.write((Path(tmp) / CHECKPOINT_FILE).read_bytes())
    return f"s3://{key}"


@pytest.fixture(scope="module")
def knee(stack: Settings):
    """A 32 px phantom with masks, a registered paired generator and a paired checkpoint (both train-split lineage)."""
    from training.catalog.ingest import IngestOptions
    from training.catalog.selection import catalog, ingest_phantom
    from training.nets.sampler import GeneratorSampler
    from training.registry.generators import log_generator

    options = IngestOptions(name="phantom-seg-exp", layout="csv", preset="none", seed=6,
                            fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    manifest = ingest_phantom(50, PhantomSpec(size=32, seed=6), options, catalog(stack), lambda _: None,
                              masks=True).manifest
    classes = list(manifest.mask_classes)
    assert classes == list(MASK_CLASSES)
    generator, preset = _paired_generator(classes, 0)
    sampler = GeneratorSampler(generator, preset.latent_dim, mask_classes=classes)
    selection = {"split": "train", "labels": None, "limit": None, "subset": None, "balance": "none", "seed": 0}
    tags = {"dataset": str(manifest.ref), "dataset.selection": json.dumps(selection), "conditional": "False",
            "classes": json.dumps(manifest.classes), "mask_classes": json.dumps(classes)}
    reg = log_generator(sampler, "gan-seg-exp-test-A", alias="champion", tags=tags, settings=stack)
    return manifest, {"A": reg.uri, "B": _write_checkpoint(stack, manifest, classes, seed=1)}


def _write(tmp_path: Path, manifest, generators: dict, **extra) -> Path:
    cfg = {"name": "seg-test", "dataset": str(manifest.ref), "grid": "knee-segment", "tstr": False,
           "generators": generators, "segmenter": {"arch": "unet-small", "epochs": 2, "batch_size": 8},
           "repeats": 2, "permutations": 200, "bootstrap": 500, "register_name": "segmenter-seg-exp-test"} | extra
    path = tmp_path / "seg.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.mark.stack
def test_plan_pools_resize_pairs_and_take_prefixes(stack: Settings, knee, tmp_path: Path) -> None:
    from training.catalog.preprocess import resize_labels
    from training.catalog.selection import catalog
    from training.experiments.data import derived_seed
    from training.experiments.segment_data import assemble_pairs, synthesize_pairs
    from training.experiments.segment_runner import plan_segment
    from training.registry.generators import load_generator

    manifest, generators = knee
    p = plan_segment(SegmentExperimentConfig.load(_write(tmp_path, manifest, generators)), stack)
    n = len(p.pools.train)
    assert n == len(manifest.select(split="train")) and {r.split for r in p.pools.test} == {"test"}
    assert sum("disjoint from test and val" in line for line in p.guard) == 2
    assert p.sources["B"].model == generators["B"] and p.sources["A"].model.endswith("gan-seg-exp-test-A/1")
    synthetic = synthesize_pairs(p.cfg, p.cells, p.sources, n, (32, 32), stack, lambda _: None)
    images, masks = synthetic["A"]
    assert images.shape == masks.shape == (n, 32, 32) and images.dtype == masks.dtype == np.uint8
    big = load_generator(p.sources["A"].model, stack).generate_pairs(n, derived_seed(0, 0, 0))[1]
    np.testing.assert_array_equal(masks, np.stack([resize_labels(m, (32, 32)) for m in big]))  # nearest: same labels
    cat = catalog(stack)
    real = {s: (cat.read_pixels(getattr(p.pools, s)), cat.read_masks(getattr(p.pools, s))) for s in ("train", "val", "test")}
    data, jobs = assemble_pairs(p.cfg, p.cells, p.pools, real, synthetic, p.sources, {})
    np.testing.assert_array_equal(data.test_masks, real["test"][1])  # evaluation: the real test pairs, every cell
    index = {j.cell: j.train_index for j in jobs}
    np.testing.assert_array_equal(index["Real"], np.arange(n))
    np.testing.assert_array_equal(data.pool_masks[index["Real + A 1:1"][n:]], masks)
    np.testing.assert_array_equal(index["Real + B 1:1"], np.r_[np.arange(n), np.arange(2 * n, 3 * n)])
    assert len(jobs) == 3 * 2 and {j.seed for j in jobs} == {0, 1}


@pytest.mark.stack
@pytest.mark.parametrize(("kind", "message"), [
    ("unknown", r"generators\.A: .*no-such-gan"),
    ("missing", r"generators\.A: no GAN checkpoint at s3://\S+/no-such-checkpoint"),
    ("no-masks", r"generators\.A: s3://\S+ makes images without masks"),
    ("classes", r"generators\.A: s3://\S+ makes masks of classes \['background', 'bone'\], the dataset's are"),
], ids=["unknown", "missing", "no-masks", "classes"])
def test_bad_generator_is_one_line_naming_the_field_before_training(stack: Settings, knee, tmp_path: Path,
                                                                     kind: str, message: str) -> None:
    manifest, generators = knee
    source = {"unknown": "no-such-gan@champion",
              "missing": f"s3://{stack.bucket}/{stack.ray_results_prefix}/no-such-checkpoint",
              "no-masks": lambda: _write_checkpoint(stack, manifest, None, seed=2),
              "classes": lambda: _write_checkpoint(stack, manifest, ["background", "bone"], seed=2)}[kind]
    path = _write(tmp_path, manifest, {"A": source if isinstance(source, str) else source()})
    out = CliRunner().invoke(main, ["experiment", "segment", "--config", str(path), "--dry-run"])
    assert out.exit_code == 1 and re.search(message, out.output), out.output
    assert out.output.count("Error:") == 1 and "Traceback" not in out.output


@pytest.mark.stack
def test_dry_run_prints_the_plan(knee, tmp_path: Path) -> None:
    manifest, generators = knee
    out = CliRunner().invoke(main, ["experiment", "segment", "--config", str(_write(tmp_path, manifest, generators)),
                                    "--dry-run", "--repeats", "3"])
    assert out.exit_code == 0, out.output
    n = len(manifest.select(split="train"))
    assert "3 cell(s) x 3 seed(s) = 9 segmenter run(s) of unet-small" in out.output
    assert f"  Real + B 1:1: real {n}, synthetic {n} from B ({generators['B']})" in out.output


@dataclass(frozen=True)
class Ran:
    output: str
    parent_run_id: str
    frame: object  # results.csv
    table: str  # results.md


@pytest.fixture(scope="module")
def ran(stack: Settings, knee, tmp_path_factory) -> Ran:
    """The experiment through the real CLI in its own process (see the augmentation test's ``ran``)."""
    import subprocess
    import sys

    import pandas as pd

    from infra.tracking import configure

    manifest, generators = knee
    path = _write(tmp_path_factory.mktemp("seg"), manifest, generators)
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", "experiment", "segment", "--config", str(path)],
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parent = re.search(r"^parent run: .*/runs/([0-9a-f]{32})$", proc.stdout, re.M)[1]
    client = configure(stack).MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(parent, "results", tmp))
        return Ran(proc.stdout, parent, pd.read_csv(local / "results.csv"), (local / "results.md").read_text())


CELLS = ["Real", "Real + A 1:1", "Real + B 1:1"]


@pytest.mark.stack
def test_segment_table_has_per_class_dice_and_iou_with_cis(ran: Ran, stack: Settings, knee) -> None:
    from infra.tracking import configure

    rows, n = ran.frame, len(knee[0].select(split="train"))
    assert list(rows["set"]) == CELLS and list(rows["seeds"]) == [2] * 3
    assert list(zip(rows["n_real"], rows["n_synthetic"], strict=True)) == [(n, 0), (n, n), (n, n)]
    for cls in MASK_CLASSES[1:]:
        for metric in ("dice", "iou"):
            low, mean, high = (rows[f"{metric}/{cls}{s}"] for s in ("_ci_low", "_mean", "_ci_high"))
            assert ((0 <= low) & (low <= mean + 1e-12) & (mean <= high + 1e-12) & (high <= 1)).all(), (metric, cls)
    # Dice per cell is the mean of its child runs' test Dice, as MLflow recorded them.
    client = configure(stack).MlflowClient()
    children = client.search_runs([client.get_run(ran.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{ran.parent_run_id}'")
    assert {(c.data.tags["synthray.experiment.cell"], c.data.tags["synthray.experiment.seed"]) for c in children} == {
        (cell, str(seed)) for cell in CELLS for seed in (0, 1)}
    for i, cell in enumerate(CELLS):
        dice = [c.data.metrics["test/dice"] for c in children if c.data.tags["synthray.experiment.cell"] == cell]
        assert rows["dice_mean"][i] == pytest.approx(np.mean(dice), abs=1e-9)
    # Paired by (seed, image), equal images per seed: Δ is exactly the difference of the Dice means.
    np.testing.assert_allclose(rows["delta_dice_vs_baseline"][1:], rows["dice_mean"][1:] - rows["dice_mean"][0],
                               atol=1e-9)
    assert math.isnan(rows["p_value"][0]) and rows["p_value"][1:].between(0, 1, inclusive="right").all()
    header = ran.table.splitlines()[2]
    for column in ("Set", "Dice", "IoU", "Dice femur", "IoU fibula", "Best val Dice", "Δ Dice vs Real (p)"):
        assert f"| {column} |" in header
    assert "segmenter: 6 run(s)" in ran.output and f"| Real + B 1:1 | {n} | {n} |" in ran.output
    artifacts = {a.path for a in client.list_artifacts(ran.parent_run_id, "results")}
    assert {"results/results.csv", "results/results.md", "results/guard.txt"} <= artifacts


@pytest.mark.stack
def test_best_validation_dice_is_the_registered_champion(ran: Ran, stack: Settings) -> None:
    from infra.tracking import configure

    client = configure(stack).MlflowClient()
    champion = client.get_model_version_by_alias("segmenter-seg-exp-test", "champion")
    assert re.search(rf"^segmenter: models:/segmenter-seg-exp-test/{champion.version} "
                     r"\(models:/segmenter-seg-exp-test@champion\)$", ran.output, re.M)
    children = client.search_runs([client.get_run(ran.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{ran.parent_run_id}'")
    best = max(c.data.metrics["best_val_dice"] for c in children)
    assert float(champion.tags["val_dice"]) == pytest.approx(best, abs=1e-6)
    assert champion.tags["experiment_run"] == ran.parent_run_id
