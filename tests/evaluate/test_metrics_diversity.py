"""SSIM / MS-SSIM against skimage and pytorch_msssim; diversity; AM and Mode scores (paper 001)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from training.evaluate.diversity import (
    am_score,
    classifier_scores,
    label_distribution,
    mode_score,
    ms_ssim_diversity,
    same_class_pairs,
)
from training.evaluate.ssim import ms_ssim, ms_ssim_levels, ssim, ssim_matrix


def _noisy_pairs(seed: int, shape: tuple[int, ...], noise: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.clip(rng.normal(120, 50, shape), 0, 255)
    other = np.clip(base + rng.integers(-noise, noise + 1, shape), 0, 255)
    return base.astype(np.uint8), other.astype(np.uint8)


def test_ssim_equals_skimage() -> None:
    a, b = _noisy_pairs(0, (4, 64, 48), 60)
    expected = [
        structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        for x, y in zip(a, b)
    ]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.diag(ssim_matrix(a, b)), expected, atol=2e-5)  # float32 batched path


def test_ssim_matrix_is_all_pairs() -> None:
    a, b = _noisy_pairs(1, (3, 32, 32), 80)
    m = ssim_matrix(a, b)
    assert m.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            assert m[i, j] == pytest.approx(ssim(a[i : i + 1], b[j : j + 1])[0], abs=2e-5)


def test_ms_ssim_equals_pytorch_msssim_at_five_scales() -> None:
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    a, b = _noisy_pairs(2, (3, 176, 171), 90)  # odd side: exercises the pooling pad
    assert ms_ssim_levels(176, 171) == 5
    x, y = torch.from_numpy(a).double()[:, None], torch.from_numpy(b).double()[:, None]
    ours = ms_ssim(a, b)
    # The library builds its Gaussian window in float32 (~1e-6 here); with a float64 window
    # the algorithms agree to round-off.
    np.testing.assert_allclose(ours, pytorch_msssim.ms_ssim(x, y, size_average=False).numpy(), rtol=1e-5)
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    win = (g / g.sum()).view(1, 1, 1, 11)
    np.testing.assert_allclose(ours, pytorch_msssim.ms_ssim(x, y, size_average=False, win=win).numpy(), rtol=1e-12)


def test_ms_ssim_of_identical_pairs_is_one() -> None:
    a, _ = _noisy_pairs(3, (5, 64, 64), 1)
    np.testing.assert_allclose(ms_ssim(a, a), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ssim(a, a), 1.0, rtol=0, atol=1e-12)
    b = _noisy_pairs(4, (5, 64, 64), 1)[0]
    assert (ms_ssim(a, b) < 0.5).all()  # unrelated images are far from 1


def test_ms_ssim_scales_follow_image_size() -> None:
    assert [ms_ssim_levels(s, s) for s in (11, 21, 41, 64, 81, 160, 161, 512)] == [1, 2, 3, 3, 4, 4, 5, 5]
    with pytest.raises(ValueError, match="larger than 10 px"):
        ms_ssim_levels(10, 64)
    a, b = _noisy_pairs(5, (2, 64, 64), 30)
    with pytest.raises(ValueError, match="allow 1..3"):
        ms_ssim(a, b, levels=4)
    with pytest.raises(TypeError, match="uint8"):
        ms_ssim(a.astype(np.float32), b)


def test_same_class_pairs_are_distinct_and_same_class() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one image: never drawn
    pairs = same_class_pairs(labels, 500, seed=1)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert (labels[pairs[:, 0]] == labels[pairs[:, 1]]).all()
    assert 5 not in pairs
    np.testing.assert_array_equal(pairs, same_class_pairs(labels, 500, seed=1))
    with pytest.raises(ValueError, match="at least two"):
        same_class_pairs([0, 1, 2], 3)


def test_diversity_ranks_a_collapsed_set_as_less_diverse() -> None:
    rng = np.random.default_rng(6)
    diverse = rng.integers(0, 256, (20, 48, 48), dtype=np.uint8)
    collapsed = np.clip(diverse[:1].astype(int) + rng.integers(-5, 6, (20, 48, 48)), 0, 255).astype(np.uint8)
    d, c = ms_ssim_diversity(diverse, n_pairs=60), ms_ssim_diversity(collapsed, n_pairs=60)
    assert c.mean > 0.8 > 0.3 > d.mean
    assert (d.n_pairs, d.levels, list(d.per_class)) == (60, 3, [0])


# -- AM and Mode scores ---------------------------------------------------------------------------


def test_am_and_mode_scores_by_hand() -> None:
    """Eqs. 4-5 of paper 001 evaluated by hand on a 2-class example."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    prior = np.array([0.5, 0.5])
    p_y = probs.mean(0)  # [17/30, 13/30]
    kl_prior = sum(p * math.log(p / q) for p, q in zip(prior, p_y))
    mean_entropy = np.mean([-sum(p * math.log(p) for p in row) for row in probs])
    mean_kl = np.mean([sum(p * math.log(p / q) for p, q in zip(row, p_y)) for row in probs])
    assert am_score(probs, prior) == pytest.approx(kl_prior + mean_entropy, rel=1e-12)
    assert mode_score(probs, prior) == pytest.approx(math.exp(mean_kl - kl_prior), rel=1e-12)


def test_scores_of_a_perfect_generator() -> None:
    """Confident, class-balanced predictions matching p(y*): AM = 0, Mode = number of classes."""
    probs = np.repeat(np.eye(4), 5, axis=0)
    prior = label_distribution(np.repeat(np.arange(4), 3), 4)
    assert am_score(probs, prior) == pytest.approx(0.0, abs=1e-12)
    assert mode_score(probs, prior) == pytest.approx(4.0, rel=1e-12)
    collapsed = np.tile([1.0, 0, 0, 0], (20, 1))  # one mode only
    assert am_score(collapsed, prior) == math.inf and mode_score(collapsed, prior) == 0.0


def test_classifier_scores_batches_the_callers_classifier() -> None:
    images = np.zeros((10, 8, 8), np.uint8)
    images[5:] = 255
    seen = []

    def classifier(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        bright = batch.reshape(len(batch), -1).mean(1) > 127
        return np.stack([~bright, bright], 1).astype(float)

    scores = classifier_scores(images, classifier, train_labels=[0, 1, 0, 1], num_classes=2, batch_size=4)
    assert seen == [4, 4, 2]
    assert scores.am == pytest.approx(0.0, abs=1e-12) and scores.mode == pytest.approx(2.0)
    with pytest.raises(ValueError, match="probability distributions"):
        am_score(np.array([[0.5, 0.6]]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="training labels"):
        label_distribution([0, 3], 2)
