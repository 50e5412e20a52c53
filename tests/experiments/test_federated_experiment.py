"""Federated experiment (issue 27, the chest paper's comparison): config checks and a tiny run on the stack.

The stack test runs ``phantom-federated-tiny.yaml`` (2 phantom sites, fraction 1.0, 2 rounds of one
local iteration, batch 4, one critic step, 64-d features): all three arms, one seed. It is about the
plumbing (equal work, every arm scored on the pooled reference each round, table with CIs, curves,
plot, MLflow runs), not image quality: after 2 updates per round every arm draws noise.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from infra.errors import BadInput
from infra.settings import Settings
from services.cli.main import main
from training.experiments.federated_config import FederatedExperimentConfig

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "experiments" / "configs"
TINY = CONFIGS / "phantom-federated-tiny.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federated.yaml"
    path.write_text(text)
    return path


# -- config (no stack) ---------------------------------------------------------------------------
def test_shipped_configs_load_and_the_paper_config_has_its_settings() -> None:
    paper = FederatedExperimentConfig.load(CONFIGS / "chest-federated.yaml")
    hp = paper.gan.hyperparameters()
    assert (paper.sites, paper.fraction, paper.local_iters, paper.average) == (20, 0.1, 10, "g+d")
    assert (hp["batch_size"], hp["gp_lambda"], hp["critic_steps"], hp["loss"]) == (32, 10.0, 5, "wgan-gp")
    assert paper.sampled_per_round() == 2 and paper.arms == ["federated", "centralised", "single-site"]
    for name in ("phantom-federated.yaml", "phantom-federated-tiny.yaml"):
        FederatedExperimentConfig.load(CONFIGS / name)


def test_equal_work_gives_every_arm_the_same_updates_or_the_same_sequence() -> None:
    cfg = FederatedExperimentConfig.load(TINY, {"sites": 4, "fraction": 0.5, "local_iters": 3, "rounds": 5,
                                                "fid_every": 2})
    assert {a: cfg.updates_per_round(a) for a in cfg.arms} == {"federated": 6, "centralised": 6, "single-site": 6}
    central = cfg.centralised("single-site", "d@v", 7)
    assert (central.epochs, central.steps_per_epoch, central.workers, central.subset, central.seed) == (5, 6, 1, "site-0", 7)
    assert cfg.eval_rounds() == [2, 4, 5]
    seq = FederatedExperimentConfig.load(TINY, {"sites": 4, "fraction": 0.5, "local_iters": 3, "equal_work": "rounds"})
    assert {a: seq.updates_per_round(a) for a in seq.arms} == {"federated": 6, "centralised": 3, "single-site": 3}


@pytest.mark.parametrize(("line", "field"), [
    ("fraction: 1.5", "fraction"),
    ("single_site: 2", "single_site"),
    ("gan: {arch: wgan-gp-knee-small, epochs: 3}", "gan.epochs"),
    ("gan: {arch: pggan-knee-mri-small}", "arch"),
    ("min_fit_clients: 3", "min_fit_clients"),
    ("arms: [federated, federated]", "arms"),
    ("average: d", "average"),
])
def test_bad_config_is_one_bad_input_naming_the_field(tmp_path: Path, line: str, field: str) -> None:
    key = line.split(":")[0]
    text = "\n".join(raw for raw in TINY.read_text().splitlines() if not raw.startswith(f"{key}:")) + f"\n{line}\n"
    path = _write(tmp_path, text)
    with pytest.raises(BadInput, match=re.escape(field)) as err:
        FederatedExperimentConfig.load(path)
    assert str(err.value).startswith(str(path))
    out = CliRunner().invoke(main, ["experiment", "federated", "--config", str(path), "--dry-run"])
    assert out.exit_code == 1 and field in out.output and "Traceback" not in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1


# -- a tiny run on the stack -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sited(stack: Settings) -> str:
    from training.catalog.phantom import PhantomSpec
    from training.catalog.selection import catalog, publish_phantom
    from training.federated.sites import publish_sites

    manifest = publish_phantom(30, PhantomSpec(size=64, seed=5), name="phantom-fed-exp", settings=stack,
                               progress=lambda _: None)
    return str(publish_sites(catalog(stack), str(manifest.ref), 2).ref)


@pytest.fixture(scope="module")
def ran(stack: Settings, sited: str, tmp_path_factory):
    from training.experiments.federated_runner import run_federated_experiment

    out = tmp_path_factory.mktemp("federated-experiment")
    cfg = FederatedExperimentConfig.load(TINY, {"dataset": sited, "output": str(out)})
    lines: list[str] = []
    result = run_federated_experiment(cfg, settings=stack, progress=lines.append)
    print("\n".join(lines))
    return cfg, result


@pytest.mark.stack
def test_plan_refuses_another_number_of_sites(stack: Settings, sited: str) -> None:
    from training.experiments.federated_runner import plan_federated

    with pytest.raises(BadInput, match="has 2 site subsets, not sites 3") as err:
        plan_federated(FederatedExperimentConfig.load(TINY, {"dataset": sited, "sites": 3}), stack)
    assert err.value.field == "sites"


@pytest.mark.stack
def test_table_has_one_row_per_arm_with_equal_work_and_bootstrap_cis(ran, stack: Settings, sited: str) -> None:
    from training.catalog.selection import catalog

    cfg, result = ran
    manifest = catalog(stack).manifest(sited)
    sizes = [len(manifest.subset(f"site-{i}")) for i in range(2)]
    assert [r.arm for r in result.rows] == ["federated", "centralised", "single-site"]
    assert [r.n_train for r in result.rows] == [sum(sizes), sum(sizes), sizes[0]]
    assert {r.updates for r in result.rows} == {2 * 2 * 1}  # R · m · E for every arm (equal_work: updates)
    assert {r.images_seen for r in result.rows} == {4 * 4}  # updates · b
    for row in result.rows:
        assert sorted(row.curve) == [1, 2] and all(len(v) == 1 and v[0] > 0 for v in row.curve.values())
        (seed,) = row.per_seed
        assert seed.fid == row.curve[2][0] == row.fid.mean  # the table's FID is the last round's
        # one seed: the CI is the percentile bootstrap over images (both sets resampled), 20 draws
        assert math.isfinite(seed.low) and seed.low < seed.high and (row.fid.low, row.fid.high) == (seed.low, seed.high)
    lines = result.table.strip().splitlines()
    assert len(lines) == 4 + 3 and lines[2].startswith("| Arm |") and "bootstrap CI over images, 20 draws" in lines[0]
    frame = pd.read_csv(result.output / "results.csv")
    assert list(frame["arm"]) == ["federated", "centralised", "single-site"]
    np.testing.assert_allclose(frame["fid_mean"], [r.fid.mean for r in result.rows], rtol=1e-12)
    curves = pd.read_csv(result.output / "curves.csv")
    assert len(curves) == 3 * 2 and set(curves["round"]) == {1, 2}


@pytest.mark.stack
def test_plot_and_mlflow_parent_with_the_arms_as_children(ran, stack: Settings) -> None:
    from mlflow import MlflowClient
    from PIL import Image

    from training.experiments.federated_runner import ARM_TAG

    cfg, result = ran
    image = np.asarray(Image.open(result.plot).convert("L"))
    assert image.shape[0] > 300 and image.std() > 5  # a drawn figure, not a blank canvas
    client = MlflowClient(stack.mlflow_tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sampled_per_round"] == "2"
    logged = {f.path for f in client.list_artifacts(result.parent_run_id, "results")}
    assert {"results/results.md", "results/results.csv", "results/fid_vs_rounds.png"} <= logged
    history = {m.step: m.value for m in client.get_metric_history(result.parent_run_id, "fid.single-site.seed0")}
    assert history == {rnd: v[0] for rnd, v in result.rows[2].curve.items()}
    for row in result.rows:
        (run_id,) = row.runs
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id and child.data.tags[ARM_TAG] == row.arm
    single = client.get_run(result.rows[2].runs[0])
    assert single.data.params["subset"] == "site-0" and single.data.params["n_train"] == str(result.rows[2].n_train)
    assert single.data.params["steps_per_epoch"] == "2" and single.data.params["workers"] == "1"
