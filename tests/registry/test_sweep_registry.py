"""Ray Tune sweeps, registration with model cards, gated promotion and rollback, on the real stack.

One small ASHA sweep (4 trials x 2 epochs, small preset, 1 worker each) is shared: its best
trial becomes version 1, its worst trial version 2, so "v2 does not beat the champion" is a
fact of the sweep rather than an assumption. Everything goes through the MLflow server over
HTTP, as MLOps would use it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from infra.object_store import ObjectStore
from infra.settings import Settings
from services.cli.main import main
from training.catalog.selection import publish_phantom
from training.catalog.store import Catalog
from training.gan.config import GanTrainConfig
from training.registry.generators import load_generator, register_run, registered_name
from training.registry.privacy import load_index
from training.catalog.phantom import PhantomSpec
from training.registry.promotion import PromotionGates, _memorization_gate
from training.gan.sweep import Distribution, SearchSpace, SweepConfig, run_sweep

TRIALS, EPOCHS = 4, 2


# -- search space (no stack) -------------------------------------------------------------------
def test_default_space_and_flag_overrides() -> None:
    space = SearchSpace.load(overrides={"batch_size": "choice:16,32", "lr_g": "loguniform:1e-5,1e-3"})
    assert space.describe()["batch_size"] == "choice(16, 32)"
    assert space.lr_g == Distribution(kind="loguniform", values=[1e-5, 1e-3])
    assert set(space.to_tune()) == {"lr", "lr_d", "critic_steps", "gp_lambda", "batch_size"}  # config fields


@pytest.mark.parametrize(("overrides", "message"), [
    ({"momentum": "choice:0.9"}, "--space momentum: not sweepable"),
    ({"batch_size": "uniform:8,64"}, "batch_size takes positive integers"),
    ({"lr_g": "loguniform:0,1e-3"}, "loguniform needs low > 0"),
    ({"lr_d": "uniform:1e-3,1e-5"}, "needs [low, high] with low < high"),
])
def test_bad_search_space_names_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SearchSpace.load(overrides=overrides)


def test_memorization_gate_fails_above_threshold() -> None:
    tags = {"memorization.fraction_below_real_p1": "0.25", "memorization.n_below_real_p1": "12",
            "memorization.n_fake": "48"}
    version = ModelVersion("gan-x", "3", 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])
    assert not _memorization_gate(version, PromotionGates(max_memorized_fraction=0.05)).passed
    result = _memorization_gate(version, PromotionGates(max_memorized_fraction=0.3))
    assert result.passed and result.value == "0.250 (12/48)"


# -- the sweep ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(stack: Settings) -> str:
    manifest = publish_phantom(160, PhantomSpec(size=64, seed=11), name="phantom-sweep-test",
                               settings=stack, progress=lambda _: None)
    return str(manifest.ref)


@pytest.fixture(scope="module")
def sweep(stack: Settings, dataset: str):
    base = GanTrainConfig(dataset=dataset, epochs=EPOCHS, workers=1, batch_size=32, limit=96, fid_n=48,
                          grid_size=4, keep_checkpoints=1)
    lines: list[str] = []
    # Fewer critic steps than the default space keeps four trials affordable on two cores.
    space = SearchSpace.load(overrides={"critic_steps": "choice:1,2"})
    result = run_sweep(SweepConfig(base=base, space=space, trials=TRIALS), settings=stack, progress=lines.append)
    return result, lines


@pytest.fixture(scope="module")
def client(stack: Settings):
    from infra.tracking import configure

    return configure(stack).MlflowClient()


@pytest.mark.stack
def test_sweep_parent_run_has_one_child_per_trial(sweep, client) -> None:
    result, lines = sweep
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == TRIALS == len(result.trials)
    assert {c.info.run_id for c in children} == {t.run_id for t in result.trials}
    assert {c.data.tags["synthray.sweep.trial_id"] for c in children} == {t.trial_id for t in result.trials}
    # The parent records the search space and the trial table.
    assert parent.data.params["space/lr_g"].startswith("loguniform(") and parent.data.params["scheduler"] == "asha"
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/trials.md", "sweep/search_space.json"} <= artifacts
    # Each child ran its own hyperparameters, drawn from the space.
    for child in children:
        assert 3e-5 <= float(child.data.params["lr"]) <= 3e-4 and child.data.params["critic_steps"] in {"1", "2"}
    assert any("sweep: 4 trials, ASHA on FID" in line for line in lines)


@pytest.mark.stack
def test_asha_stops_or_finishes_every_trial_and_keeps_its_best_checkpoint(sweep, client, stack: Settings) -> None:
    result, _ = sweep
    store = ObjectStore(stack)
    for trial in result.trials:
        run = client.get_run(trial.run_id)
        # Finished trials ran every epoch; trials ASHA stopped (at any rung) were closed as KILLED.
        assert run.info.status == {"DONE": "FINISHED", "STOPPED": "KILLED"}[trial.status], (trial, run.info.status)
        assert 1 <= trial.epochs <= EPOCHS and (trial.status == "STOPPED" or trial.epochs == EPOCHS)
        fids = [m.value for m in client.get_metric_history(trial.run_id, "fid")]
        assert trial.best_fid == pytest.approx(min(fids))
        bucket, _, key = run.data.tags["synthray.checkpoint"].removeprefix("s3://").partition("/")
        assert bucket == stack.bucket and store.exists(f"{key}/gan.pt")


@pytest.mark.stack
def test_best_trial_is_written_to_the_parent(sweep, client) -> None:
    result, _ = sweep
    parent = client.get_run(result.parent_run_id)
    best = min((t for t in result.trials if not math.isnan(t.best_fid)), key=lambda t: t.best_fid)
    assert result.best == best
    assert parent.data.metrics["best_fid"] == pytest.approx(best.best_fid)
    assert parent.data.tags["synthray.sweep.best_run_id"] == best.run_id
    assert parent.data.tags["synthray.checkpoint"].endswith(best.checkpoint.removeprefix("s3://"))


# -- registry and promotion --------------------------------------------------------------------
@pytest.fixture(scope="module")
def versions(sweep, stack: Settings):
    """v1 = the best trial, v2 = the worst (both via their best-FID checkpoints)."""
    result, _ = sweep
    ranked = sorted((t for t in result.trials if not math.isnan(t.best_fid)), key=lambda t: t.best_fid)
    best, worst = ranked[0], ranked[-1]
    assert best.best_fid < worst.best_fid
    first = register_run(best.run_id, checkpoint=best.checkpoint, settings=stack, progress=lambda _: None)
    second = register_run(worst.run_id, checkpoint=worst.checkpoint, settings=stack, progress=lambda _: None)
    return (best, first), (worst, second)


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.stack
def test_registration_carries_evaluation_tags_and_card(versions, client, dataset: str, stack: Settings) -> None:
    (trial, reg), _ = versions
    assert reg.name == registered_name(dataset, "wgan-gp-knee-small") and reg.version == "1"
    version = client.get_model_version(reg.name, reg.version)
    tags = version.tags
    # FID re-scored at registration with the training protocol equals the trial's best FID.
    assert float(tags["fid"]) == pytest.approx(trial.best_fid, rel=1e-4)
    assert tags["fid.n_real"] == tags["fid.n_fake"] == "48" and len(tags["fid.weights_sha256"]) == 64
    assert float(tags["kid.ci_low"]) <= float(tags["kid"]) <= float(tags["kid.ci_high"])
    assert tags["dataset"] == dataset and tags["run_id"] == trial.run_id and tags["git_commit"] != ""
    assert 0 <= float(tags["memorization.fraction_below_real_p1"]) <= 1
    assert json.loads(tags["dataset.selection"])["limit"] == 96
    assert client.get_model_version_by_alias(reg.name, "challenger").version == "2"  # the newest registration
    # Membership audit: members are the reference rows trained on (of the limit-96 selection),
    # non-members every held-out (val + test) image; splits are drawn by patient, so their count
    # comes from the manifest. DCR and the critic both attacked.
    held_out = sum(r.split != "train" for r in Catalog(ObjectStore(stack)).manifest(dataset).records)
    assert 2 <= int(tags["mia.n_members"]) < 48 and int(tags["mia.n_nonmembers"]) == held_out > 0
    assert float(tags["mia.auc_ci_low"]) <= float(tags["mia.auc"]) <= float(tags["mia.auc_ci_high"])
    assert float(tags["mia.auc"]) == max(float(tags["mia.dcr.auc"]), float(tags["mia.critic.auc"]))
    # two epochs on a phantom: members and held-out patients look alike to both attacks
    assert float(tags["mia.auc_ci_low"]) < 0.5 < float(tags["mia.auc_ci_high"]), tags["mia.auc"]
    metrics = client.get_run(trial.run_id).data.metrics
    assert metrics["mia_dcr_auc"] == pytest.approx(float(tags["mia.dcr.auc"]), abs=1e-6)
    # The near-copy index is the memorization audit's reference and threshold, packed with the model.
    assert float(tags["near_copy.threshold"]) == pytest.approx(float(tags["memorization.real_nn_p1"]), abs=1e-5)
    assert tags["filter.default"] == "none" and load_index(reg.version_uri, stack).n == 48
    card = _cli("registry", "show", f"{reg.name}/1").output
    for section in ("## Intended use", "## Data", "## Metrics", "## Privacy audit", "## Known limits",
                    "## Privacy audit (membership inference)", "discriminator score (LOGAN): AUC", "## Near-copy filter",
                    "sample_grid.png", "n_real = 48", "procedural phantom"):
        assert section in card, section
    assert version.description.rstrip("\n") == card.rstrip("\n")  # the card is also the version's description in the UI


@pytest.mark.stack
def test_promotion_gates_refuse_force_and_roll_back(versions, client) -> None:
    (_, first), (_, second) = versions
    name = first.name

    # No champion and no threshold: nothing to judge FID against, so refused.
    out = _cli("registry", "promote", name, "--version", "1")
    assert out.exit_code == 1 and "FAIL  fid" in out.output and "no champion yet" in out.output
    assert "champion" not in client.get_registered_model(name).aliases

    # The membership gate is pinned in tests/evaluate/test_privacy.py; opened here (AUC <= 1).
    out = _cli("registry", "promote", name, "--version", "1", "--max-fid", "100000", "--max-mia-auc", "1")
    assert out.exit_code == 0, out.output
    assert out.output.count("PASS") == 4 and "champion → v1" in out.output
    assert client.get_registered_model(name).aliases["champion"] == "1"

    # v2 (the worst trial) does not beat champion v1 on the same reference: refused, alias unchanged.
    out = _cli("registry", "promote", name, "--from", "challenger", "--max-mia-auc", "1")
    assert out.exit_code == 1 and "< champion v1" in out.output and "refused: gate(s) fid failed" in out.output
    assert client.get_registered_model(name).aliases["champion"] == "1"

    out = CliRunner().invoke(main, ["registry", "promote", name, "--from", "challenger", "--force"])
    assert out.exit_code == 1 and "--force needs --reason" in out.output

    out = _cli("registry", "promote", name, "--from", "challenger", "--force", "--reason", "pilot on ward B")
    assert out.exit_code == 0 and "forced: pilot on ward B" in out.output
    model = client.get_registered_model(name)
    assert model.aliases["champion"] == "2" and model.aliases["previous-champion"] == "1"
    assert model.tags["promotion.v2.forced_reason"] == "pilot on ward B"
    assert json.loads(model.tags["promotion.v2"])["forced"] is True

    out = _cli("registry", "rollback", name)
    assert out.exit_code == 0 and "champion v2 → v1" in out.output
    model = client.get_registered_model(name)
    assert model.aliases["champion"] == "1" and model.aliases["previous-champion"] == "2"

    listing = _cli("registry", "list", "--name", name).output
    assert "champion" in listing and f"{float(client.get_model_version(name, '1').tags['fid']):.2f}" in listing


@pytest.mark.stack
def test_registered_champion_generates_deterministically(versions, stack: Settings) -> None:
    (_, first), _ = versions
    a = load_generator(f"models:/{first.name}@champion", stack).generate(6, seed=42)
    b = load_generator(f"models:/{first.name}/1", stack).generate(6, seed=42)
    assert a.dtype == np.uint8 and a.shape == (6, 64, 64) and a.tobytes() == b.tobytes()
    assert not np.array_equal(a, load_generator(f"models:/{first.name}/2", stack).generate(6, seed=42))


@pytest.mark.stack
def test_sweep_cli_fails_fast_on_bad_input(stack: Settings, dataset: str) -> None:
    out = CliRunner().invoke(main, ["sweep", "gan", "--dataset", dataset, "--limit", "96",
                                    "--space", "batch_size=choice:32,512"])
    assert out.exit_code == 1 and "fewer than one batch of 512" in out.output
    out = CliRunner().invoke(main, ["sweep", "gan", "--dataset", dataset, "--space", "lr=choice:1"])
    assert out.exit_code == 1 and "--space lr: not sweepable" in out.output


@pytest.mark.stack
def test_membership_audit_on_demand_reproduces_the_registration(versions, client) -> None:
    """``synthray eval membership`` rebuilds the registration's samples: the same DCR AUC, logged to MLflow."""
    (_, first), _ = versions
    out = _cli("eval", "membership", "--model", f"{first.name}/1", "--no-critic", "--bootstrap", "200", "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)  # progress lines go to stderr
    tags = client.get_model_version(first.name, "1").tags
    assert list(summary["attacks"]) == ["dcr"] and summary["n_members"] == int(tags["mia.n_members"])
    assert summary["attacks"]["dcr"]["auc"] == pytest.approx(float(tags["mia.dcr.auc"]), abs=1e-6)
    runs = client.search_runs([client.get_experiment_by_name("membership-audit").experiment_id],
                              filter_string=f"tags.`model.name` = '{first.name}'")
    assert runs and runs[0].data.metrics["mia_dcr_auc"] == pytest.approx(summary["auc"])
