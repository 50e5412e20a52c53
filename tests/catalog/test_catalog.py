"""The dataset catalog on the real S3 gateway of the private test stack.

Each test publishes phantom images of its own random seed under its own dataset name, so
blobs (content-addressed and shared across datasets) never overlap between tests. Failures
are injected by making one ``put_bytes`` of a test-local ``ObjectStore`` raise: the requests
that do go out still hit the real S3.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import uuid

import numpy as np
import pytest

from training.catalog.store import PREFIX, Catalog, CatalogError, DatasetRef, ImageRecord, Manifest, decode_png, encode_png
from infra.object_store import ObjectStoreError, sha256_bytes
from training.catalog.phantom import KL_NAMES, PhantomImage, PhantomSpec, make_phantom

SIZE = 32


# -- helpers ------------------------------------------------------------------------------
def fields_of(img: PhantomImage, source_path: str | None = None) -> dict:
    return {
        "label": img.grade,
        "label_name": img.grade_name,
        "split": "test" if img.index % 4 == 0 else "train",
        "source_path": source_path or f"phantom/{img.grade_name}/{img.index:05d}.png",
        "bit_depth": 8,
        "width": SIZE,
        "height": SIZE,
        "patient_id": img.patient_id,
        "preprocessing": [{"op": "none"}],
    }


def phantom(n: int) -> tuple[list[PhantomImage], list[tuple[bytes, dict]]]:
    """``n`` phantom images of a fresh seed and their (png, fields) publish items."""
    images = make_phantom(n, PhantomSpec(size=SIZE, seed=random.randrange(2**31)))
    return images, [(encode_png(img.pixels), fields_of(img)) for img in images]


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def puts(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys written through the catalog's store (the writes still go to the real S3)."""
    written: list[str] = []
    real = catalog.store.put_bytes

    def spy(key: str, data: bytes, **kwargs) -> None:
        real(key, data, **kwargs)
        written.append(key)

    monkeypatch.setattr(catalog.store, "put_bytes", spy)
    return written


def blob_keys(catalog: Catalog) -> set[str]:
    return set(catalog.store.list_keys(f"{PREFIX}/blobs/"))


def by_source(manifest: Manifest) -> dict[str, ImageRecord]:
    return {r.source_path: r for r in manifest.records}


# -- references ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "name", "version"),
    [
        ("phantom-knee", "phantom-knee", None),
        ("phantom-knee@1a2b3c4d5e6f7081", "phantom-knee", "1a2b3c4d5e6f7081"),
        ("knee_v1.2", "knee_v1.2", None),
        ("0", "0", None),
        ("x@", "x", None),
    ],
)
def test_dataset_ref_parses_valid_references(text: str, name: str, version: str | None) -> None:
    ref = DatasetRef.parse(text)
    assert (ref.name, ref.version) == (name, version)
    assert DatasetRef.parse(str(ref)) == ref


@pytest.mark.parametrize("name", ["Phantom", "-knee", ".hidden", "a/b", "a b", "", "x" * 101, "knee!", "é"])
def test_dataset_ref_rejects_invalid_names_naming_them(name: str) -> None:
    with pytest.raises(CatalogError) as info:
        DatasetRef.parse(f"{name}@abc")
    assert f"dataset name {name!r} is invalid" in str(info.value)


@pytest.mark.parametrize("version", ["../../other", "ABC", "v1", "abc@def", "1" * 65])
def test_dataset_ref_rejects_invalid_versions_naming_them(version: str) -> None:
    with pytest.raises(CatalogError, match=f"dataset version {version!r} of 'knee' is invalid"):
        DatasetRef.parse(f"knee@{version}")


@pytest.mark.stack
def test_unknown_dataset_and_version_are_catalog_errors(catalog: Catalog) -> None:
    name = unique_name()
    with pytest.raises(CatalogError, match=f"dataset '{name}' does not exist"):
        catalog.manifest(name)
    with pytest.raises(CatalogError, match=f"dataset version {name}@0123abcd does not exist"):
        catalog.manifest(f"{name}@0123abcd")


