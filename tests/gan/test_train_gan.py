"""GAN training on Ray Train with 2 workers, on the real stack (SeaweedFS, MLflow, Ray).

One uninterrupted WGAN-GP run is shared by several tests (falling critic loss, S3
checkpoints kept by FID, MLflow params/metrics/grids/FID curve, registry round trip). It
checkpoints by cadence, not every epoch: every ``CHECKPOINT_EVERY`` epochs, at every FID epoch
and at the last (training.gan.cadence). A second run with the same config has a worker
SIGKILLed mid-run: it must resume from its last checkpoint (losing at most one interval) and
end with the same generator weights, which only holds if weights, both optimizers, both LR
schedules, the epoch counter and the RNG stream were all restored.
"""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from click.testing import CliRunner

from infra.object_store import ObjectStore
from infra.settings import Settings
from training.catalog.selection import load_tensors, publish_phantom
from training.gan.methods import PlanStep, run_plan
from training.gan.loop import checkpoint_state, epoch_seed, lr_lambda
from training.registry.generators import load_generator, register_run, registered_name
from training.nets.presets import get_preset
from training.catalog.phantom import PhantomSpec
from training.gan.trainer import GanTrainConfig, train_gan

pytestmark = pytest.mark.stack
EPOCHS = 6
FID_EVERY = 3
CHECKPOINT_EVERY = 4
# Checkpointed (with a sample grid): FID epochs 3 and 6, interval epoch 4, the last (6).
CHECKPOINTED = [3, 4, 6]


def test_lr_decay_forms() -> None:
    assert lr_lambda("inverse-time", 1e-4)(0) == 1.0
    assert lr_lambda("inverse-time", 1e-4)(10_000) == pytest.approx(0.5)  # Keras: lr / (1 + decay·t)
    assert lr_lambda("exponential", 0.1)(2) == pytest.approx(0.81)
    assert lr_lambda("none", 0.5)(1000) == 1.0
    with pytest.raises(ValueError, match="unknown decay_form"):
        lr_lambda("cosine", 0.1)


def test_epoch_seeds_differ_per_rank_and_epoch() -> None:
    seeds = {epoch_seed(0, r, e) for r in range(4) for e in range(100)}
    assert len(seeds) == 400 and epoch_seed(3, 1, 7) == epoch_seed(3, 1, 7)


def test_config_overrides_preset_hyperparameters() -> None:
    hp = GanTrainConfig(dataset="x", arch="wgan-gp-knee", lr=1e-3, decay_form="none").hyperparameters()
    assert (hp["lr"], hp["lr_decay"], hp["critic_steps"], hp["gp_lambda"], hp["batch_size"]) == (1e-3, 0.0, 3, 10.0, 32)
    assert hp["image_size"] == 210 and hp["latent_dim"] == 50 and hp["betas"] == (0.5, 0.9)


@pytest.fixture(scope="module")
def phantom(stack: Settings) -> str:
    manifest = publish_phantom(200, PhantomSpec(size=64, seed=3), name="phantom-train-test",
                               settings=stack, progress=lambda _: None)
    return str(manifest.ref)


def _config(dataset: str, **kw) -> GanTrainConfig:
    # ADA with a short traverse (p can move 0.26 per 4-step adjustment), so its state changes in
    # a run this short and the resume test has something to restore.
    return GanTrainConfig(dataset=dataset, epochs=EPOCHS, workers=2, batch_size=32, grid_size=4,
                          fid_every=FID_EVERY, checkpoint_every=CHECKPOINT_EVERY, fid_n=48, keep_checkpoints=1,
                          augment="ada", ada_kimg=0.5, **kw)


@pytest.fixture(scope="module")
def run(stack: Settings, phantom: str):
    lines: list[str] = []
    result = train_gan(_config(phantom), settings=stack, progress=lines.append)
    return result, lines


