"""Reference statistics cached in the real object store, and FID / KID / PR against them.

64-d features (pytorch-fid's first block, same preprocessing) keep these cheap; the 2048-d
path is the same code with another ``dims``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest

import training.evaluate.reference as reference_module
from training.catalog.store import CatalogError
from infra.object_store import ObjectStore
from infra.settings import Settings
from training.catalog.selection import publish_phantom
from training.evaluate import (
    EXTRACTION_RULE,
    RESIZE_RULE,
    compute_fid,
    evaluate,
    fid_to_reference,
    fid_weights,
    reference_images,
    reference_statistics,
)
from training.evaluate.reference import REFERENCE_PREFIX, reference_key, reference_spec
from training.catalog.phantom import PhantomSpec, make_phantom

pytestmark = pytest.mark.stack

NAME = "phantom-metrics"
DIMS = 64


@pytest.fixture(scope="module")
def dataset(stack: Settings) -> str:
    """80 phantom knees at 64 px (same spec in every metrics test file: one version, idempotent)."""
    return str(publish_phantom(80, PhantomSpec(size=64, seed=5), name=NAME, settings=stack, progress=lambda _: None).ref)


@pytest.fixture
def counted_extract(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images the reference module pushes through Inception (0 on a cache hit)."""
    seen: list[int] = []
    real = reference_module._extract

    def counting(arr, *args, **kwargs):
        seen.append(len(arr))
        return real(arr, *args, **kwargs)

    monkeypatch.setattr(reference_module, "_extract", counting)
    return seen


def _fresh(store: ObjectStore, *args, **kwargs):
    """Reference statistics after deleting their cache object: always a miss."""
    ref = reference_statistics(*args, **kwargs)
    store.delete_prefix(ref.key)
    return reference_statistics(*args, **kwargs)


def test_second_reference_is_a_cache_hit_not_a_recompute(
    dataset: str, stack: Settings, store: ObjectStore, counted_extract: list[int]
) -> None:
    calls: list[tuple] = []
    first = _fresh(store, dataset, split="train", n=30, dims=DIMS, settings=stack)
    assert not first.cached and sum(counted_extract) == 30 * 2  # once to prime, once after delete
    counted_extract.clear()
    second = reference_statistics(dataset, split="train", n=30, dims=DIMS, settings=stack,
                                  progress=lambda *a: calls.append(a))
    assert second.cached and counted_extract == [] and calls == []
    assert second.key == first.key and store.exists(second.key)
    np.testing.assert_array_equal(second.mu, first.mu)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    np.testing.assert_array_equal(second.features, first.features)
    assert second.image_sha256 == first.image_sha256 and len(second.image_sha256) == 30
    assert (second.n, second.image_size, second.dims) == (30, (64, 64), DIMS)
    assert second.weights_sha256 == fid_weights(stack).sha256 and second.resize_rule == RESIZE_RULE

    fake = make_phantom_pixels(20, seed=99)
    a, b = fid_to_reference(fake, first, settings=stack), fid_to_reference(fake, second, settings=stack)
    assert a.fid == b.fid  # a hit gives the very same number
    assert counted_extract == []  # FIDs against a reference never touch the real images


def make_phantom_pixels(n: int, seed: int) -> np.ndarray:
    return np.stack([img.pixels for img in make_phantom(n, PhantomSpec(size=64, seed=seed))])


def test_key_is_content_not_name(dataset: str, stack: Settings) -> None:
    name, version = dataset.split("@")
    by_name = reference_statistics(name, split="train", n=20, dims=DIMS, settings=stack)
    by_version = reference_statistics(dataset, split="train", n=20, dims=DIMS, settings=stack)
    assert by_name.key == by_version.key and by_version.cached
    assert by_name.key.startswith(REFERENCE_PREFIX) and name not in by_name.key
    assert by_name.spec["manifest_sha"] == version
    spec = reference_spec(version, "train", None, None, 20, by_name.weights_sha256, DIMS)
    assert reference_key(spec) == by_name.key
    variants = [
        {**spec, "n": 21}, {**spec, "labels": [0]}, {**spec, "subset": "gan-train"}, {**spec, "split": None},
        {**spec, "dims": 2048}, {**spec, "weights_sha256": "0" * 64}, {**spec, "resize_rule": "other"},
        {**spec, "manifest_sha": "f" * 16}, {**spec, "extraction_rule": "other"},
    ]
    assert len({reference_key(v) for v in [spec, *variants]}) == len(variants) + 1


def test_old_and_new_extraction_rules_never_share_a_cache_entry(
    dataset: str, stack: Settings, store: ObjectStore
) -> None:
    """Statistics cached before extraction rule 2 (NCHW, spec format /2 without the rule), or under
    rules 1 and 2, sit under other keys: a lookup under today's rule never reads them, even with an
    entry planted there."""
    ref = reference_statistics(dataset, split="train", n=20, dims=DIMS, settings=stack)
    assert ref.spec["extraction_rule"] == EXTRACTION_RULE == ref.extraction_rule
    assert ref.spec["format"] == "synthray-fid-reference/3"
    old_spec = {k: v for k, v in ref.spec.items() if k != "extraction_rule"} | {"format": "synthray-fid-reference/2"}
    old_key = reference_key(old_spec)
    assert old_key != ref.key
    rule1 = reference_key({**ref.spec, "extraction_rule": "synthray-fid-extract/1: NCHW"})
    rule2 = reference_key({**ref.spec, "extraction_rule": "synthray-fid-extract/2: channels_last weights and "
                                                          "batches, float32, inference_mode"})
    assert len({old_key, rule1, rule2, ref.key}) == 4
    # Plant a well-formed "old" entry (shifted statistics, same images) under the old key.
    planted = reference_module._encode(
        ref.features + 1, ref.mu + 1, ref.sigma, _records(ref, stack), old_spec, ref.image_size, ref.dataset)
    store.put_bytes(old_key, planted, metadata={"sha256": hashlib.sha256(planted).hexdigest()})
    shas = list(ref.image_sha256)
    again = reference_statistics(dataset, split="train", n=20, dims=DIMS, settings=stack)
    assert again.cached and again.key == ref.key
    np.testing.assert_array_equal(again.mu, ref.mu)  # not the planted mu + 1
    assert reference_module._load(store, ref.key, old_spec, shas) is None  # the new entry names its rule
    store.delete_prefix(old_key)


