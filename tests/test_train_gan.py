"""Ray Train WGAN-GP on the real stack: MLflow metrics and images, S3 checkpoints, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infra.settings import Settings
from training.datasets import load_tensors, publish_phantom
from training.models.registry import get_preset
from training.model_registry import load_generator, register_generator, registered_name
from training.phantom import PhantomSpec
from training.train_gan import GanTrainConfig, _inverse_time, train_gan


def test_inverse_time_decay_matches_keras_formula() -> None:
    factor = _inverse_time(1e-4)
    assert factor(0) == 1.0
    assert factor(10_000) == pytest.approx(0.5)


def test_config_overrides_preset_hyperparameters() -> None:
    hp = GanTrainConfig(dataset="x", arch="wgan-gp-knee", lr=1e-3, decay_form="none").hyperparameters()
    assert (hp["lr"], hp["lr_decay"], hp["critic_steps"], hp["gp_lambda"], hp["batch_size"]) == (1e-3, 0.0, 3, 10.0, 32)
    assert hp["image_size"] == 210 and hp["latent_dim"] == 50


@pytest.mark.stack
def test_train_register_and_reload(stack: Settings) -> None:
    manifest = publish_phantom(160, PhantomSpec(size=64, seed=3), name="phantom-train-test",
                               settings=stack, progress=lambda _: None)
    train = load_tensors(str(manifest.ref), settings=stack)
    assert train.images.shape[1:] == (1, 64, 64)
    assert -1.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0

    cfg = GanTrainConfig(dataset="phantom-train-test", epochs=2, workers=2, batch_size=16, grid_size=4)
    result = train_gan(cfg, settings=stack, progress=lambda _: None)

    # The version was pinned at launch, not left as "latest".
    assert result.dataset == str(manifest.ref)
    assert result.metrics["epoch"] == 2 and np.isfinite(result.metrics["loss_d"])

    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_tracking_uri)
    history = client.get_metric_history(result.run_id, "loss_d")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    artifacts = [a.path for a in client.list_artifacts(result.run_id, "images")]
    assert any("samples" in path for path in artifacts), artifacts
    run = client.get_run(result.run_id)
    assert run.data.params["dataset"] == str(manifest.ref)
    assert run.data.tags["synthray.checkpoint"] == result.checkpoint_path

    from infra.object_store import ObjectStore

    bucket_key = result.checkpoint_path.removeprefix("s3://").split("/", 1)[1]
    assert ObjectStore(stack).exists(f"{bucket_key}/gan.pt")

    # Registered generator reloads with identical outputs, from any process.
    name = registered_name(result.dataset, cfg.arch)
    assert name == "gan-phantom-train-test-wgan-gp-knee-small"
    reg = register_generator(result.sampler, name, run_id=result.run_id, settings=stack)
    loaded = load_generator(reg.uri, settings=stack)
    expected = result.sampler.generate(8, seed=5)
    assert np.array_equal(loaded.generate(8, seed=5), expected)
    assert not np.array_equal(loaded.generate(8, seed=6), expected)
    assert expected.dtype == np.uint8 and expected.shape == (8, 64, 64)
    # Training moved the weights away from the seeded initialisation.
    torch.manual_seed(cfg.seed)  # the workers' initialisation
    fresh, _ = get_preset(cfg.arch).build()
    trained = dict(result.sampler.generator.named_parameters())
    moved = [n for n, p in fresh.named_parameters() if not torch.equal(p, trained[n])]
    assert moved
