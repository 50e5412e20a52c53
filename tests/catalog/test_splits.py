"""Patient-level stratified splits, selectors and the leakage check (no stack needed)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.catalog.store import CatalogError, ImageRecord, Manifest
from training.catalog.splits import fold_plan, assert_disjoint, assign_splits, overlap, select, split_overlap


def record(i: int, label: int, patient: str | None, split: str = "train", sha: str | None = None) -> ImageRecord:
    return ImageRecord(
        sha256=sha or f"{i:064x}", label=label, label_name=f"c{label}", split=split,
        source_path=f"src/{i}.png", bit_depth=8, width=8, height=8, patient_id=patient,
    )


@st.composite
def tables(draw):
    """Random patient/label tables: 20–60 patients, 1–6 images each, 2–4 classes, some ids missing."""
    n_classes = draw(st.integers(2, 4))
    n_patients = draw(st.integers(20, 60))
    labels, patients = [], []
    for p in range(n_patients):
        base = draw(st.integers(0, n_classes - 1))
        for _ in range(draw(st.integers(1, 6))):
            labels.append(draw(st.sampled_from([base, base, draw(st.integers(0, n_classes - 1))])))
            patients.append(None if draw(st.integers(0, 19)) == 0 else f"P{p:03d}")
    return labels, patients


@settings(max_examples=60, deadline=None)
@given(table=tables(), seed=st.integers(0, 2**31 - 1))
def test_no_patient_is_in_two_splits(table, seed) -> None:
    labels, patients = table
    splits = assign_splits(labels, patients, {"train": 0.6, "val": 0.2, "test": 0.2}, seed)
    assert len(splits) == len(labels) and set(splits) <= {"train", "val", "test"}
    owner: dict[str, str] = {}
    for patient, split in zip(patients, splits):
        if patient is not None:
            assert owner.setdefault(patient, split) == split, f"patient {patient} in {owner[patient]} and {split}"
    assert splits == assign_splits(labels, patients, {"train": 0.6, "val": 0.2, "test": 0.2}, seed)
    records = [record(i, lab, pat, split) for i, (lab, pat, split) in enumerate(zip(labels, patients, splits))]
    assert all(o.disjoint for o in split_overlap(records).values())


def test_splits_are_stratified_and_close_to_the_fractions() -> None:
    # 400 patients with one image each: proportions are limited only by class sizes
    labels = [i % 4 for i in range(400)]
    splits = assign_splits(labels, [f"P{i}" for i in range(400)], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=7)
    counts = Counter(zip(splits, labels))
    for label in range(4):
        assert counts["train", label] == 80 and counts["val", label] == 10 and counts["test", label] == 10
    other = assign_splits(labels, [f"P{i}" for i in range(400)], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=8)
    assert other != splits  # the seed matters


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [
        ({"train": 0.8, "val": 0.1, "test": 0.1}, (10, {"train": 8, "val": 1, "test": 1})),
        ({"train": 0.7, "val": 0.15, "test": 0.15}, (20, {"train": 14, "val": 3, "test": 3})),
        ({"train": 0.5, "test": 0.5}, (2, {"train": 1, "test": 1})),
        ({"train": 1.0}, (1, {"train": 1})),
    ],
)
def test_fractions_become_whole_folds(fractions, expected) -> None:
    assert fold_plan(fractions) == expected


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.8, "val": 0.1}, "sum to 1"),
        ({"train": 0.9, "holdout": 0.1}, "must name some of"),
        ({"train": 0.333, "test": 0.667}, "multiples of 1/k"),
        ({"train": -0.5, "test": 1.5}, ">= 0"),
    ],
)
def test_bad_fractions_are_named(fractions, message) -> None:
    with pytest.raises(ValueError, match=message):
        assign_splits([0, 1], ["a", "b"], fractions)


def test_too_few_patients_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="3 patients are too few .* at least 10"):
        assign_splits([0, 1, 0, 1], ["a", "b", "c", "c"], {"train": 0.8, "val": 0.1, "test": 0.1})


def _manifest() -> Manifest:
    records = [record(i, i % 2, f"P{i // 2}", "train" if i < 6 else "test") for i in range(8)]
    return Manifest("m", "abc", records, ["c0", "c1"], subsets={"rejected": [records[0].sha256, records[7].sha256]})


def test_selectors_combine_split_label_and_subset() -> None:
    m = _manifest()
    assert [r.source_path for r in select(m, "")] == [r.source_path for r in m.records]
    assert {r.source_path for r in select(m, "split=test")} == {"src/6.png", "src/7.png"}
    assert {r.source_path for r in select(m, "split=train,label=c1")} == {"src/1.png", "src/3.png", "src/5.png"}
    assert select(m, "label=1") == select(m, "label=c1")
    assert {r.source_path for r in select(m, "subset!=rejected,split=test")} == {"src/6.png"}
    with pytest.raises(ValueError, match="selector term 'colour=red' is invalid"):
        select(m, "colour=red")
    with pytest.raises(ValueError, match="label 'c9' is not a class"):
        select(m, "label=c9")
    with pytest.raises(CatalogError, match="has no subset 'gan-train' .*subsets: rejected"):
        select(m, "subset=gan-train")


def test_overlap_finds_shared_patients_and_images() -> None:
    m = _manifest()
    train, test = select(m, "split=train"), select(m, "split=test")
    assert overlap(train, test).disjoint  # P0–P2 vs P3
    assert_disjoint(train, test, "train vs test")
    leaked = [*test, record(99, 0, "P1", "test")]
    found = overlap(train, leaked)
    assert found.patients == {"P1"} and not found.images
    with pytest.raises(CatalogError, match="gan-train vs test: NOT disjoint: 1 shared patient.*P1"):
        assert_disjoint(train, leaked, "gan-train vs test")
    same_image = [record(50, 0, None, "test", sha=train[0].sha256)]
    assert overlap(train, same_image).images == {train[0].sha256}