def _records(ref, stack: Settings):
    from training.catalog.store import Catalog

    manifest = Catalog(ObjectStore(stack)).manifest(ref.dataset)
    return reference_module.selected_records(manifest, "train", None, None, ref.n)


def test_fid_against_itself_is_zero_and_equals_the_direct_path(dataset: str, stack: Settings) -> None:
    ref = reference_statistics(dataset, split="train", n=40, dims=DIMS, settings=stack)
    real = reference_images(ref, settings=stack)
    assert real.shape == (40, 64, 64) and real.dtype == np.uint8
    self_fid = fid_to_reference(real, ref, settings=stack)
    assert abs(self_fid.fid) < 1e-6 * np.trace(ref.sigma)
    fake = make_phantom_pixels(25, seed=7)
    result = fid_to_reference(fake, ref, settings=stack, batch_size=13)
    direct = compute_fid(real, fake, settings=stack, dims=DIMS)
    assert result.fid == pytest.approx(direct.fid, rel=1e-9) and result.fid > 0
    assert (result.n_real, result.n_fake, result.dims) == (40, 25, DIMS)
    assert result.reference_key == ref.key and result.weights_sha256 == ref.weights_sha256
    assert result.resize_rule == RESIZE_RULE and result.method == "eigh"

    boot = fid_to_reference(fake, ref, settings=stack, bootstrap=30, seed=1)
    assert boot.fid == result.fid and boot.bootstrap == 30 and boot.confidence == 0.95
    assert boot.ci_low < boot.ci_high and math.isfinite(boot.ci_high)


def test_evaluate_computes_every_metric_from_one_pass(dataset: str, stack: Settings) -> None:
    ref = reference_statistics(dataset, split="train", n=40, dims=DIMS, settings=stack)
    fake = make_phantom_pixels(30, seed=8)
    out = evaluate(fake, ref, settings=stack, kid_bootstrap=200)
    assert set(out) == {"fid", "kid", "precision_recall"}
    assert out["fid"]["fid"] == fid_to_reference(fake, ref, settings=stack).fid
    assert out["kid"]["reference_key"] == ref.key and out["kid"]["n_fake"] == 30
    assert out["kid"]["ci_low"] <= out["kid"]["kid"] <= out["kid"]["ci_high"]
    assert 0 <= out["precision_recall"]["precision"] <= 1 and out["precision_recall"]["n_real"] == 40
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(fake, ref, ["is"], settings=stack)


def test_a_corrupted_cache_object_is_recomputed(
    dataset: str, stack: Settings, store: ObjectStore, counted_extract: list[int]
) -> None:
    ref = reference_statistics(dataset, split="train", n=12, dims=DIMS, settings=stack)
    garbage = b"not an npz"
    # Bytes that fail their published hash, then bytes that match it but do not parse.
    for sha in ("0" * 64, hashlib.sha256(garbage).hexdigest()):
        store.put_bytes(ref.key, garbage, metadata={"sha256": sha})
        counted_extract.clear()
        again = reference_statistics(dataset, split="train", n=12, dims=DIMS, settings=stack)
        assert not again.cached and sum(counted_extract) == 12
        np.testing.assert_array_equal(again.mu, ref.mu)
    assert reference_statistics(dataset, split="train", n=12, dims=DIMS, settings=stack).cached


def test_bad_selections_and_mismatched_weights_are_named(dataset: str, stack: Settings) -> None:
    with pytest.raises(ValueError, match=r"n=5000 but dataset .* has only \d+ images"):
        reference_statistics(dataset, split="train", n=5000, dims=DIMS, settings=stack)
    with pytest.raises(CatalogError, match="no subset 'nope'"):
        reference_statistics(dataset, subset="nope", dims=DIMS, settings=stack)
    with pytest.raises(ValueError, match="no images with split='nosuch'"):
        reference_statistics(dataset, split="nosuch", dims=DIMS, settings=stack)
    with pytest.raises(CatalogError, match="does not exist"):
        reference_statistics("no-such-dataset", dims=DIMS, settings=stack)
    ref = reference_statistics(dataset, split="train", n=12, dims=DIMS, settings=stack)
    other = dataclasses.replace(ref, weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="weights"):
        fid_to_reference(make_phantom_pixels(4, seed=1), other, settings=stack)


def test_nothing_is_written_outside_the_store(dataset: str, stack: Settings) -> None:
    """The cache lives in S3 only: no new files in the packages' directories or torch's hub cache."""
    import pytorch_fid

    dirs = [Path(pytorch_fid.__file__).parent, Path(os.path.expanduser("~/.cache/torch"))]

    def snapshot() -> set[Path]:
        return {p for d in dirs if d.exists() for p in d.rglob("*") if "__pycache__" not in p.parts}

    before = snapshot()
    reference_statistics(dataset, split="train", n=16, labels=[0, 1, 2, 3, 4], dims=DIMS, settings=stack)
    assert snapshot() == before
    assert not str(stack.torch_home.resolve()).startswith(str(Path(pytorch_fid.__file__).parents[1]))