# -- publish and read ---------------------------------------------------------------------
@pytest.mark.stack
def test_publish_round_trip(catalog: Catalog) -> None:
    images, items = phantom(12)
    name = unique_name()
    progress: list[tuple[int, int]] = []
    published = catalog.publish(name, items, classes=list(KL_NAMES), description="unit test", progress=lambda *a: progress.append(a))

    assert len(published.records) == 12
    assert published.ref == DatasetRef(name, published.version)
    assert progress[-1] == (12, 12)
    # the name alone resolves to the version just published, and the manifest round-trips
    assert catalog.resolve(name) == published.ref
    assert catalog.manifest(name) == published
    assert catalog.manifest(str(published.ref)) == published
    assert name in catalog.datasets()

    # pixels read back equal the originals, record by record
    records = by_source(published)
    for img in images:
        record = records[fields_of(img)["source_path"]]
        assert record.sha256 == sha256_bytes(encode_png(img.pixels))
        assert (record.label, record.patient_id) == (img.grade, img.patient_id)
    pixels = catalog.read_pixels(published.records)
    assert pixels.shape == (12, SIZE, SIZE) and pixels.dtype == np.uint8
    originals = {fields_of(img)["source_path"]: img.pixels for img in images}
    for record, got in zip(published.records, pixels):
        np.testing.assert_array_equal(got, originals[record.source_path])

    # blobs carry their hash; selection by split/label is a subset of the records
    head = catalog.store.head(catalog.blob_key(published.records[0].sha256))
    assert head["Metadata"]["sha256"] == published.records[0].sha256
    test_split = published.select(split="test")
    assert {r.source_path for r in test_split} == {
        fields_of(img)["source_path"] for img in images if img.index % 4 == 0
    }
    assert catalog.read_pixels([]).shape == (0,)


@pytest.mark.stack
def test_version_is_a_content_hash_independent_of_item_order(catalog: Catalog) -> None:
    _, items = phantom(6)
    a = catalog.publish(unique_name(), items, classes=list(KL_NAMES))
    name = unique_name()
    b = catalog.publish(name, list(reversed(items)), classes=list(KL_NAMES))
    c = catalog.publish(name, items[:5], classes=list(KL_NAMES))
    assert b.records == a.records
    assert a.version != b.version  # the name is part of the hash
    assert c.version != b.version


@pytest.mark.stack
def test_name_alone_resolves_to_the_latest_version(catalog: Catalog) -> None:
    images, items = phantom(8)
    name = unique_name()
    v1 = catalog.publish(name, items[:4], classes=list(KL_NAMES))
    v2 = catalog.publish(name, items, classes=list(KL_NAMES))
    assert v1.version != v2.version
    assert catalog.resolve(name) == v2.ref
    assert len(catalog.manifest(name).records) == 8
    # the older version stays readable by its full reference
    assert catalog.manifest(f"{name}@{v1.version}") == v1
    assert catalog.read_pixels(v1.records).shape == (4, SIZE, SIZE)


@pytest.mark.stack
def test_republishing_identical_content_is_idempotent(catalog: Catalog, puts: list[str]) -> None:
    _, items = phantom(12)
    name = unique_name()
    first = catalog.publish(name, items, classes=list(KL_NAMES))
    assert sum(k.startswith(f"{PREFIX}/blobs/") for k in puts) == 12
    blobs_before = blob_keys(catalog)
    puts.clear()

    again = catalog.publish(name, list(reversed(items)), classes=list(KL_NAMES))
    assert again == first
    assert blob_keys(catalog) == blobs_before
    # nothing but the latest pointer is written again: no blob, no manifest
    assert puts == [catalog.latest_key(name)]
    assert catalog.resolve(name) == first.ref


@pytest.mark.stack
def test_identical_images_are_stored_once(catalog: Catalog, puts: list[str]) -> None:
    images, items = phantom(4)
    # two more records whose pixels duplicate images 0 and 1 (e.g. the same file ingested twice)
    dupes = [(encode_png(images[i].pixels), fields_of(images[i], source_path=f"copies/{i}.png")) for i in (0, 1)]
    blobs_before = blob_keys(catalog)
    manifest = catalog.publish(unique_name(), items + dupes, classes=list(KL_NAMES))

    assert len(manifest.records) == 6
    shas = {r.sha256 for r in manifest.records}
    assert len(shas) == 4
    new_blobs = blob_keys(catalog) - blobs_before
    assert new_blobs == {catalog.blob_key(s) for s in shas}
    assert sorted(k for k in puts if k.startswith(f"{PREFIX}/blobs/")) == sorted(new_blobs)

    records = by_source(manifest)
    pair = [records["copies/0.png"], records[fields_of(images[0])["source_path"]]]
    assert pair[0].sha256 == pair[1].sha256
    a, b = catalog.read_pixels(pair)
    np.testing.assert_array_equal(a, images[0].pixels)
    np.testing.assert_array_equal(b, images[0].pixels)


