"""The real-vs-real FID floor: its definition on features, and its cache next to the reference.

64-d features keep the stack part cheap (same code as 2048-d with another ``dims``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import training.evaluate.reference as reference_module
from infra.object_store import ObjectStore
from infra.settings import Settings
from training.catalog.phantom import PhantomSpec
from training.catalog.selection import publish_phantom
from training.evaluate import reference_statistics
from training.evaluate.fid import frechet_distance, statistics
from training.evaluate.floor import derive_reference, floor_from_features, floor_key, real_floor, with_floor

DIMS = 64


def test_floor_of_2n_rows_is_the_fid_of_the_two_disjoint_halves() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 4))
    value, method = floor_from_features(feats, 20)
    assert method == "halves"
    assert value == pytest.approx(frechet_distance(*statistics(feats[:20]), *statistics(feats[20:40])))


def test_floor_bootstraps_disjoint_halves_when_fewer_than_2n() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 4))
    value, method = floor_from_features(feats, 30, draws=5, seed=3)
    assert method == "bootstrap" and value > 0
    assert value == floor_from_features(feats, 30, draws=5, seed=3)[0]  # seeded
    # the mean over draws of FIDs between resamples of rows 0-14 and rows 15-29
    r = np.random.default_rng(3)
    a, b = feats[:15], feats[15:30]
    want = np.mean([frechet_distance(*statistics(a[r.integers(0, 15, 30)]), *statistics(b[r.integers(0, 15, 30)]))
                    for _ in range(5)])
    assert value == pytest.approx(want)
    with pytest.raises(ValueError, match="n >= 2"):
        floor_from_features(feats[:3], 2)


def test_floor_shrinks_with_n_on_one_distribution() -> None:
    """The small-n bias the floor exists to show: same distribution, larger n, lower FID."""
    feats = np.random.default_rng(2).normal(size=(2000, 8))
    assert floor_from_features(feats, 1000)[0] < floor_from_features(feats, 50)[0] / 5


def test_floor_key_sits_beside_the_reference_and_the_message_reads_it() -> None:
    assert floor_key("fid/reference/abc.npz") == "fid/reference/abc.floor.json"
    with pytest.raises(ValueError, match=".npz"):
        floor_key("fid/reference/abc")


@pytest.mark.stack
def test_floor_is_cached_beside_the_reference_and_keyed_by_content(stack: Settings, monkeypatch) -> None:
    store = ObjectStore(stack)
    a = str(publish_phantom(60, PhantomSpec(size=64, seed=11), name="phantom-floor-a", settings=stack,
                            progress=lambda _: None).ref)
    b = str(publish_phantom(60, PhantomSpec(size=64, seed=12), name="phantom-floor-b", settings=stack,
                            progress=lambda _: None).ref)
    ref = reference_statistics(a, split=None, n=12, dims=DIMS, settings=stack)
    store.delete_prefix(floor_key(ref.key))
    first = real_floor(ref, stack)
    assert not first.cached and first.method == "halves" and first.n == 12 and first.n_available == 24
    assert first.key == floor_key(ref.key) and store.exists(first.key)
    body = json.loads(store.get_bytes(first.key))
    assert body["spec"] == ref.spec and body["floor"]["fid"] == pytest.approx(first.fid)
    # the value is the FID between the selection's first 12 and next 12 images
    big = reference_statistics(a, split=None, n=24, dims=DIMS, settings=stack)
    assert first.fid == pytest.approx(floor_from_features(big.features, 12)[0])

    seen: list[int] = []
    real_extract = reference_module._extract
    monkeypatch.setattr(reference_module, "_extract", lambda arr, *x, **k: seen.append(len(arr)) or real_extract(arr, *x, **k))
    again = real_floor(ref, stack)
    assert again.cached and again.fid == first.fid and seen == []  # a hit: no Inception, no recompute

    # other content, other key: another dataset version, or another n
    other = reference_statistics(b, split=None, n=12, dims=DIMS, settings=stack)
    assert floor_key(other.key) != first.key
    assert real_floor(other, stack).fid != first.fid
    assert floor_key(reference_statistics(a, split=None, n=13, dims=DIMS, settings=stack).key) != first.key
    # a floor object whose spec does not match its key is ignored and recomputed
    store.put_bytes(first.key, json.dumps({**body, "spec": other.spec}).encode())
    assert not real_floor(ref, stack).cached
    assert "real-vs-real floor" in with_floor(40.0, first) and "at n = 12" in with_floor(40.0, first)


@pytest.mark.stack
def test_derived_prefix_reference_equals_a_computed_one(stack: Settings) -> None:
    a = str(publish_phantom(60, PhantomSpec(size=64, seed=11), name="phantom-floor-a", settings=stack,
                            progress=lambda _: None).ref)
    store = ObjectStore(stack)
    big = reference_statistics(a, split=None, n=24, dims=DIMS, settings=stack)
    small = reference_statistics(a, split=None, n=10, dims=DIMS, settings=stack)
    store.delete_prefix(small.key)
    derived = derive_reference(big, 10, stack)
    assert derived.key == small.key and not derived.cached
    np.testing.assert_allclose(derived.mu, small.mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(derived.sigma, small.sigma, rtol=1e-5, atol=1e-6)
    hit = reference_statistics(a, split=None, n=10, dims=DIMS, settings=stack)
    assert hit.cached and hit.image_sha256 == small.image_sha256  # what it published passes the reader's checks
