"""The spine paper's generation methods as plans, and class balancing (no stack needed)."""

from __future__ import annotations

from collections import Counter

import pytest

from training.catalog.store import ImageRecord, Manifest
from training.catalog.selection import select_records, undersample
from training.gan.config import GanTrainConfig
from training.gan.methods import plan_method

# The spine paper's class counts, scaled down by 10: healthy 54, abnormal 5, pathological 11.
COUNTS = {0: 54, 1: 5, 2: 11}


def _manifest() -> Manifest:
    records, i = [], 0
    for label, n in COUNTS.items():
        for _ in range(n):
            records.append(ImageRecord(sha256=f"{i:064x}", label=label, label_name=f"c{label}", split="train",
                                       source_path=f"{i}.png", bit_depth=8, width=64, height=64))
            i += 1
    # interleave the classes so "first N" is a real choice, not the file order of one class
    records.sort(key=lambda r: (int(r.sha256, 16) * 7919) % 101)
    records.append(ImageRecord(sha256="f" * 64, label=1, label_name="c1", split="test", source_path="t.png",
                               bit_depth=8, width=64, height=64))
    return Manifest(name="spine", version="ab12", records=records, classes=["c0", "c1", "c2"])


BASE = GanTrainConfig(dataset="spine", arch="acgan-spine-small", epochs=4)


def test_method_i_is_one_model_on_every_imbalanced_class() -> None:
    (step,) = plan_method(_manifest(), "I", BASE)
    assert step.config.class_label is None and step.config.balance == "none"
    assert step.n_images == 70 and step.config.dataset == "spine@ab12"  # pinned version


@pytest.mark.parametrize("balance", ["first", "random"])
def test_method_ii_undersamples_every_class_to_the_smallest(balance: str) -> None:
    manifest = _manifest()
    (step,) = plan_method(manifest, "II", BASE, balance=balance)
    assert step.n_images == 15 and step.config.balance == balance
    chosen = select_records(manifest, **step.config.selection())
    assert Counter(r.label for r in chosen) == {0: 5, 1: 5, 2: 5}
    train = manifest.select(split="train")
    if balance == "first":  # the first five of each class in manifest order
        for label in COUNTS:
            assert [r for r in chosen if r.label == label] == [r for r in train if r.label == label][:5]
    else:  # seeded: same seed same sample, another seed another sample
        again = select_records(manifest, **step.config.selection())
        other = select_records(manifest, **BASE.model_copy(update={"balance": "random", "seed": 9}).selection())
        assert chosen == again and chosen != other


def test_method_iii_trains_one_model_per_class() -> None:
    plan = plan_method(_manifest(), "III", BASE)
    assert [(s.name, s.config.class_label, s.n_images, s.init_from) for s in plan] == [
        ("class0", 0, 54, None), ("class1", 1, 5, None), ("class2", 2, 11, None)]


@pytest.mark.parametrize("transfer", [False, True])
def test_method_iv_pretrains_on_the_majority_then_warm_starts_each_minority(transfer: bool) -> None:
    plan = plan_method(_manifest(), "IV", BASE, finetune_epochs=2, transfer_critic=transfer)
    assert [(s.name, s.config.class_label, s.init_from) for s in plan] == [
        ("pretrain", 0, None), ("class1", 1, "pretrain"), ("class2", 2, "pretrain")]
    assert plan[0].config.epochs == 4 and {s.config.epochs for s in plan[1:]} == {2}
    assert all(s.config.transfer_critic is transfer for s in plan[1:])
    assert "warm start from pretrain" in plan[1].describe()


def test_unknown_method_and_empty_selection_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown method 'V'"):
        plan_method(_manifest(), "V", BASE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no images in split='val'"):
        plan_method(_manifest(), "I", BASE.model_copy(update={"split": "val"}))


def test_a_missing_class_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"spine@ab12 has no images of class c2 \(2\).*split='test'"):
        select_records(_manifest(), split="test", labels=[2])


def test_undersample_keeps_manifest_order() -> None:
    train = _manifest().select(split="train")
    kept = undersample(train)
    positions = [train.index(r) for r in kept]
    assert positions == sorted(positions)
