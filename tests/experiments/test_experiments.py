"""Augmentation experiments: grids, the leakage guard, and a whole knee-Table-5 run on the real stack.

The stack test publishes a two-class phantom (KL01 / KL234, as the knee paper merges grades),
registers one small generator per class with lineage tags pointing at the *train* split, and
runs the knee grid with the small CNN preset, 2 seeds and 2 epochs: minutes on two cores. The
generators are untrained (seeded) on purpose: the test is about the plumbing (real-only test
sets, nesting, table shape, MLflow runs, registration), not about whether noise helps.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infra.settings import Settings
from services.cli.main import main
from training.experiments.config import Cell, ExperimentConfig, expand_cells
from training.experiments.data import derived_seed

CLASSES = ["KL01", "KL234"]


def _cfg(**kw) -> ExperimentConfig:
    base = {"name": "t", "dataset": "d@v", "generators": {"wgan": {"per_class": {"KL01": "a@champion",
                                                                             "KL234": "b@champion"}}}}
    return ExperimentConfig.model_validate(base | kw)


# -- grids (no stack) ------------------------------------------------------------------------
def test_knee_table5_grid_is_nested_and_ends_with_replace() -> None:
    cells = expand_cells(_cfg(grid="knee-table5"), {"KL01": 100, "KL234": 100})
    assert [c.name for c in cells] == ["Real", "+50 %", "+100 %", "+150 %", "+200 %", "Replace real 100 %"]
    assert [c.n_synthetic for c in cells] == [0, 100, 200, 300, 400, 200]
    assert [c.real for c in cells] == [1, 1, 1, 1, 1, 0]
    assert cells[1].synthetic == {"KL01": 50, "KL234": 50}  # the fraction applies per class
    # "Replace real 100 %" is already train-on-synthetic: no extra TSTR cell.
    assert not any(c.name.startswith("TSTR") for c in cells)


def test_fracture_table4_adds_only_the_named_class() -> None:
    cfg = _cfg(grid="fracture-table4", augment_class="KL01")
    cells = expand_cells(cfg, {"KL01": 365, "KL234": 133})
    assert [c.name for c in cells[:4]] == ["+0 %", "+10 % KL01", "+50 % KL01", "+100 % KL01"]
    assert [c.synthetic for c in cells[1:4]] == [{"KL01": 36}, {"KL01": 182}, {"KL01": 365}]
    assert cells[-1].name == "TSTR (wgan)" and cells[-1].real == 0 and cells[-1].synthetic == {"KL01": 365, "KL234": 133}
    with pytest.raises(ValueError, match="augment_class 'normal' is not a class"):
        expand_cells(_cfg(grid="fracture-table4"), {"KL01": 10, "KL234": 10})


def test_spine_methods_one_cell_per_generator_set() -> None:
    sets = {m: {"conditional": f"gan-{m}@champion"} for m in ("I", "II", "III", "IV")}
    cells = expand_cells(_cfg(grid="spine-methods", generators=sets, per_class=200), {"h": 527, "a": 40, "p": 90})
    assert [c.name for c in cells[:5]] == ["Original", "I", "II", "III", "IV"]
    assert all(c.synthetic == {"h": 200, "a": 200, "p": 200} for c in cells[1:5])
    assert [c.name for c in cells[5:]] == ["TSTR (I)", "TSTR (II)", "TSTR (III)", "TSTR (IV)"]


def test_custom_grid_needs_a_baseline_and_known_classes() -> None:
    cfg = _cfg(grid="custom", cells=[Cell(name="half", real=0.5)])
    with pytest.raises(ValueError, match="one cell must be real-only"):
        expand_cells(cfg, {"KL01": 10, "KL234": 10})
    cfg = _cfg(grid="custom", cells=[Cell(name="r"), Cell(name="x", synthetic={"KL9": 3}, generators="wgan")])
    with pytest.raises(ValueError, match=r"cell 'x': \['KL9'\] are not classes"):
        expand_cells(cfg, {"KL01": 10, "KL234": 10})


@pytest.mark.parametrize(("text", "message"), [
    ("name: t\ndataset: d\ngrid: knee-table5\n", "grid knee-table5 needs at least one generator set under generators"),
    ("name: t\ndataset: d\nrepeats: 0\ngenerators: {g: {conditional: m@champion}}\n", "repeats: Input should be"),
    ("name: t\ndataset: d\nclasifier: {}\n", "clasifier: Extra inputs are not permitted"),
    ("name: t\ndataset: d\ngenerators: {g: {conditional: a, per_class: {x: b}}}\n", "generators.g"),
    ("name: t\ndataset: d\nmetric: f2\ngenerators: {g: {conditional: m}}\n", "metric 'f2' is not one of"),
    ("name: t\ndataset: d\nclassifier: {arch: vgg99}\ngenerators: {g: {conditional: m}}\n", "classifier"),
    ("name: [t\n", "not valid YAML"),
])
def test_bad_config_names_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        ExperimentConfig.load(path)
    assert str(err.value).startswith(str(path)) or "--config" in str(err.value)
    assert message in str(err.value), str(err.value)


def test_overrides_reach_nested_fields(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\ndataset: d\ngenerators: {g: {conditional: m@champion}}\n")
    cfg = ExperimentConfig.load(path, {"repeats": 2, "classifier.epochs": 3})
    assert cfg.repeats == 2 and cfg.classifier.hyperparameters()["epochs"] == 3


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derived_seed(0, 1, 2, 0) == derived_seed(0, 1, 2, 0)
    assert len({derived_seed(0, s, c, k) for s in range(3) for c in range(3) for k in range(2)}) == 18


# -- on the stack ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def knee(stack: Settings):
    """A two-class phantom and one registered (untrained) generator per class with train-split lineage."""
    from training.catalog.selection import catalog, ingest_phantom
    from training.catalog.ingest import IngestOptions
    from training.registry.generators import log_generator
    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler
    from training.catalog.phantom import PhantomSpec

    options = IngestOptions(name="phantom-knee-binary", layout="csv", preset="none", seed=3,
                            merges={"KL01": ["KL0", "KL1"], "KL234": ["KL2", "KL3", "KL4"]},
                            fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    manifest = ingest_phantom(300, PhantomSpec(size=64, seed=3), options, catalog(stack), lambda _: None).manifest
    assert manifest.classes == CLASSES
    spec = get_preset("wgan-gp-knee-small")
    models = {}
    for label, name in enumerate(CLASSES + ["leaky"]):
        torch.manual_seed(label)
        generator, _ = spec.build()
        sampler = GeneratorSampler(generator, spec.latent_dim, class_index=label % 2, class_name=CLASSES[label % 2])
        # What register_run writes: the exact selection the GAN trained on. "leaky" trained on every split.
        selection = {"split": None if name == "leaky" else "train", "labels": [label % 2], "limit": None,
                     "subset": None, "balance": "none", "seed": 0}
        tags = {"dataset": str(manifest.ref), "dataset.selection": json.dumps(selection), "conditional": "False",
                "classes": json.dumps(CLASSES), "class": CLASSES[label % 2]}
        reg = log_generator(sampler, f"gan-exp-test-{name}", alias="champion", tags=tags, settings=stack)
        models[name] = reg
    return manifest, models


def _write(tmp_path: Path, manifest, models, **extra) -> Path:
    cfg = {
        "name": "knee-t5-test", "dataset": str(manifest.ref), "grid": "knee-table5",
        "real": {"train": 40, "val": 20, "test": 20},
        "generators": {"wgan": {"per_class": {c: models[c].uri for c in CLASSES}}},
        "classifier": {"arch": "small-cnn", "epochs": 2, "batch_size": 16},
        "repeats": 2, "permutations": 200, "bootstrap": 500, "register_name": "classifier-exp-test",
    } | extra
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@dataclass(frozen=True)
class Ran:
    output: str
    parent_run_id: str
    frame: object  # results.csv as a DataFrame
    table: str  # results.md
    classifier: str  # models:/NAME/VERSION


@pytest.fixture(scope="module")
def ran(stack: Settings, knee, tmp_path_factory) -> Ran:
    """The experiment through the real CLI, in its own process (as a user runs it).

    A Ray Train run inside the pytest process has left the driver unable to reach actors
    created later (seen twice, in later modules' Serve and Ray Data calls), so training stays
    out of this process, as in test_demo.
    """
    import subprocess
    import sys

    import pandas as pd

    from infra.tracking import configure

    manifest, models = knee
    path = _write(tmp_path_factory.mktemp("exp"), manifest, models)
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", "experiment", "augment", "--config", str(path)],
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout[-6000:])  # progress and the table, for -s and failure reports
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parent = re.search(r"^parent run: .*/runs/([0-9a-f]{32})$", proc.stdout, re.M)[1]
    classifier = re.search(r"^classifier: (models:/\S+/\d+) \(", proc.stdout, re.M)[1]
    client = configure(stack).MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(parent, "results", tmp))
        return Ran(proc.stdout, parent, pd.read_csv(local / "results.csv"), (local / "results.md").read_text(),
                   classifier)


@pytest.mark.stack
def test_plan_uses_real_only_fixed_eval_sets_and_nested_cells(stack: Settings, knee, tmp_path: Path) -> None:
    from training.catalog.selection import catalog
    from training.experiments.data import assemble, synthesize
    from training.experiments.runner import plan

    manifest, models = knee
    p = plan(ExperimentConfig.load(_write(tmp_path, manifest, models)), stack)
    assert p.pools.counts("train") == {"KL01": 20, "KL234": 20} and p.pools.counts("test") == {"KL01": 10, "KL234": 10}
    assert {r.split for r in p.pools.test} == {"test"} and {r.split for r in p.pools.val} == {"val"}
    assert any("disjoint from test and val" in line for line in p.guard)
    cat = catalog(stack)
    real = {s: cat.read_pixels(getattr(p.pools, s)) for s in ("train", "val", "test")}
    synthetic = synthesize(p.cfg, p.cells, p.sources, p.pools, (64, 64), stack, lambda _: None)
    data, jobs = assemble(p.cfg, p.cells, p.pools, real, synthetic, p.sources, {})
    # The evaluation sets are exactly the catalog's real test/val images, whatever the cell.
    np.testing.assert_array_equal(data.test_images, real["test"])
    np.testing.assert_array_equal(data.val_images, real["val"])
    assert set(synthetic.tests) == {"wgan"} and len(synthetic.tests["wgan"][0]) == 20  # TRTS: synthetic, separate
    index = {j.cell: set(j.train_index.tolist()) for j in jobs}
    n_real = len(real["train"])
    assert index["Real"] == set(range(n_real))
    assert index["Real"] < index["+50 %"] < index["+100 %"] < index["+150 %"] < index["+200 %"]  # nested
    assert index["Replace real 100 %"].isdisjoint(range(n_real)) and len(index["Replace real 100 %"]) == 40
    assert len(jobs) == 6 * 2 and {j.seed for j in jobs} == {0, 1}


@pytest.mark.stack
def test_guard_refuses_a_generator_trained_on_the_test_split(stack: Settings, knee, tmp_path: Path) -> None:
    from training.experiments.guard import LeakageError
    from training.experiments.runner import run_experiment

    manifest, models = knee
    leaky = {"wgan": {"per_class": {"KL01": models["leaky"].uri, "KL234": models["KL234"].uri}}}
    cfg = ExperimentConfig.load(_write(tmp_path, manifest, models, generators=leaky))
    with pytest.raises(LeakageError, match=r"refused: models:/gan-exp-test-leaky/1 was trained on .*"
                                           r"shares data with the real test set: NOT disjoint: \d+ shared patient"):
        run_experiment(cfg, settings=stack, progress=lambda _: None)
    out = CliRunner().invoke(main, ["experiment", "augment", "--config", str(tmp_path / "exp.yaml"), "--dry-run"])
    assert out.exit_code == 1 and "refused: models:/gan-exp-test-leaky/1" in out.output


@pytest.mark.stack
def test_dry_run_prints_the_plan(knee, tmp_path: Path) -> None:
    manifest, models = knee
    out = CliRunner().invoke(main, ["experiment", "augment", "--config", str(_write(tmp_path, manifest, models)),
                                    "--dry-run", "--repeats", "3"])
    assert out.exit_code == 0, out.output
    assert "6 cell(s) x 3 seed(s) = 18 classifier run(s) of small-cnn" in out.output
    assert "  +50 %: real 100%, synthetic KL01 10, KL234 10 from wgan" in out.output


CELLS = ["Real", "+50 %", "+100 %", "+150 %", "+200 %", "Replace real 100 %"]


@pytest.mark.stack
def test_experiment_table_has_the_papers_shape(ran: Ran) -> None:
    rows = ran.frame
    assert list(rows["set"]) == CELLS
    assert list(zip(rows["n_real"], rows["n_synthetic"], strict=True)) == [
        (40, 0), (40, 20), (40, 40), (40, 60), (40, 80), (0, 40)]
    assert list(rows["seeds"]) == [2] * 6
    for column in ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "test_balanced_accuracy", "test_kappa"):
        mean, low, high = rows[f"{column}_mean"], rows[f"{column}_ci_low"], rows[f"{column}_ci_high"]
        assert ((low <= mean + 1e-12) & (mean <= high + 1e-12)).all(), column
    assert rows["test_accuracy_mean"].between(0, 1).all()
    assert math.isnan(rows["p_value"][0]) and rows["p_value"][1:].between(0, 1, inclusive="right").all()
    # Paired by (seed, image): Δ is exactly the difference of the table's mean accuracies.
    expected = rows["test_accuracy_mean"][1:] - rows["test_accuracy_mean"][0]
    np.testing.assert_allclose(rows["delta_vs_baseline"][1:], expected, atol=1e-9)
    # TSTR is the replace cell's accuracy; TRTS scores the real-only classifiers on synthetic images.
    assert rows["tstr_accuracy"][1] == pytest.approx(rows["test_accuracy_mean"][5])
    assert rows["trts_accuracy"][1:].between(0, 1).all() and math.isnan(rows["tstr_accuracy"][0])
    header = ran.table.splitlines()[2]
    for column in ("Set", "Test acc. %", "Test loss", "Best val acc. %", "Val loss", "TSTR acc. %", "TRTS acc. %"):
        assert column in header
    assert "classifier: 12 run(s)" in ran.output and "| Replace real 100 % | 0 | 40 |" in ran.output


@pytest.mark.stack
def test_mlflow_has_a_parent_with_one_child_per_cell_and_seed(ran: Ran, stack: Settings) -> None:
    from infra.tracking import configure

    client = configure(stack).MlflowClient()
    parent = client.get_run(ran.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{ran.parent_run_id}'")
    assert len(children) == 12
    assert {(c.data.tags["synthray.experiment.cell"], c.data.tags["synthray.experiment.seed"]) for c in children} == {
        (cell, str(seed)) for cell in CELLS for seed in (0, 1)}
    child = children[0]
    assert {"test/accuracy", "test/kappa", "test/roc_auc", "test/balanced_accuracy", "best_epoch"} <= set(child.data.metrics)
    assert child.data.tags["synthray.pretrained"] == "none (trained from scratch)"
    assert "plots/confusion_test.png" in {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    artifacts = {a.path for a in client.list_artifacts(ran.parent_run_id, "results")}
    assert {"results/results.csv", "results/results.md", "results/guard.txt",
            "results/accuracy_vs_synthetic_fraction.png"} <= artifacts


@pytest.mark.stack
def test_best_classifier_is_the_champion_and_classifies(ran: Ran, stack: Settings, knee) -> None:
    from infra.tracking import configure
    from training.registry.classifiers import load_classifier
    from training.catalog.selection import catalog

    manifest, models = knee
    client = configure(stack).MlflowClient()
    champion = client.get_model_version_by_alias("classifier-exp-test", "champion")
    assert ran.classifier == f"models:/classifier-exp-test/{champion.version}"
    classifier = load_classifier("models:/classifier-exp-test@champion", settings=stack)
    assert classifier.class_names == CLASSES
    records = manifest.select(split="test")[:8]
    proba = classifier.predict_proba(catalog(stack).read_pixels(records))
    assert proba.shape == (8, 2) and np.allclose(proba.sum(1), 1)
    best = min(client.search_runs([client.get_run(ran.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{ran.parent_run_id}'"),
               key=lambda r: r.data.metrics["best_val_loss"])
    assert champion.run_id == best.info.run_id  # the lowest validation loss, as the knee paper selects
    # The generators carry the classification accuracy score for their model cards.
    tags = client.get_model_version(models["KL01"].name, models["KL01"].version).tags
    assert float(tags["cas.tstr_accuracy"]) == pytest.approx(ran.frame["test_accuracy_mean"][5], abs=1e-6)
    assert 0 <= float(tags["cas.trts_accuracy"]) <= 1 and ran.parent_run_id in tags["cas.experiment"]


# -- the worker's training step, in-process (no Ray) ---------------------------------------------
def _toy_data(n: int = 48, seed: int = 0):
    """Two separable classes: dark and bright squares with noise."""
    from training.classify.loop import ClassifierData

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = (rng.normal(80 + 100 * labels[:, None, None], 20, (n, 64, 64))).clip(0, 255).astype(np.uint8)
    return ClassifierData(images, labels, images[:16], labels[:16], images[16:32], labels[16:32])


def test_train_job_selects_the_lowest_validation_loss_and_is_seeded() -> None:
    from training.classify.config import ClassifierTrainConfig
    from training.classify.loop import ClassifierJob, build_classifier, score, train_job

    data, cfg = _toy_data(), ClassifierTrainConfig(arch="small-cnn", epochs=3, batch_size=16)
    job = ClassifierJob(key="k", cell="Real", seed=5, train_index=np.arange(48))
    seen: list[tuple[int, dict]] = []
    runs = []
    for _ in range(2):
        model = build_classifier(cfg, CLASSES, job.seed)
        runs.append(train_job(model, job, data, cfg.hyperparameters(), torch.device("cpu"), 0, 1,
                              on_epoch=lambda e, m: seen.append((e, m))))
    (state, epoch, val_loss), (state2, epoch2, _) = runs
    assert epoch == epoch2 and all(torch.equal(state[k], state2[k]) for k in state)  # same seed, same weights
    first_run = [m["val_loss"] for _, m in seen[:3]]
    assert epoch == 1 + int(np.argmin(first_run)) and val_loss == pytest.approx(min(first_run))
    model = build_classifier(cfg, CLASSES, 0)
    model.load_state_dict(state)
    loss, proba = score(model, data.val_images, data.val_labels, torch.device("cpu"))
    assert loss == pytest.approx(val_loss, rel=1e-5) and proba.shape == (16, 2)


def test_binary_sigmoid_head_trains_and_predicts_two_columns() -> None:
    from training.classify.config import ClassifierTrainConfig
    from training.classify.loop import ClassifierJob, build_classifier, train_job

    data = _toy_data()
    cfg = ClassifierTrainConfig(arch="small-cnn", epochs=1, batch_size=16)
    model = build_classifier(cfg, CLASSES, 0)
    model.head = "sigmoid"  # small-cnn is softmax; exercise the knee VGG16's one-logit head on a small net
    model.backbone.head[-1] = torch.nn.Linear(64, 1)
    train_job(model, ClassifierJob(key="k", cell="c", seed=0, train_index=np.arange(48)), data,
              cfg.hyperparameters(), torch.device("cpu"), 0, 1)
    proba = model.predict_proba(data.test_images)
    assert proba.shape == (16, 2) and np.allclose(proba.sum(1), 1)


def test_epoch_order_splits_one_shuffle_evenly_across_workers() -> None:
    from training.classify.loop import epoch_order

    parts = [epoch_order(11, 3, 0, rank, 2) for rank in range(2)]
    assert len(parts[0]) == len(parts[1]) == 5 and set(parts[0]).isdisjoint(parts[1])
    assert not np.array_equal(epoch_order(11, 3, 0, 0, 1), epoch_order(11, 3, 1, 0, 1))


def test_cli_arch_choices_are_the_presets() -> None:
    from services.cli.train import train_classifier_cmd
    from training.nets.classifier_presets import CLASSIFIER_PRESETS

    arch = next(p for p in train_classifier_cmd.params if p.name == "arch")
    assert sorted(arch.type.choices) == sorted(CLASSIFIER_PRESETS)


def test_model_card_shows_the_classification_accuracy_score_when_recorded() -> None:
    from training.registry.cards import cas_section

    assert cas_section({"fid": "12.0"}) is None
    text = cas_section({"cas.tstr_accuracy": "0.674200", "cas.trts_accuracy": "0.9", "cas.test_set": "knee@v test"})
    assert "| train on synthetic, test on real (TSTR) | 67.42 % |" in text
    assert "| train on real, test on synthetic (TRTS) | 90.00 % |" in text and "| experiment | – |" in text


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "training/experiments/configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path: Path) -> None:
    from training.experiments.federated_config import FederatedExperimentConfig
    from training.experiments.segment_config import SegmentExperimentConfig

    if "-federated" in path.stem:  # experiment federated: no generators (it trains its own arms)
        assert FederatedExperimentConfig.load(path).name == path.stem
        return
    kind = SegmentExperimentConfig if "-segment" in path.stem else ExperimentConfig  # experiment segment / augment
    cfg = kind.load(path)
    assert cfg.name == path.stem and cfg.generators


@pytest.mark.stack
def test_pretrained_weights_load_from_the_object_store_after_a_hash_check(stack: Settings, store) -> None:
    import hashlib
    import io

    from training.classify.config import ClassifierTrainConfig
    from training.classify.loop import build_classifier
    from training.nets.classifier_presets import get_classifier_preset

    torch.manual_seed(123)
    source = get_classifier_preset("small-cnn").build(2)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    data = buffer.getvalue()
    store.put_bytes("weights/small-cnn-test.pt", data, content_type="application/octet-stream")
    uri, digest = store.uri("weights/small-cnn-test.pt"), hashlib.sha256(data).hexdigest()
    model = build_classifier(ClassifierTrainConfig(arch="small-cnn", pretrained=uri, pretrained_sha256=digest),
                             CLASSES, seed=0)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.backbone.state_dict().items())
    with pytest.raises(ValueError, match="does not match the expected"):
        build_classifier(ClassifierTrainConfig(arch="small-cnn", pretrained=uri, pretrained_sha256="0" * 64),
                         CLASSES, seed=0)
    with pytest.raises(ValueError, match="pretrained and pretrained_sha256 go together"):
        ClassifierTrainConfig(arch="small-cnn", pretrained=uri)


@pytest.mark.stack
def test_train_classifier_cli_on_two_ddp_workers(knee, stack: Settings, free_cpus) -> None:
    """`synthray train classifier`: Ray Train with 2 workers (DDP over gloo), registered as champion."""
    import subprocess
    import sys

    from infra.tracking import configure
    from training.registry.classifiers import load_classifier

    manifest, _ = knee
    free_cpus(stack.ray_num_cpus)  # both workers hold a CPU: earlier tests' actors must be gone
    try:  # own process: see the `ran` fixture. 600 s is under pytest's 900 s, so a hang shows its output
        proc = subprocess.run([sys.executable, "-m", "services.cli.main", "train", "classifier", "--dataset",
                               str(manifest.ref), "--arch", "small-cnn", "--epochs", "2", "--batch-size", "32",
                               "--workers", "2"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"train classifier hung for 600 s:\n{(hung.stdout or b'')[-3000:]!r}\n{(hung.stderr or b'')[-3000:]!r}",
                    pytrace=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"test: accuracy [\d.]+, balanced_accuracy [\d.]+, kappa -?[\d.]+, roc_auc [\d.]+", proc.stdout)
    # Rank 0's epochs reach the console only as the driver's bar; the workers' own log lines stay
    # in Ray's log files. Off a terminal the bar prints nothing for work under 30 s (infra.progress;
    # its line rules are tested in tests/cli/test_progress.py), so its lines are checked when present.
    bar_lines = [line for line in proc.stderr.splitlines() if line.startswith("classifier:")]
    assert all(re.match(r"classifier: runs x epochs: \d/2 epoch", line) for line in bar_lines), proc.stderr
    assert "[classifier]" not in proc.stdout + proc.stderr
    name = "classifier-phantom-knee-binary-small-cnn"
    assert f"classifier: models:/{name}/" in proc.stdout
    version = configure(stack).MlflowClient().get_model_version_by_alias(name, "champion")
    assert version.tags["synthray.kind"] == "classifier" and version.tags["dataset"] == str(manifest.ref)
    assert version.tags["synthray.pretrained"] == "none (trained from scratch)"
    assert load_classifier(f"models:/{name}@champion", settings=stack).class_names == CLASSES