@pytest.fixture(scope="module")
def client(stack: Settings):
    from mlflow import MlflowClient

    return MlflowClient(stack.mlflow_tracking_uri)


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_critic_loss_falls_over_the_run(run, client) -> None:
    result, _ = run
    per_epoch = _history(client, result.run_id, "loss_d")
    assert sorted(per_epoch) == list(range(1, EPOCHS + 1))
    assert per_epoch[EPOCHS] < per_epoch[1] - 1.0, per_epoch  # -W + λ·GP drops as the critic learns
    per_step = _history(client, result.run_id, "step/loss_d")
    steps = sorted(per_step)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4 * EPOCHS
    for key in ("step/loss_g", "step/gp", "step/wasserstein"):
        assert len(_history(client, result.run_id, key)) == len(steps)


def test_run_records_params_dataset_commit_and_grids(run, client, phantom: str) -> None:
    result, lines = run
    assert result.dataset == phantom  # pinned at launch
    data = client.get_run(result.run_id).data
    assert data.params["dataset"] == phantom and data.params["gp_lambda"] == "10.0"
    assert data.params["critic_steps"] == "3" and data.params["fid_n"] == "48"
    assert data.tags["synthray.dataset.manifest_sha256"] == phantom.split("@")[1]
    assert len(data.tags["mlflow.source.git.commit"]) == 40
    assert data.tags["synthray.fid.reference_key"].startswith("fid/")
    grids = [a.path for a in client.list_artifacts(result.run_id, "images")]
    # Grids follow the checkpoints (log_image names its files images/samples+step+4+timestamp+…).
    steps = {int(p.split("+step+")[1].split("+")[0]) for p in grids if "samples+" in p and p.endswith(".png")}
    assert sorted(steps) == CHECKPOINTED, grids
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/fid_curve.png"]
    assert any("FID reference" in line for line in lines)


def test_fid_every_k_epochs_with_n_fake_equal_n_real(run, client) -> None:
    result, _ = run
    fid = _history(client, result.run_id, "fid")
    assert sorted(fid) == [3, 6] and all(math.isfinite(v) and v > 0 for v in fid.values())
    assert set(_history(client, result.run_id, "fid_n_real").values()) == {48.0}
    assert set(_history(client, result.run_id, "fid_n_fake").values()) == {48.0}
    # the selected generator is the best-FID checkpoint
    best = min(fid, key=fid.get)
    assert result.metrics["epoch"] == best and result.metrics["fid"] == pytest.approx(fid[best])


def test_checkpoints_live_in_s3_top_k_by_fid(run, stack: Settings) -> None:
    result, _ = run
    store = ObjectStore(stack)
    key = result.checkpoint_path.removeprefix(f"s3://{stack.bucket}/")
    assert store.exists(f"{key}/gan.pt")
    run_dir = key.rsplit("/", 1)[0]
    kept = {k.split("/")[-2] for k in store.list_keys(run_dir + "/") if k.endswith("/gan.pt")}
    # Ray Train's own record: every report carried a checkpoint, one per CHECKPOINTED epoch;
    # kept are the top-1 by FID (the best of epochs 3 and 6) and the latest (6).
    snapshot = json.loads(store.get_bytes(f"{run_dir}/checkpoint_manager_snapshot.json"))
    assert snapshot["current_report_index"] == len(CHECKPOINTED), snapshot["current_report_index"]
    kept_epochs = {c["metrics"]["epoch"] for c in snapshot["checkpoint_results"]}
    assert kept_epochs == {result.metrics["epoch"], EPOCHS}, kept_epochs
    assert {c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]} == kept
    assert {checkpoint_state(f"s3://{stack.bucket}/{run_dir}/{name}")["epoch"] for name in kept} == kept_epochs


def test_registered_generator_reloads_identically(run, stack: Settings) -> None:
    result, _ = run
    reg = register_run(result.run_id, settings=stack, progress=lambda _: None)
    assert reg.name == registered_name(result.dataset, "wgan-gp-knee-small") == "gan-phantom-train-test-wgan-gp-knee-small"
    # Registration re-scores the selected checkpoint with the training protocol: same FID.
    assert float(reg.tags["fid"]) == pytest.approx(result.metrics["fid"], rel=1e-4)
    assert reg.tags["epoch"] == str(int(result.metrics["epoch"])) and reg.tags["run_id"] == result.run_id
    loaded = load_generator(reg.version_uri, settings=stack)
    expected = result.sampler.generate(8, seed=5)
    assert np.array_equal(loaded.generate(8, seed=5), expected)
    assert expected.dtype == np.uint8 and expected.shape == (8, 64, 64)
    torch.manual_seed(0)  # the workers' initialisation: training moved the weights
    fresh, _ = get_preset("wgan-gp-knee-small").build()
    trained = dict(result.sampler.generator.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in fresh.named_parameters())