@pytest.mark.stack
def test_invalid_name_publishes_nothing(catalog: Catalog, puts: list[str]) -> None:
    _, items = phantom(2)
    with pytest.raises(CatalogError, match="dataset name 'Not Valid' is invalid"):
        catalog.publish("Not Valid", items, classes=list(KL_NAMES))
    assert puts == []


# -- integrity ----------------------------------------------------------------------------
def _published_blob(catalog: Catalog, index: int) -> tuple[Manifest, ImageRecord, str]:
    """A fresh 3-image version, its record ``index`` and that record's blob key."""
    _, items = phantom(3)
    manifest = catalog.publish(unique_name(), items, classes=list(KL_NAMES))
    victim = manifest.records[index]
    return manifest, victim, catalog.blob_key(victim.sha256)


@pytest.mark.stack
def test_tampered_blob_fails_its_hash_check(catalog: Catalog) -> None:
    manifest, victim, key = _published_blob(catalog, 1)
    original = catalog.store.get_bytes(key)
    forged = encode_png(255 - decode_png(original))  # a perfectly valid PNG, wrong content
    catalog.store.put_bytes(key, forged, content_type="image/png")
    try:
        with pytest.raises(CatalogError) as info:
            catalog.read_pixels(manifest.records)
        message = str(info.value)
        assert f"object {catalog.store.uri(key)} fails its sha256 check" in message
        assert victim.source_path in message
        # the untouched records still read fine
        catalog.read_pixels([manifest.records[0], manifest.records[2]])
    finally:
        catalog.store.put_bytes(key, original, content_type="image/png")
    assert catalog.read_pixels(manifest.records).shape == (3, SIZE, SIZE)


@pytest.mark.stack
def test_deleted_blob_is_a_clear_error_naming_the_object(catalog: Catalog) -> None:
    manifest, victim, key = _published_blob(catalog, 2)
    assert catalog.store.delete_prefix(key) == 1
    with pytest.raises(CatalogError) as info:
        catalog.read_pixels(manifest.records)
    message = str(info.value)
    assert catalog.store.uri(key) in message
    assert victim.source_path in message
    assert "missing" in message


def _overwritten(catalog: Catalog, key_of, body_of) -> tuple[Manifest, str]:
    """A freshly published version whose object ``key_of(published)`` is replaced by ``body_of(old bytes)``."""
    _, items = phantom(3)
    published = catalog.publish(unique_name(), items, classes=list(KL_NAMES))
    key = key_of(published)
    catalog.store.put_bytes(key, body_of(catalog.store.get_bytes(key)), content_type="application/json")
    return published, key


def _manifest_key(catalog: Catalog):
    return lambda published: catalog.manifest_key(published.name, published.version)


@pytest.mark.stack
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda raw: raw["records"][0].update(label=(raw["records"][0]["label"] + 1) % 5), id="label"),
        pytest.param(lambda raw: raw["records"].pop(), id="dropped-record"),
        pytest.param(lambda raw: raw["classes"].reverse(), id="classes"),
        pytest.param(lambda raw: raw.update(version="0" * 16), id="version-field"),
        pytest.param(lambda raw: raw.update(name="someone-else"), id="name-field"),
        pytest.param(lambda raw: raw["records"][0].update(surprise=1), id="unknown-field"),
        pytest.param(lambda raw: raw.pop("records"), id="no-records"),
    ],
)
def test_tampered_manifest_is_refused(catalog: Catalog, tamper) -> None:
    def tampered(old: bytes) -> bytes:
        raw = json.loads(old)
        tamper(raw)
        return json.dumps(raw).encode()

    published, key = _overwritten(catalog, _manifest_key(catalog), tampered)
    with pytest.raises(CatalogError, match="tampered") as info:
        catalog.manifest(published.name)
    assert catalog.store.uri(key) in str(info.value)


MANIFEST_BODIES = [b"{not json", b"\xff\xfe\x00", b"[]", b'"a string"']
LATEST_BODIES = [b"garbage", b"{}", b'{"version": 7}', b'{"version": "../../x"}']


@pytest.mark.stack
@pytest.mark.parametrize(("target", "body"), [("manifest", b) for b in MANIFEST_BODIES] + [("latest", b) for b in LATEST_BODIES])
def test_corrupt_manifest_or_latest_pointer_is_a_catalog_error(catalog: Catalog, target: str, body: bytes) -> None:
    """A manifest that is not JSON (or not an object) is "tampered"; a corrupt latest pointer "is corrupt"."""
    key_of = _manifest_key(catalog) if target == "manifest" else (lambda pub: catalog.latest_key(pub.name))
    published, key = _overwritten(catalog, key_of, lambda _: body)
    with pytest.raises(CatalogError, match="tampered" if target == "manifest" else "is corrupt") as info:
        catalog.manifest(published.ref) if target == "manifest" else catalog.resolve(published.name)
    assert catalog.store.uri(key) in str(info.value)
    if target == "latest":
        assert catalog.manifest(published.ref) == published  # the version itself is intact


