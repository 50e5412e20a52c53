"""Versioned, content-addressed dataset catalog in the object store.

Layout under ``s3://{bucket}/catalog/``::

    blobs/sha256/ab/abcdef….png              one object per distinct image (content hash)
    datasets/{name}/versions/{version}.json  the manifest: one record per image
    datasets/{name}/latest                   pointer to the newest version

A version is the hash of its records, so re-publishing the same content gives the same
``name@version`` (idempotent). Publishing writes blobs first, then the manifest, then the
pointer: a reader never sees a version whose objects are not all there, and an
interrupted publish leaves nothing visible. Every read re-hashes what it fetched.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from infra.object_store import ObjectNotFoundError, ObjectStore, sha256_bytes

PREFIX = "catalog"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^[0-9a-f]{1,64}$")


class CatalogError(ValueError):
    """Bad dataset reference, missing version, or content that fails its hash."""


@dataclass(frozen=True)
class DatasetRef:
    """``name@version``; a bare ``name`` means the latest version."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        name, _, version = text.partition("@")
        if not _NAME.match(name):
            raise CatalogError(
                f"dataset name {name!r} is invalid: use lowercase letters, digits, '.', '_' or '-' (e.g. phantom-knee@1a2b3c)"
            )
        if version and not _VERSION.match(version):
            raise CatalogError(
                f"dataset version {version!r} of {name!r} is invalid: versions are lowercase hex hashes"
            )
        return cls(name, version or None)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset version (a manifest row)."""

    sha256: str
    label: int
    label_name: str
    split: str
    source_path: str
    bit_depth: int
    width: int
    height: int
    patient_id: str | None = None
    preprocessing: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    records: list[ImageRecord]
    classes: list[str]
    description: str = ""

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(self.name, self.version)

    def select(self, split: str | None = None, labels: Sequence[int] | None = None) -> list[ImageRecord]:
        return [
            r for r in self.records
            if (split is None or r.split == split) and (labels is None or r.label in labels)
        ]


def encode_png(pixels: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    """Deterministic PNG bytes of a uint8/uint16 grayscale or RGB array.

    Args:
        pixels: the image.
        text: optional ``tEXt`` chunks (key → Latin-1 value), written in sorted key order.
    """
    from PIL.PngImagePlugin import PngInfo

    info = None
    if text:
        info = PngInfo()
        for key in sorted(text):
            info.add_text(key, str(text[key]))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False, pnginfo=info)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def _version_of(name: str, classes: list[str], records: list[ImageRecord]) -> str:
    canonical = json.dumps(
        {"name": name, "classes": classes, "records": [asdict(r) for r in records]},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Catalog:
    """Publish and read dataset versions.

    Args:
        store: the object store holding the catalog.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- keys --------------------------------------------------------------------------
    @staticmethod
    def blob_key(sha: str) -> str:
        return f"{PREFIX}/blobs/sha256/{sha[:2]}/{sha}.png"

    @staticmethod
    def manifest_key(name: str, version: str) -> str:
        return f"{PREFIX}/datasets/{name}/versions/{version}.json"

    @staticmethod
    def latest_key(name: str) -> str:
        return f"{PREFIX}/datasets/{name}/latest"

    # -- write -------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        items: Iterable[tuple[bytes, dict]],
        classes: list[str],
        description: str = "",
        progress=None,
    ) -> Manifest:
        """Publish PNG blobs plus their record fields as a new (or existing) version.

        Args:
            name: dataset name.
            items: (png_bytes, record fields without sha256) pairs.
            classes: label names, index = label.
            description: free text stored in the manifest.
            progress: optional callable(done, total) for ingest counts.
        """
        DatasetRef.parse(name)
        items = list(items)
        records, blobs = [], {}
        for data, fields in items:
            sha = sha256_bytes(data)
            blobs[sha] = data
            records.append(ImageRecord(sha256=sha, **fields))
        records.sort(key=lambda r: (r.split, r.label, r.source_path))
        version = _version_of(name, classes, records)
        manifest = Manifest(name, version, records, classes, description)
        if self.store.exists(self.manifest_key(name, version)):
            self._point_latest(name, version)  # idempotent re-publish
            return manifest
        self._put_blobs(blobs, progress)
        body = json.dumps({**asdict(manifest), "records": [asdict(r) for r in records]}, sort_keys=True)
        self.store.put_bytes(self.manifest_key(name, version), body.encode(), content_type="application/json")
        self._point_latest(name, version)
        return manifest

    def _put_blobs(self, blobs: dict[str, bytes], progress) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def put(item: tuple[str, bytes]) -> None:
            sha, data = item
            self.store.put_bytes(self.blob_key(sha), data, content_type="image/png", metadata={"sha256": sha})

        with ThreadPoolExecutor(self.store.settings.s3_max_concurrency) as pool:
            for done, _ in enumerate(pool.map(put, blobs.items()), 1):
                if progress and (done % 500 == 0 or done == len(blobs)):
                    progress(done, len(blobs))

    def _point_latest(self, name: str, version: str) -> None:
        self.store.put_bytes(self.latest_key(name), json.dumps({"version": version}).encode(), content_type="application/json")

    # -- read --------------------------------------------------------------------------
    def resolve(self, ref: DatasetRef | str) -> DatasetRef:
        ref = DatasetRef.parse(ref) if isinstance(ref, str) else ref
        if ref.version:
            return ref
        key = self.latest_key(ref.name)
        try:
            version = json.loads(self.store.get_bytes(key))["version"]
            if not isinstance(version, str) or not _VERSION.match(version):
                raise ValueError(f"bad version {version!r}")
        except ObjectNotFoundError:
            raise CatalogError(f"dataset {ref.name!r} does not exist in the catalog") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise CatalogError(f"latest pointer {self.store.uri(key)} of {ref.name!r} is corrupt: {exc}") from None
        return DatasetRef(ref.name, version)

    def manifest(self, ref: DatasetRef | str) -> Manifest:
        ref = self.resolve(ref)
        key = self.manifest_key(ref.name, ref.version)
        try:
            raw = json.loads(self.store.get_bytes(key))
        except ObjectNotFoundError:
            raise CatalogError(f"dataset version {ref} does not exist in the catalog") from None
        except ValueError as exc:  # not JSON / not UTF-8
            raise CatalogError(f"manifest {self.store.uri(key)} of {ref} is not valid JSON (tampered?): {exc}") from None
        try:
            records = [ImageRecord(**r) for r in raw["records"]]
            name, version, classes = raw["name"], raw["version"], raw["classes"]
            description = raw.get("description", "")
        except (TypeError, KeyError, AttributeError) as exc:
            raise CatalogError(f"manifest {self.store.uri(key)} of {ref} is malformed (tampered?): {exc!r}") from None
        # The hash covers name, classes and records; the stored version field and the
        # dataset the manifest sits under are checked explicitly.
        if (name, version) != (ref.name, ref.version) or _version_of(ref.name, classes, records) != ref.version:
            raise CatalogError(
                f"manifest {self.store.uri(key)} of {ref} does not match its version hash (tampered?)"
            )
        return Manifest(name, version, records, classes, description)

    def read_pixels(self, records: Sequence[ImageRecord]) -> np.ndarray:
        """Fetch, verify and decode images concurrently into one (N, H, W[, C]) array."""
        keys = [self.blob_key(r.sha256) for r in records]
        out = []
        fetched = self.store.get_many(keys)
        try:
            for record in records:
                try:
                    key, data = next(fetched)
                except ObjectNotFoundError as exc:
                    # get_many raises in input order, so this is the record whose object is gone.
                    raise CatalogError(
                        f"object {self.store.uri(self.blob_key(record.sha256))} of {record.source_path} "
                        f"is missing from the object store (deleted?)"
                    ) from exc
                if sha256_bytes(data) != record.sha256:
                    raise CatalogError(f"object {self.store.uri(key)} fails its sha256 check ({record.source_path})")
                out.append(decode_png(data))
        finally:
            fetched.close()  # stop the fetch pool now, also when a check fails midway
        return np.stack(out) if out else np.empty((0,), np.uint8)

    def datasets(self) -> list[str]:
        names = {k.split("/")[2] for k in self.store.list_keys(f"{PREFIX}/datasets/")}
        return sorted(names)