def _train_workers(state_dir: str) -> list[psutil.Process]:
    """Ray Train worker processes of this test stack (they inherit its SYNTHRAY_STATE_DIR)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []) and \
                    proc.environ().get("SYNTHRAY_STATE_DIR") == state_dir:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _kill_a_worker_after_first_checkpoint(client, experiment: str, settings: Settings,
                                          stop: threading.Event, when=None) -> list[int]:
    """Wait until Ray Train has registered the run's first checkpoint, then SIGKILL one worker.

    With ``when``, wait instead for a registered latest checkpoint whose metrics satisfy it
    (the progressive resume test waits for one from inside a fade-in).

    Registration, not the worker's report, is what a restart resumes from: the controller
    collects reports when it polls the workers, so a kill between a report and that poll
    loses the checkpoint (seen under CPU load with a fixed sleep). The controller writes its
    checkpoint-manager snapshot to the run's storage after registering, so its existence is
    the moment to wait for.
    """
    store = ObjectStore(settings)
    while not stop.is_set():
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        snapshot = (f"{settings.ray_results_prefix}/gan-{runs[0].info.run_id}/checkpoint_manager_snapshot.json"
                    if runs else None)
        if snapshot and store.exists(snapshot) and (when is None or when(
                (json.loads(store.get_bytes(snapshot)).get("latest_checkpoint_result") or {}).get("metrics", {}))):
            if workers := _train_workers(str(settings.state_dir)):
                victim = max(workers, key=lambda p: p.pid)
                victim.send_signal(signal.SIGKILL)
                return [victim.pid]
        time.sleep(0.3)
    return []


def test_killed_worker_resumes_from_checkpoint_exactly(run, stack: Settings, client, phantom: str) -> None:
    reference, _ = run
    cfg = _config(phantom, experiment="synthray-gan-kill-test")
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(_kill_a_worker_after_first_checkpoint(
        client, cfg.experiment, stack, stop)), daemon=True)
    killer.start()
    try:
        result = train_gan(cfg, settings=stack, progress=lambda _: None)
    finally:
        stop.set()
        killer.join(timeout=30)
    assert killed, "no worker was killed (the run ended before its first checkpoint was seen)"
    resumed = _history(client, result.run_id, "resumed_from_epoch")
    # It resumed from a checkpointed epoch before the last: at most one interval was replayed.
    assert resumed and set(resumed.values()) <= set(CHECKPOINTED[:-1]), resumed
    assert _history(client, result.run_id, "epoch")[EPOCHS] == EPOCHS
    # Same config, same seed: the resumed run ends where the uninterrupted one did.
    assert result.metrics["epoch"] == reference.metrics["epoch"]
    got = dict(result.sampler.generator.named_parameters())  # the EMA generator
    for name, p in reference.sampler.generator.named_parameters():
        torch.testing.assert_close(got[name], p, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # The checkpoints hold raw G and EMA both, and ADA's state: all restored exactly.
    mine, theirs = checkpoint_state(result.checkpoint_path), checkpoint_state(reference.checkpoint_path)
    for key in ("generator", "generator_ema"):
        for name, value in theirs[key].items():
            torch.testing.assert_close(mine[key][name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}.{name}: {m}")
    assert any(not torch.equal(mine["generator"][k], mine["generator_ema"][k]) for k in mine["generator"])
    assert mine["ada"]["p"] == pytest.approx(theirs["ada"]["p"], abs=1e-12)
    # ADA's inputs and output replay exactly. (In this WGAN-GP run r_t stays below the 0.6 target,
    # so p stays 0; p rising under an overfitting D is tests/gan/test_augment_ema.py's.)
    for key in ("ada_p", "ada_rt", "real_sign"):
        assert _history(client, result.run_id, key) == pytest.approx(_history(client, reference.run_id, key),
                                                                      abs=1e-9, nan_ok=True), key
    assert _history(client, result.run_id, "lr_g")[EPOCHS] == pytest.approx(
        _history(client, reference.run_id, "lr_g")[EPOCHS], rel=1e-9)


def test_conditional_acgan_and_warm_start(stack: Settings, phantom: str) -> None:
    """Spine Method IV in miniature: pretrain on one class, fine-tune another from it.

    With a vanishing learning rate the fine-tuned generator must still be the pretrained one;
    a failed warm start would leave it at the seeded fresh initialisation.
    """
    base = GanTrainConfig(dataset=phantom, arch="acgan-spine-small", epochs=1, workers=2, batch_size=16,
                          grid_size=4, fid_every=0)
    plan = [
        PlanStep("pretrain", base.model_copy(update={"class_label": 0})),
        PlanStep("class2", base.model_copy(update={"class_label": 2, "lr": 1e-12, "seed": 1}), init_from="pretrain"),
    ]
    results = run_plan(plan, settings=stack, progress=lambda _: None)
    pre, fine = results["pretrain"].sampler, results["class2"].sampler
    assert pre.conditional and pre.num_classes == 5 and fine.class_index == 2
    tuned = dict(fine.generator.named_parameters())
    for name, p in pre.generator.named_parameters():
        torch.testing.assert_close(tuned[name], p, rtol=0, atol=1e-8)
    images = fine.generate(4, seed=0)  # defaults to its class
    assert images.shape == (4, 64, 64) and images.dtype == np.uint8


def test_fid_falls_from_the_first_epoch_to_the_last(stack: Settings, phantom: str, client) -> None:
    """The small-CPU recipe learns: its EMA generator's FID at the last epoch is well below the first's.

    A measured property of one short real run (FID every epoch, n = 48), not a timing. The
    recipe's batch of 64 and 250 steps per epoch: before ~300 steps the samples are still blobs
    whose FID wanders (60-step epochs at batch 32 went 329, 378, 373).
    """
    cfg = GanTrainConfig(dataset=phantom, arch="dcgan-knee-cpu", epochs=3, workers=2,
                         steps_per_epoch=250, grid_size=4, fid_every=1, fid_n=48, keep_checkpoints=1)
    lines: list[str] = []
    result = train_gan(cfg, settings=stack, progress=lines.append)
    fid = _history(client, result.run_id, "fid")
    assert sorted(fid) == [1, 2, 3], fid
    assert fid[3] < 0.8 * fid[1], fid
    assert result.floor is not None and 0 < result.floor.fid < fid[3]  # a real-vs-real floor below the fakes
    params = client.get_run(result.run_id).data.params
    assert params["augment"] == "diffaugment" and params["ema_kimg"] == "10.0"
    assert client.get_run(result.run_id).data.metrics["fid_floor"] == pytest.approx(result.floor.fid)
    assert any("real-vs-real floor" in line for line in lines)


def test_dcgan_trains_with_bce(stack: Settings, phantom: str, client) -> None:
    cfg = GanTrainConfig(dataset=phantom, arch="dcgan-fracture-small", epochs=1, workers=2, batch_size=32,
                         grid_size=4, fid_every=0)
    result = train_gan(cfg, settings=stack, progress=lambda _: None)
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(client.get_run(result.run_id).data.metrics)
    assert result.sampler.generate(2, seed=0).shape == (2, 64, 64)


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "wgan-gp-knee"], r"has 64x64 \(\d+\) images but wgan-gp-knee makes 210x210; ingest with --resize 210"),
    (["--class", "7"], r"has no images of class \? \(7\)"),
    (["--workers", "64"], "--workers 64 needs 64 CPUs but the Ray cluster has 2"),
    (["--batch-size", "5000"], r"selection has \d+ images, fewer than one batch of 2500 per worker"),
], ids=["resolution", "class", "workers", "batch"])
def test_bad_requests_fail_fast_with_one_line(stack: Settings, phantom: str, args: list[str], message: str) -> None:
    from services.cli.main import main  # the one handler that prints "Error: …"

    result = CliRunner().invoke(main, ["train", "gan", "--dataset", phantom, "--epochs", "1", *args])
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output


def test_loaded_tensors_are_in_the_tanh_range(stack: Settings, phantom: str) -> None:
    train = load_tensors(phantom, settings=stack)
    assert train.images.shape[1:] == (1, 64, 64)
    assert -1.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