# -- interrupted publishes ----------------------------------------------------------------
def fail_on(catalog: Catalog, monkeypatch: pytest.MonkeyPatch, should_fail) -> list[str]:
    """Make the catalog store's put_bytes raise for the calls ``should_fail(key, n)`` picks.

    ``n`` counts the calls made so far (blobs are written from a thread pool, hence the lock).
    Returns the keys that were really written.
    """
    real = catalog.store.put_bytes
    done: list[str] = []
    calls = itertools.count()
    lock = threading.Lock()

    def put(key: str, data: bytes, **kwargs) -> None:
        with lock:
            n = next(calls)
        if should_fail(key, n):
            raise ObjectStoreError(f"put {catalog.store.uri(key)} failed: injected fault")
        real(key, data, **kwargs)
        with lock:
            done.append(key)

    monkeypatch.setattr(catalog.store, "put_bytes", put)
    return done


@pytest.mark.stack
def test_publish_interrupted_during_blobs_leaves_no_version(catalog: Catalog, monkeypatch) -> None:
    images, items = phantom(10)
    name = unique_name()
    done = fail_on(catalog, monkeypatch, lambda key, n: n == 4)  # the 5th blob write
    with pytest.raises(ObjectStoreError, match="injected fault"):
        catalog.publish(name, items, classes=list(KL_NAMES))
    assert 4 <= len(done) <= 9 and all(k.startswith(f"{PREFIX}/blobs/") for k in done)
    assert list(catalog.store.list_keys(f"{PREFIX}/datasets/{name}/")) == []
    assert name not in catalog.datasets()
    with pytest.raises(CatalogError, match="does not exist"):
        catalog.resolve(name)

    monkeypatch.undo()
    manifest = catalog.publish(name, items, classes=list(KL_NAMES))
    assert catalog.manifest(name) == manifest
    originals = {fields_of(img)["source_path"]: img.pixels for img in images}
    for record, got in zip(manifest.records, catalog.read_pixels(manifest.records)):
        np.testing.assert_array_equal(got, originals[record.source_path])


@pytest.mark.stack
def test_interrupted_new_version_keeps_the_old_one_latest(catalog: Catalog, monkeypatch) -> None:
    _, items = phantom(6)
    name = unique_name()
    v1 = catalog.publish(name, items[:3], classes=list(KL_NAMES))
    fail_on(catalog, monkeypatch, lambda key, n: key.endswith(".json"))  # blobs go, the manifest fails
    with pytest.raises(ObjectStoreError, match="injected fault"):
        catalog.publish(name, items, classes=list(KL_NAMES))
    assert catalog.resolve(name) == v1.ref
    assert list(catalog.store.list_keys(f"{PREFIX}/datasets/{name}/versions/")) == [
        catalog.manifest_key(name, v1.version)
    ]
    monkeypatch.undo()
    v2 = catalog.publish(name, items, classes=list(KL_NAMES))
    assert catalog.resolve(name) == v2.ref != v1.ref


@pytest.mark.stack
def test_publish_interrupted_before_the_pointer_is_repaired_by_a_retry(catalog: Catalog, monkeypatch) -> None:
    _, items = phantom(3)
    name = unique_name()
    fail_on(catalog, monkeypatch, lambda key, n: key == catalog.latest_key(name))
    with pytest.raises(ObjectStoreError, match="injected fault"):
        catalog.publish(name, items, classes=list(KL_NAMES))
    with pytest.raises(CatalogError, match="does not exist"):
        catalog.resolve(name)  # the version is complete but not yet the latest
    monkeypatch.undo()
    manifest = catalog.publish(name, items, classes=list(KL_NAMES))
    assert catalog.resolve(name) == manifest.ref


@pytest.mark.stack
def test_failing_item_iterator_writes_nothing(catalog: Catalog, puts: list[str]) -> None:
    _, items = phantom(4)

    def source():
        yield from items[:2]
        raise OSError("disk went away while reading image 3")

    name = unique_name()
    with pytest.raises(OSError, match="disk went away"):
        catalog.publish(name, source(), classes=list(KL_NAMES))
    assert puts == []
    assert name not in catalog.datasets()
