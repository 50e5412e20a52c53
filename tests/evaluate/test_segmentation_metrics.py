"""Dice and IoU (MONAI) against hand-computed values, the empty-class convention, and the bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.segmentation import bootstrap_ci, overlay_grid, per_image_scores, segmentation_metrics

CLASSES = ["background", "a", "b"]


def maps() -> tuple[np.ndarray, np.ndarray]:
    truth, pred = np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 4), np.uint8)
    truth[0, :2, :2] = 1  # 4 pixels of a
    pred[0, :2, :3] = 1  # 6 pixels predicted, 4 of them right: Dice 2*4/(4+6) = 0.8, IoU 4/6
    truth[0, 3, 3] = 2  # b in the truth, never predicted: Dice 0, IoU 0
    pred[1, 0, 0] = 2  # image 1: a absent from both (1 by convention), b predicted but absent (0)
    return pred, truth  # image 2: nothing anywhere, both classes 1


def test_dice_and_iou_match_hand_computed_values_and_the_empty_class_convention() -> None:
    pred, truth = maps()
    scores = per_image_scores(pred, truth, 3)
    np.testing.assert_allclose(scores["dice"], [[0.8, 0.0], [1.0, 0.0], [1.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(scores["iou"], [[4 / 6, 0.0], [1.0, 0.0], [1.0, 1.0]], atol=1e-12)


def test_summary_means_and_intervals() -> None:
    pred, truth = maps()
    m = segmentation_metrics(pred, truth, CLASSES)
    assert m["dice/a"] == pytest.approx((0.8 + 1 + 1) / 3, abs=1e-12)
    assert m["dice/b"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["dice"] == pytest.approx(np.mean([0.4, 0.5, 1.0]), abs=1e-12)  # per image over classes, then images
    assert m["iou/a"] == pytest.approx((4 / 6 + 2) / 3, abs=1e-12)
    assert m["n_images"] == 3
    for key in ("dice/a", "dice/b", "dice", "iou/a", "iou"):
        assert m[f"{key}/ci_low"] <= m[key] <= m[f"{key}/ci_high"]
    # a percentile bootstrap of the mean stays within the sample's range, and narrows with more data
    assert m["dice/a/ci_low"] >= 0.8 and m["dice/a/ci_high"] <= 1.0
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.7, 0.1, 10), rng.normal(0.7, 0.1, 400)
    (lo_s, hi_s), (lo_l, hi_l) = bootstrap_ci(small), bootstrap_ci(large)
    assert hi_l - lo_l < hi_s - lo_s and lo_l < 0.7 < hi_l
    assert bootstrap_ci(np.array([0.5])) == (0.5, 0.5)


def test_bad_label_maps_are_refused() -> None:
    pred, truth = maps()
    with pytest.raises(ValueError, match="must both be"):
        per_image_scores(pred[:2], truth, 3)
    with pytest.raises(ValueError, match="outside 0..2"):
        per_image_scores(pred + 3, truth, 3)


def test_overlay_grid_draws_truth_and_prediction_outlines() -> None:
    pred, truth = maps()
    grid = overlay_grid(np.full((3, 4, 4), 100, np.uint8), truth, pred, per_row=3, scale=2)
    assert grid.dtype == np.uint8 and grid.shape[-1] == 3
    colours = {tuple(c) for c in grid.reshape(-1, 3)}
    assert (0, 220, 0) in colours and (230, 30, 30) in colours and (100, 100, 100) in colours
