"""The classifier's multi-label head on real multi-hot targets (uncertain findings masked), per-finding
AUROC, and the training targets a dataset yields (classes, findings, or a record attribute)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infra.errors import BadInput
from training.catalog.store import ImageRecord, Manifest
from training.classify.config import ClassifierTrainConfig
from training.classify.loop import ClassifierData, ClassifierJob, build_classifier, score, train_job
from training.classify.trainer import training_targets
from training.evaluate.classification import multilabel_metrics

FINDINGS = ["Top", "Left"]


def test_multilabel_loss_is_bce_over_known_findings() -> None:
    model = build_classifier(ClassifierTrainConfig(arch="small-cnn", multilabel=True), FINDINGS, 0)
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)  # -1: masked out
    by_hand = 0.0
    for i in range(2):
        for k in range(2):
            y, p = float(targets[i, k]), 1 / (1 + math.exp(-float(logits[i, k])))
            if y >= 0:
                by_hand += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    assert float(model.loss(logits, targets, reduction="sum")) == pytest.approx(by_hand, abs=1e-9)
    assert float(model.loss(logits, targets)) == pytest.approx(by_hand / 2, abs=1e-9)


def test_per_finding_auroc_counts_pairs_and_skips_masked_entries() -> None:
    targets = np.array([[1, 0], [0, 1], [1, -1], [0, 0], [1, 1]], float)
    proba = np.array([[0.9, 0.2], [0.4, 0.7], [0.3, 0.99], [0.5, 0.1], [0.8, 0.6]])
    out = multilabel_metrics(targets, proba, FINDINGS)

    def auc(y, p):  # share of (positive, negative) pairs ranked right, ties half
        pos, neg = p[y == 1], p[y == 0]
        return np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])

    assert out["auroc/Top"] == pytest.approx(auc(targets[:, 0], proba[:, 0]), abs=1e-12)
    known = targets[:, 1] >= 0
    assert out["auroc/Left"] == pytest.approx(auc(targets[known, 1], proba[known, 1]), abs=1e-12)
    assert out["auroc_mean"] == pytest.approx((out["auroc/Top"] + out["auroc/Left"]) / 2)
    assert out["positives/Left"] == 2 and out["accuracy"] == pytest.approx(7 / 9)
    assert math.isnan(multilabel_metrics(np.ones((3, 2)), np.full((3, 2), 0.5), FINDINGS)["auroc/Top"])


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Finding 0 brightens the top half, finding 1 the left half; noise everywhere."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, (n, 2)).astype(np.float32)
    images = rng.normal(60, 15, (n, 64, 64))
    images[:, :32, :] += 120 * targets[:, 0, None, None]
    images[:, :, :32] += 120 * targets[:, 1, None, None]
    return images.clip(0, 255).astype(np.uint8), targets


def test_multilabel_head_learns_multi_hot_targets() -> None:
    (pool, y), (test, y_test) = _toy(32, 0), _toy(16, 1)
    y[::7, 1] = -1.0  # some uncertain, masked entries
    data = ClassifierData(pool, y, test, y_test, test, y_test)
    cfg = ClassifierTrainConfig(arch="small-cnn", multilabel=True, epochs=2, batch_size=8)
    model = build_classifier(cfg, FINDINGS, 0)
    assert model.head == "multilabel"
    state, _, _ = train_job(model, ClassifierJob(key="k", cell="c", seed=0, train_index=np.arange(32)), data,
                            cfg.hyperparameters(), torch.device("cpu"), 0, 1)
    model.load_state_dict(state)
    _, proba = score(model, test, y_test, torch.device("cpu"))
    assert proba.shape == (16, 2) and not np.allclose(proba.sum(1), 1)  # independent sigmoids, not a softmax
    metrics = multilabel_metrics(y_test, proba, FINDINGS)
    assert metrics["auroc/Top"] > 0.9 and metrics["auroc/Left"] > 0.9, metrics


def _record(i: int, label_set=None, uncertain=None, **attributes) -> ImageRecord:
    return ImageRecord(sha256=f"{i:064x}", label=0, label_name="x", split="train", source_path=f"{i}.png",
                       bit_depth=8, width=4, height=4, attributes=attributes, label_set=label_set, uncertain=uncertain)


def test_training_targets_of_findings_and_attributes() -> None:
    multi = Manifest("m", "1", [_record(0, [0, 1]), _record(1, [], [1])], ["x"], findings=FINDINGS)
    names, (targets,) = training_targets(multi, [multi.records])
    assert names == FINDINGS and targets.tolist() == [[1, 1], [0, -1]]
    sliced = Manifest("s", "1", [_record(i, slice_index=str(s)) for i, s in enumerate((10, 2, 2, 0))], ["x"])
    names, (labels,) = training_targets(sliced, [sliced.records], "attribute=slice_index")
    assert names == ["0", "2", "10"] and labels.tolist() == [2, 1, 1, 0]
    for bad, words in (("slice_index", "use attribute=NAME"), ("attribute=view", "has no attribute 'view'")):
        with pytest.raises(BadInput, match=words) as err:
            training_targets(sliced, [sliced.records], bad)
        assert err.value.field == "label_from"
