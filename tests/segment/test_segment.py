"""Segmenter training on the real stack: phantom with masks → Ray Train (MONAI U-Net) → MLflow → registry → Serve class.

One tiny segmenter (32 px phantom, 40 images, 2 epochs) is trained once for the module and
every test reads what it left behind.
"""

from __future__ import annotations

import asyncio
import base64
import uuid

import numpy as np
import pytest

from infra.errors import BadInput, SynthrayError
from infra.settings import Settings
from training.catalog.phantom import MASK_CLASSES, PhantomSpec

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def trained(stack: Settings):
    from training.catalog.ingest import IngestOptions
    from training.catalog.selection import catalog, ingest_phantom
    from training.segment.config import SegmenterTrainConfig
    from training.segment.trainer import train_segmenter

    name = f"seg-{uuid.uuid4().hex[:8]}"
    options = IngestOptions(name=name, layout="csv", preset="none", seed=0,
                            fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    manifest = ingest_phantom(40, PhantomSpec(size=32, seed=0), options, catalog(stack), lambda _: None,
                              masks=True).manifest
    cfg = SegmenterTrainConfig(arch="unet-small", epochs=2, batch_size=8)
    fit, reg, url = train_segmenter(cfg, str(manifest.ref), seed=0, settings=stack, progress=lambda _: None)
    return manifest, fit, reg, url


def test_best_epoch_is_the_highest_validation_dice_and_metrics_have_cis(trained, stack) -> None:
    from mlflow import MlflowClient

    manifest, fit, reg, _ = trained
    best = fit.results[fit.best_key]
    client = MlflowClient(stack.mlflow_tracking_uri)
    history = client.get_metric_history(best.run_id, "val_dice")
    assert len(history) == 2
    top = max(history, key=lambda m: (m.value, -m.step))
    assert best.best_epoch == top.step and best.val_dice == pytest.approx(top.value, abs=1e-9)
    n_test = len(manifest.select(split="test"))
    assert best.test_dice.shape == (n_test, 3) and best.test_metrics["n_images"] == n_test
    for cls in MASK_CLASSES[1:]:
        for metric in ("dice", "iou"):
            low, mean, high = (best.test_metrics[f"{metric}/{cls}{s}"] for s in ("/ci_low", "", "/ci_high"))
            assert 0 <= low <= mean <= high <= 1
    assert best.test_metrics["dice"] == pytest.approx(best.test_dice.mean(), abs=1e-9)
    run = client.get_run(best.run_id)
    assert run.data.metrics["test/dice"] == pytest.approx(best.test_metrics["dice"], abs=1e-9)
    assert "plots/overlay_test.png" in {a.path for a in client.list_artifacts(best.run_id, "plots")}


def test_registered_champion_reproduces_its_test_scores(trained, stack) -> None:
    from mlflow import MlflowClient

    from training.catalog.selection import catalog
    from training.evaluate.segmentation import per_image_scores
    from training.registry.segmenters import load_segmenter
    from training.registry.tags import KIND

    manifest, fit, reg, _ = trained
    assert reg.name == f"segmenter-{manifest.name}-unet-small" and reg.alias == "champion"
    version = MlflowClient(stack.mlflow_tracking_uri).get_model_version_by_alias(reg.name, "champion")
    assert version.tags[KIND] == "segmenter" and version.tags["classes"] == '["background", "femur", "tibia", "fibula"]'
    model = load_segmenter(f"models:/{reg.name}@champion", stack)
    records = manifest.select(split="test")
    cat = catalog(stack)
    images, masks = cat.read_pixels(records), cat.read_masks(records)
    pred = np.stack(model.predict(list(images)))  # 32 px phantom at the network's 32 px: same grid
    np.testing.assert_allclose(per_image_scores(pred, masks, 4)["dice"], fit.results[fit.best_key].test_dice,
                               atol=1e-6)


def test_checkpoints_are_in_the_object_store(trained, stack) -> None:
    from infra.object_store import ObjectStore

    _, fit, _, url = trained
    parent = url.rstrip("/").rsplit("/", 1)[-1]
    keys = ObjectStore(stack).list_keys("")
    assert any(f"segmenters-{parent}" in k and k.endswith("best_model.pt") for k in keys)


def test_dataset_without_masks_is_refused_before_training(trained, stack) -> None:
    from dataclasses import replace

    from training.segment.trainer import mask_data

    manifest = trained[0]
    with pytest.raises(BadInput, match="has no masks"):
        mask_data(replace(manifest, mask_classes=[]), settings=stack)
    first, *rest = manifest.records
    unmasked = replace(manifest, records=[replace(first, mask_sha256=None), *rest])
    with pytest.raises(BadInput, match=f"1 image\\(s\\) of split '{first.split}' have no mask"):
        mask_data(unmasked, settings=stack)


def test_segmenter_deployment_answers_with_the_champion(trained, stack) -> None:
    from services.serving.segmenter import Segmenter
    from training.catalog.store import decode_png
    from training.registry.segmenters import load_segmenter

    class LocalSegmenter(Segmenter.func_or_class):
        """``@serve.multiplexed`` is replica-only: a dict stands in for it."""

        async def _classifier(self, uri: str):
            return self.__dict__.setdefault("_cache", {}).get(uri) or self._load(uri)

    _, _, reg, _ = trained
    local = LocalSegmenter(stack)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32), dtype=np.uint8), rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)]
    rows = asyncio.run(local.segment(f"{reg.name}@champion", images))
    assert not isinstance(rows, SynthrayError), rows
    want = load_segmenter(reg.uri, stack).predict(images)
    for row, img, labels in zip(rows, images, want, strict=True):
        got = decode_png(base64.b64decode(row["mask_png"]))
        assert got.shape == img.shape[:2] and np.array_equal(got, labels) and row["version"] == reg.version
    wrong = asyncio.run(local.segment("no-such-segmenter@champion", images))
    assert isinstance(wrong, SynthrayError) and wrong.http_status == 404 and wrong.field == "model"
    bad = asyncio.run(local.segment(f"{reg.name}@champion", [np.zeros((4, 4), np.float32)]))
    assert isinstance(bad, SynthrayError) and (bad.http_status, bad.field) == (422, "images[0]")
