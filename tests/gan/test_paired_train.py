"""Image + mask GAN training on the real stack (issue 26): phantom with masks → 1 + K channel
DCGAN on Ray Train → S3 checkpoint with the mask classes, MLflow pair grid → the checkpoint's
sampler gives the same image + mask pairs → mask realism against the dataset's champion
segmenter, as version tags and on the card. (The card's other pair facts: tests/registry;
serving the pairs over HTTP: tests/serving/test_serve.py.)

One tiny run (64 px, 1 worker, 1 epoch of 2 steps, no FID) serves every test here.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def champion_segmenter(stack: Settings, masked):
    """A seeded, untrained MONAI U-Net registered as the dataset's champion: the numbers are checked, not its skill."""
    import torch

    from training.nets.segmenter import get_segmenter_preset
    from training.registry.segmenters import log_segmenter, segmenter_name

    torch.manual_seed(0)
    return log_segmenter(get_segmenter_preset("unet-small").build(list(MASK_CLASSES)),
                         segmenter_name(str(masked.ref), "unet-small"), alias="champion", settings=stack,
                         tags={"dataset": str(masked.ref)})


def test_mask_realism_with_the_dataset_champion_on_tags_card_and_cli(run, masked, champion_segmenter,
                                                                    stack: Settings, tmp_path) -> None:
    """Registration's mask-realism step (not the whole registration: its FID/KID/privacy scoring costs minutes
    on the shared machine): the champion chosen automatically, numbers equal to MONAI DiceMetric by hand, the
    tags rendered on the card, ``eval mask-realism`` reproducing them, bad references as one line."""
    import torch
    from mlflow import MlflowClient
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    from infra.errors import NotFound
    from services.cli.main import main
    from training.registry.cards import CARD_FILE, mask_realism_tags
    from training.registry.generators import log_generator, measure_mask_realism, model_card, register_run
    from training.registry.segmenters import load_segmenter
    from training.registry.tags import GENERATOR_KIND, KIND

    with pytest.raises(NotFound, match=r"^segmenter: model 'nope@champion': not found"):  # before any scoring
        register_run(run.run_id, segmenter="nope@champion", settings=stack, progress=lambda _: None)
    nothing, _ = measure_mask_realism(run.sampler, None, "no-segmenter-here@1", n=2, seed=0, settings=stack)
    assert "`segmenter-no-segmenter-here-*@champion`" in nothing["skipped"]  # the card says why, not a number
    summary, _ = measure_mask_realism(run.sampler, None, str(masked.ref), n=12, seed=3, settings=stack)
    assert summary["segmenter"] == champion_segmenter.uri and summary["choice"] == "dataset champion"
    dice = summary["dice"]
    assert 0 <= summary["dice_ci"][0] <= dice <= summary["dice_ci"][1] <= 1

    # by hand: the same pairs, the segmenter's reading, MONAI DiceMetric
    images, masks = run.sampler.generate_pairs(12, seed=3)
    pred = np.stack(load_segmenter(champion_segmenter.uri, stack).predict(list(images)))
    hot = [one_hot(torch.as_tensor(a.astype(np.int64))[:, None], len(MASK_CLASSES), dim=1) for a in (pred, masks)]
    per = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(*hot).numpy()  # (12, 3)
    assert dice == pytest.approx(per.mean(), abs=1e-6)
    for c, name in enumerate(MASK_CLASSES[1:]):
        assert summary["per_class"][name]["dice"] == pytest.approx(per[:, c].mean(), abs=1e-6)

    # the version record registration writes: tags, and the card renders them
    (tmp_path / CARD_FILE).write_text("# Model card: gan-pairs-realism-test\n")
    reg = log_generator(run.sampler, "gan-pairs-realism-test", settings=stack, card_dir=tmp_path,
                        tags={KIND: GENERATOR_KIND, "dataset": str(masked.ref), "eval_seed": "3",
                              **mask_realism_tags(summary)})
    tags = MlflowClient(stack.mlflow_tracking_uri).get_model_version(reg.name, reg.version).tags
    assert float(tags["mask_realism.dice"]) == pytest.approx(dice, abs=1e-6)
    card = model_card(f"{reg.name}/{reg.version}", stack)
    assert "## Mask realism" in card and f"`{champion_segmenter.uri}` (dataset champion)" in card
    assert f"| Dice (mean over classes) | {dice:.3f}, 95 % CI" in card and "| generated pairs | 12 (seed 3) |" in card

    # on demand, with the card's n and seed as defaults: the same number; bad references are one line
    out = CliRunner().invoke(main, ["eval", "mask-realism", "--model", f"{reg.name}/{reg.version}",
                                    "--segmenter", champion_segmenter.uri, "--json"])
    assert out.exit_code == 0, out.output
    again = json.loads(out.stdout)
    assert again["dice"] == pytest.approx(dice, abs=1e-9) and again["choice"] == "given" and again["n"] == 12
    for segmenter, message in (("nope@champion", r"--segmenter: model 'nope@champion': not found"),
                               (f"{reg.name}/{reg.version}", r"--segmenter: .* is a gan-generator, not a segmenter"),
                               ("not a ref!", r"--segmenter: model must be")):
        bad = CliRunner().invoke(main, ["eval", "mask-realism", "--model", f"{reg.name}/{reg.version}",
                                        "--segmenter", segmenter])
        assert bad.exit_code == 1 and re.search(message, bad.output), bad.output
        assert bad.output.count("Error:") == 1 and "Traceback" not in bad.output
