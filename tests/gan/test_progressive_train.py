"""Progressive GAN training (8 → 32 px) on Ray Train with 2 workers, on the real stack.

One PGGAN run is shared: it must log one sample grid per stage at that stage's resolution and
an FID per stage, and end with a 32 px generator. An Enhanced-GAN run (SA + SN in D) must do
the same. A third run of the PGGAN config has a worker SIGKILLed right after a checkpoint from
the middle of a fade-in; it must resume there (stage, α, images seen) and end with exactly the
weights of the uninterrupted run.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from infra.settings import Settings
from training.catalog.phantom import PhantomSpec
from training.catalog.selection import publish_phantom
from training.gan.loop import checkpoint_state
from training.gan.trainer import GanTrainConfig, train_gan
from training.registry import tags as tag

from test_train_gan import _kill_a_worker_after_first_checkpoint  # same folder

pytestmark = pytest.mark.stack
STAGES = (8, 16, 32)


@pytest.fixture(scope="module")
def phantom32(stack: Settings) -> str:
    manifest = publish_phantom(96, PhantomSpec(size=32, seed=5), name="phantom-progressive-test",
                               settings=stack, progress=lambda _: None)
    return str(manifest.ref)


def _config(dataset: str, **kw) -> GanTrainConfig:
    # 64 images per stage, 192 per fade-in, global batch 16, epochs of 64 images: 10 epochs,
    # 2 checkpoints inside each fade-in (α = 1/3, 2/3). FID at n = 8 (a smoke value) at each
    # stage's end only. Checkpoints every epoch (the default cadence would write them only at
    # stage ends and the last): the kill test needs one from inside a fade-in.
    base = {"dataset": dataset, "arch": "pggan-knee-mri-small", "workers": 2, "grid_size": 4,
            "stage_images": 64, "fade_images": 192, "growth_batch": {8: 16, 16: 16, 32: 16},
            "epoch_images": 64, "fid_every": 100, "fid_n": 8, "keep_checkpoints": 1, "checkpoint_every": 1}
    return GanTrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def client(stack: Settings):
    from mlflow import MlflowClient

    return MlflowClient(stack.mlflow_tracking_uri)


@pytest.fixture(scope="module")
def pggan(stack: Settings, phantom32: str):
    return train_gan(_config(phantom32), settings=stack, progress=lambda _: None)


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _stage_grids(client, run_id: str) -> dict[int, list[str]]:
    paths = [a.path for a in client.list_artifacts(run_id, "images")]
    return {r: [p for p in paths if p.startswith(f"images/samples_{r}px") and p.endswith(".png")] for r in STAGES}


def test_pggan_logs_one_grid_and_one_fid_per_stage(pggan, client) -> None:
    grids = _stage_grids(client, pggan.run_id)
    assert all(len(grids[r]) == 1 for r in STAGES), grids
    for r in STAGES:
        fid = _history(client, pggan.run_id, f"fid_{r}px")
        assert len(fid) == 1 and all(math.isfinite(v) and v > 0 for v in fid.values()), (r, fid)
    # The grid at a stage's end is at that stage's resolution: 2×2 images + 2 px padding.
    from mlflow.artifacts import download_artifacts

    for r in STAGES:
        from PIL import Image

        path = download_artifacts(run_id=pggan.run_id, artifact_path=grids[r][0], tracking_uri=client.tracking_uri)
        assert Image.open(path).size == (2 * r + 6, 2 * r + 6)
    res = _history(client, pggan.run_id, "resolution")
    alpha = _history(client, pggan.run_id, "alpha")
    assert sorted(set(res.values())) == [8.0, 16.0, 32.0]
    assert any(0 < a < 1 for a in alpha.values()) and alpha[max(alpha)] == 1.0
    assert _history(client, pggan.run_id, "images_seen")[max(res)] == 64 * 3 + 192 * 2
    params = client.get_run(pggan.run_id).data.params
    assert (params["drift"], params["betas"], params["lr"], params["fade_images"]) == ("0.001", "(0.0, 0.99)",
                                                                                      "0.001", "192")
    images = pggan.sampler.generate(3, seed=0)
    assert images.shape == (3, 32, 32)


def test_enhanced_gan_grows_with_attention_and_spectral_norm(stack: Settings, phantom32: str, client) -> None:
    cfg = _config(phantom32, arch="enhanced-gan-knee-mri-small", fade_images=64, epoch_images=64, fid_every=0,
                  experiment="synthray-gan-enhanced-test")
    result = train_gan(cfg, settings=stack, progress=lambda _: None)
    grids = _stage_grids(client, result.run_id)
    assert all(len(grids[r]) == 1 for r in STAGES), grids
    gen = result.sampler.generator
    assert gen.attention is not None and float(gen.attention.gamma.detach()) != 0.0  # γ moved off 0 in the 32 stage
    state = checkpoint_state(result.checkpoint_path)
    assert any(k.endswith("parametrizations.weight.original") for k in state["critic"])  # SN in D
    assert result.sampler.generate(2, seed=1).shape == (2, 32, 32)


def test_killed_worker_resumes_mid_fade_in_exactly(pggan, stack: Settings, client, phantom32: str) -> None:
    # No FID here: rank 0's FID passes do not touch the training RNG or weights, so the run
    # must still end where the FID-scored uninterrupted one did.
    cfg = _config(phantom32, experiment="synthray-gan-progressive-kill-test", fid_every=0)
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(_kill_a_worker_after_first_checkpoint(
        client, cfg.experiment, stack, stop, when=lambda metrics: 0 < metrics.get("alpha", 0) < 1)), daemon=True)
    killer.start()
    try:
        result = train_gan(cfg, settings=stack, progress=lambda _: None)
    finally:
        stop.set()
        killer.join(timeout=30)
    assert killed, "no worker was killed (no mid-fade-in checkpoint was seen)"
    alpha = _history(client, result.run_id, "resumed_alpha")
    assert alpha and all(0 < a < 1 for a in alpha.values()), alpha  # resumed inside a fade-in
    assert _history(client, result.run_id, "resumed_images_seen")
    # The same config and seed: the resumed run ends bit-identical to the uninterrupted one.
    mine = checkpoint_state(client.get_run(result.run_id).data.tags[tag.CHECKPOINT_LATEST])
    theirs = checkpoint_state(client.get_run(pggan.run_id).data.tags[tag.CHECKPOINT_LATEST])
    assert mine["growth"] == theirs["growth"] and mine["global_step"] == theirs["global_step"]
    for key in ("generator", "generator_ema", "critic"):
        for name, value in theirs[key].items():
            assert torch.equal(mine[key][name], value), f"{key}.{name}"
