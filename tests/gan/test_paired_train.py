"""Image + mask GAN training on the real stack (issue 26): phantom with masks → 1 + K channel
DCGAN on Ray Train → S3 checkpoint with the mask classes, MLflow pair grid → the checkpoint's
sampler gives the same image + mask pairs. (Registration's card and tags: tests/registry;
serving the pairs over HTTP: tests/serving/test_serve.py.)

One tiny run (64 px, 1 worker, 1 epoch of 2 steps, no FID) serves every test here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from infra.settings import Settings
from training.catalog.phantom import MASK_CLASSES, PhantomSpec
from training.gan.trainer import GanTrainConfig, train_gan

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def masked(stack: Settings):
    from training.catalog.ingest import IngestOptions
    from training.catalog.selection import catalog, ingest_phantom

    options = IngestOptions(name="phantom-pairs-test", layout="csv", preset="none", seed=4)
    return ingest_phantom(64, PhantomSpec(size=64, seed=4), options, catalog(stack), lambda _: None,
                          masks=True).manifest


@pytest.fixture(scope="module")
def run(stack: Settings, masked):
    cfg = GanTrainConfig(dataset=str(masked.ref), arch="dcgan-fracture-small", masks=True, epochs=1, workers=1,
                         batch_size=16, steps_per_epoch=2, grid_size=4, fid_every=0, keep_checkpoints=1)
    return train_gan(cfg, settings=stack, progress=lambda _: None)


def test_training_tensors_stack_each_image_with_its_one_hot_mask(stack: Settings, masked) -> None:
    from training.catalog.selection import catalog, load_tensors, select_records
    from training.gan.loop import load_training_data

    cfg = GanTrainConfig(dataset=str(masked.ref), arch="dcgan-fracture-small", masks=True,
                         mask_classes=list(masked.mask_classes), limit=8)
    images, _ = load_training_data(cfg, 0, 1)
    truth = catalog(stack).read_masks(select_records(masked, limit=8))
    assert images.shape == (8, 1 + len(MASK_CLASSES), 64, 64)
    np.testing.assert_array_equal(images[:, 1:].argmax(1).numpy(), truth)
    np.testing.assert_array_equal(images[:, :1].numpy(), load_tensors(str(masked.ref), limit=8).images.numpy())
    small = load_tensors(str(masked.ref), limit=8, masks=True, image_size=32)  # nearest: values stay classes
    assert small.label_maps.shape == (8, 32, 32) and set(small.label_maps.unique().tolist()) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(small.label_maps.numpy(), truth[:, 1::2, 1::2])


def test_paired_run_samples_images_with_label_maps(run, masked, stack: Settings) -> None:
    from mlflow import MlflowClient

    from training.gan.loop import checkpoint_state
    from training.gan.trainer import sampler_from_state

    sampler = run.sampler
    assert sampler.paired and sampler.mask_classes == list(masked.mask_classes) == list(MASK_CLASSES)
    images, masks = sampler.generate_pairs(6, seed=3)
    assert images.shape == masks.shape == (6, 64, 64) and masks.max() < len(MASK_CLASSES)
    state = checkpoint_state(run.checkpoint_path)
    assert state["config"]["mask_classes"] == list(MASK_CLASSES)
    assert state["generator_ema"]["net.12.weight"].shape[1] == 1 + len(MASK_CLASSES)  # last ConvT: 5 channels
    reloaded = sampler_from_state(state).generate_pairs(6, seed=3)  # what registration and Serve load
    assert reloaded[0].tobytes() == images.tobytes() and reloaded[1].tobytes() == masks.tobytes()
    client = MlflowClient(stack.mlflow_tracking_uri)
    grids = [a.path for a in client.list_artifacts(run.run_id, "images")]
    grid = Image.open(client.download_artifacts(run.run_id, sorted(grids)[-1]))
    # 4 samples → 2 x 2, each an image then its overlay: 4 panels of 64 + 2 px padding across
    assert grid.size == (2 + 4 * 66, 2 + 2 * 66)
    panel = np.asarray(grid)[2:66, 68:132]
    assert (panel[..., 0] != panel[..., 1]).any()  # the overlay panel is in colour


@pytest.mark.parametrize(("args", "message"), [
    (["--masks", "--batch-size", "8"], r"--masks: dataset \S+ has no masks"),
    (["--masks", "--channels", "2", "--arch", "pggan-knee-mri-small"], "--channels and --masks both set"),
], ids=["no-masks", "channels"])
def test_masks_on_the_wrong_dataset_fail_fast_with_one_line(stack: Settings, masked, args, message) -> None:
    from services.cli.main import main
    from training.catalog.selection import publish_phantom

    plain = masked if "--channels" in args else publish_phantom(
        32, PhantomSpec(size=64, seed=5), name="phantom-no-masks-test", settings=stack, progress=lambda _: None)
    result = CliRunner().invoke(main, ["train", "gan", "--dataset", str(plain.ref), "--epochs", "1", *args])
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output
