"""ObjectStore against the real S3 gateway (SeaweedFS) of the private test stack.

Every test writes under its own random prefix, so tests never see each other's objects.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from infra.object_store import ObjectNotFoundError, ObjectStore, ObjectStoreError, sha256_bytes
from infra.settings import Settings

pytestmark = pytest.mark.stack


@pytest.fixture
def prefix(store: ObjectStore) -> str:
    store.ensure_bucket()
    return f"test-object-store/{uuid.uuid4().hex}/"


def test_put_get_round_trip(store: ObjectStore, prefix: str) -> None:
    payloads = {
        f"{prefix}random.bin": os.urandom(256 * 1024 + 7),
        f"{prefix}empty": b"",
        f"{prefix}deep/er/path/with spaces & ünïcode.txt": "grüße".encode(),
    }
    for key, data in payloads.items():
        store.put_bytes(key, data)
    for key, data in payloads.items():
        assert store.get_bytes(key) == data
        assert store.exists(key)
    # overwrite replaces the object
    key = f"{prefix}random.bin"
    store.put_bytes(key, b"second version")
    assert store.get_bytes(key) == b"second version"


def test_metadata_and_content_type(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}meta.png"
    data = b"\x89PNG not really"
    store.put_bytes(key, data, content_type="image/png", metadata={"sha256": sha256_bytes(data), "origin": "test"})
    head = store.head(key)
    assert head["Metadata"] == {"sha256": sha256_bytes(data), "origin": "test"}
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(data)


def test_missing_key_names_the_s3_uri(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}does/not/exist.bin"
    uri = f"s3://{store.bucket}/{key}"
    assert store.uri(key) == uri
    for call in (store.get_bytes, store.head):
        with pytest.raises(ObjectNotFoundError) as info:
            call(key)
        assert uri in str(info.value)
        assert isinstance(info.value, KeyError)  # callers may catch it as a KeyError
        assert not str(info.value).startswith("'")  # readable, not KeyError's quoted repr
    assert store.exists(key) is False
    with pytest.raises(ObjectNotFoundError, match=uri):
        store.download_file(key, Path("/nonexistent-dir-never-created/x"))


def test_list_keys_respects_the_prefix(store: ObjectStore, prefix: str) -> None:
    keys = [f"{prefix}a/1", f"{prefix}a/2", f"{prefix}a/sub/3", f"{prefix}ab/4", f"{prefix}b/5"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert sorted(store.list_keys(f"{prefix}a/")) == [f"{prefix}a/1", f"{prefix}a/2", f"{prefix}a/sub/3"]
    assert sorted(store.list_keys(f"{prefix}a")) == sorted(keys[:4])
    assert sorted(store.list_keys(prefix)) == sorted(keys)
    assert list(store.list_keys(f"{prefix}nothing-here/")) == []


def test_get_many_preserves_input_order(store: ObjectStore, prefix: str) -> None:
    keys = [f"{prefix}many/{i:04d}" for i in range(150)]
    contents = {key: f"{key}:{os.urandom(8).hex()}".encode() * (1 + i % 7) for i, key in enumerate(keys)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put_bytes(k, contents[k]), keys))
    order = keys[:]
    random.Random(3).shuffle(order)
    order += order[:5]  # repeated keys are fetched again, in place
    fetched = list(store.get_many(order))
    assert [k for k, _ in fetched] == order
    assert all(data == contents[key] for key, data in fetched)
    assert list(store.get_many([])) == []


def test_get_many_missing_key_raises_naming_it(store: ObjectStore, prefix: str) -> None:
    store.put_bytes(f"{prefix}present", b"x")
    missing = f"{prefix}absent"
    with pytest.raises(ObjectNotFoundError, match=f"s3://{store.bucket}/{missing}"):
        list(store.get_many([f"{prefix}present", missing]))


def test_delete_prefix(store: ObjectStore, prefix: str) -> None:
    doomed = [f"{prefix}doomed/{i}" for i in range(12)]
    kept = [f"{prefix}doomed-not/1", f"{prefix}kept/2"]
    for key in doomed + kept:
        store.put_bytes(key, b"x")
    assert store.delete_prefix(f"{prefix}doomed/") == len(doomed)
    assert list(store.list_keys(f"{prefix}doomed/")) == []
    assert not store.exists(doomed[0])
    assert sorted(store.list_keys(prefix)) == sorted(kept)
    assert store.delete_prefix(f"{prefix}doomed/") == 0


def test_listing_and_deleting_more_than_one_page(store: ObjectStore, prefix: str) -> None:
    # S3 lists at most 1000 keys per page and deletes at most 1000 per request.
    keys = [f"{prefix}page/{i:05d}" for i in range(1001)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b""), keys))
    assert sorted(store.list_keys(f"{prefix}page/")) == keys
    assert store.delete_prefix(f"{prefix}page/") == 1001
    assert list(store.list_keys(f"{prefix}page/")) == []


def test_presigned_url_is_fetchable_without_credentials(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}shared/report.bin"
    data = os.urandom(4096)
    store.put_bytes(key, data)
    url = store.presign_get(key, expires_s=300)
    assert url.startswith(store.settings.s3_endpoint_url)
    resp = httpx.get(url, timeout=30)
    assert resp.status_code == 200
    assert resp.content == data
    # the signature covers the key: the same query string on another key is refused
    tampered = url.replace("report.bin", "other.bin", 1)
    assert httpx.get(tampered, timeout=30).status_code in {403, 404}
    # and an unsigned request is not anonymous access
    assert httpx.get(url.split("?", 1)[0], timeout=30).status_code in {401, 403}


def test_upload_and_download_file(store: ObjectStore, prefix: str, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(10_000))
    key = f"{prefix}files/in.bin"
    store.upload_file(src, key, metadata={"kind": "test"})
    assert store.head(key)["Metadata"] == {"kind": "test"}
    dst = tmp_path / "nested" / "out.bin"
    store.download_file(key, dst)
    assert dst.read_bytes() == src.read_bytes()


def test_ensure_bucket_creates_once_and_is_idempotent(stack: Settings) -> None:
    other = ObjectStore(stack.model_copy(update={"bucket": f"srt-{uuid.uuid4().hex[:12]}"}))
    buckets = lambda: {b["Name"] for b in other.client.list_buckets()["Buckets"]}  # noqa: E731
    assert other.bucket not in buckets()
    try:
        other.ensure_bucket()
        assert other.bucket in buckets()
        other.put_bytes("k", b"v")
        other.ensure_bucket()  # no-op: the bucket and its objects survive
        assert other.get_bytes("k") == b"v"
    finally:
        other.delete_prefix("")
        other.client.delete_bucket(Bucket=other.bucket)


def test_unreachable_endpoint_is_an_object_store_error(stack: Settings) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    dead = ObjectStore(stack.model_copy(update={"s3_endpoint_url": endpoint}))
    with pytest.raises(ObjectStoreError, match=f"cannot reach the object store at {endpoint}"):
        dead.get_bytes("anything")
