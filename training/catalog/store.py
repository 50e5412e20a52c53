"""Versioned, content-addressed dataset catalog in the object store.

Layout under ``s3://{bucket}/catalog/``::

    blobs/sha256/ab/abcdef….png              one object per distinct image or mask (content hash)
    datasets/{name}/reports/{version}/…      ingest report, contact sheets (written before the manifest)
    datasets/{name}/versions/{version}.json  the manifest: one record per image, plus named subsets
    datasets/{name}/latest                   pointer to the newest version

A version is the hash of the whole manifest (name, classes, records, subsets, dataset-level
preprocessing, description), so re-publishing the same content gives the same
``name@version`` (idempotent) and any edit to a stored manifest is detected. Publishing
writes blobs (skipping those already stored with the right hash), then attachments, then
the manifest, then the pointer: a reader never sees a version whose objects are not all
there, and an interrupted publish leaves nothing visible. Every read re-hashes what it
fetched.

Segmentation masks: a record may carry ``mask_sha256``, a uint8 label map (0 = background,
value ``i`` = ``Manifest.mask_classes[i]``) stored as a PNG blob next to the images and covered
by the version hash. Both fields are written only when present, so the manifests (and version
hashes) of datasets without masks are exactly what they were before masks existed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from infra.object_store import ObjectNotFoundError, ObjectStore, sha256_bytes
from infra.progress import CountProgress
from infra.errors import BadInput, NotFound
from infra.names import confined, name_problem

PREFIX = "catalog"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^[0-9a-f]{1,64}$")
_SUBSET = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_READ_CHUNK = 512  # records fetched before they are decoded (see Catalog.read_pixels)


class CatalogError(BadInput):
    """Bad dataset reference, missing version, or content that fails its hash."""


class DatasetNotFound(NotFound, CatalogError):
    """A dataset name or ``name@version`` that the catalog does not hold (HTTP 404)."""


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
    """One image of a dataset version (a manifest row).

    ``width``, ``height``, ``bit_depth`` and ``mode`` describe the *stored* blob, the image
    every consumer reads; ``source_*`` describe the file as it was read (after its EXIF
    orientation). Manifests written before the split have no ``source_*`` fields and hold the
    source's size in ``width``/``height``: :meth:`Manifest.stored_size` reads both kinds.
    """

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
    attributes: dict[str, str] = field(default_factory=dict)
    mode: str | None = None
    source_width: int | None = None
    source_height: int | None = None
    source_bit_depth: int | None = None
    source_mode: str | None = None
    #: Multi-label versions only (``Manifest.findings`` set): indices into ``findings`` of the
    #: image's positive findings, sorted; ``[]`` is "No Finding". None on single-label records
    #: (and then absent from the stored JSON, so single-label hashes are unchanged).
    label_set: list[int] | None = None
    #: Multi-label versions ingested with ``--uncertain ignore``: indices of findings the source
    #: marked uncertain (CheXpert's -1). Their target is 0 and their loss weight 0 (masked out).
    uncertain: list[int] | None = None
    mask_sha256: str | None = None  # the record's label map (a blob like the image); None = no mask


#: Fields that exist only on multi-label versions: omitted from the stored JSON (and therefore
#: from the version hash) when None, so every single-label manifest keeps its bytes and version.
_MULTILABEL_RECORD_FIELDS = ("label_set", "uncertain")
#: Record and manifest fields written only when set, so manifests without masks keep their hashes.
_OPTIONAL_RECORD_FIELDS = (*_MULTILABEL_RECORD_FIELDS, "mask_sha256")


def _manifest_body(manifest: Manifest) -> dict:
    """The manifest as stored (and hashed): ``asdict`` without the unset optional fields."""
    return _compact(asdict(manifest))


@dataclass(frozen=True)
class Manifest:
    """A dataset version.

    ``subsets`` are named, stored selections (e.g. ``rejected``, ``gan-train``), each a
    sorted list of image hashes; ``preprocessing`` describes the pipeline once per dataset
    while each record keeps what its steps did. ``mask_classes`` names the values of the
    records' masks (index = value, index 0 the background); empty when there are no masks.
    """

    name: str
    version: str
    records: list[ImageRecord]
    classes: list[str]
    description: str = ""
    subsets: dict[str, list[str]] = field(default_factory=dict)
    preprocessing: list[dict] = field(default_factory=list)
    #: The K findings of a multi-label version (NIH ChestX-ray14 / CheXpert layouts), in
    #: multi-hot order; None for single-label versions. ``classes`` then lists the label *sets*
    #: that occur ("No Finding", "Effusion+Pneumonia", …): they stratify the splits, balance
    #: and name export folders, so every single-label consumer keeps working.
    findings: list[str] | None = None
    mask_classes: list[str] = field(default_factory=list)

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(self.name, self.version)

    @property
    def multilabel(self) -> bool:
        return self.findings is not None

    def multi_hot(self, records: Sequence[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
        """(targets, mask), both float32 (N, K): 1 where a finding is present, and the loss
        weight of each entry (0 for an uncertain finding under ``--uncertain ignore``, else 1).

        Raises:
            CatalogError: the version is single-label.
        """
        if self.findings is None:
            raise CatalogError(f"dataset {self.ref} is single-label: it has no findings (multi-hot labels)")
        targets = np.zeros((len(records), len(self.findings)), np.float32)
        mask = np.ones_like(targets)
        for i, r in enumerate(records):
            targets[i, list(r.label_set or [])] = 1.0
            mask[i, list(r.uncertain or [])] = 0.0
        return targets, mask

    def select(
        self, split: str | None = None, labels: Sequence[int] | None = None, subset: str | None = None
    ) -> list[ImageRecord]:
        """Records of one split, label set and named subset (None = no filter)."""
        members = None if subset is None else set(self.subset(subset))
        return [
            r for r in self.records
            if (split is None or r.split == split) and (labels is None or r.label in labels)
            and (members is None or r.sha256 in members)
        ]

    def stored_size(self, record: ImageRecord) -> tuple[int, int]:
        """(width, height) of the stored blob of ``record``.

        Current manifests say so directly. Older ones recorded the source size; their
        dataset-level pipeline says which side a ``resize`` step made, and each record whether
        it ran.
        """
        if record.source_width is not None:
            return record.width, record.height
        size = next((int(s["size"]) for s in self.preprocessing if s.get("step") == "resize" and "size" in s), None)
        resized = any(s.get("step") == "resize" and s.get("resized") for s in record.preprocessing)
        return (size, size) if size is not None and resized else (record.width, record.height)

    def subset(self, name: str) -> list[str]:
        try:
            return self.subsets[name]
        except KeyError:
            known = ", ".join(sorted(self.subsets)) or "none"
            raise CatalogError(f"dataset {self.ref} has no subset {name!r} (subsets: {known})") from None


def encode_png(pixels: np.ndarray, text: Mapping[str, str] | None = None, compress_level: int = 6) -> bytes:
    """Deterministic PNG bytes of a uint8/uint16 grayscale or RGB array.

    Args:
        pixels: the image.
        text: optional ``tEXt`` chunks (key → Latin-1 value), written in sorted key order.
        compress_level: zlib level. Catalog blobs keep 6 (their hashes are their names).
    """
    from PIL.PngImagePlugin import PngInfo

    info = None
    if text:
        info = PngInfo()
        for key in sorted(text):
            info.add_text(key, str(text[key]))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False, pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def _compact(body: dict) -> dict:
    """A manifest body without its unset optional fields (multi-label ``findings``, mask
    ``mask_classes``; ``_OPTIONAL_RECORD_FIELDS`` per record): what is stored and hashed, so
    versions without labels sets or masks keep the bytes and hashes they had before either existed."""
    if body.get("findings") is None:
        body.pop("findings", None)
    if not body.get("mask_classes"):
        body.pop("mask_classes", None)
    for record in body["records"]:
        for key in _OPTIONAL_RECORD_FIELDS:
            if record.get(key) is None:
                record.pop(key, None)
    return body


def _version_of(body: Mapping) -> str:
    """Hash of everything in a manifest except its own version field."""
    content = {k: v for k, v in body.items() if k != "version"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Attachment:
    """A file published with a version (ingest report, contact sheet)."""

    name: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class VerifyReport:
    ref: DatasetRef
    checked: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


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

    @staticmethod
    def attachment_key(name: str, version: str, filename: str) -> str:
        return f"{PREFIX}/datasets/{name}/reports/{version}/{filename}"

    # -- write -------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        items: Iterable[tuple[bytes, dict]],
        classes: list[str],
        description: str = "",
        progress: CountProgress | None = None,
        subsets: Mapping[str, Iterable[str]] | None = None,
        preprocessing: list[dict] | None = None,
        attachments: Sequence[Attachment] = (),
        findings: Sequence[str] | None = None,
        mask_classes: Sequence[str] = (),
    ) -> Manifest:
        """Publish PNG blobs plus their record fields as a new (or existing) version.

        Args:
            name: dataset name.
            items: (png_bytes, record fields without sha256) pairs.
            classes: label names, index = label.
            description: free text stored in the manifest.
            progress: optional callable(done, total) for blob upload counts.
            subsets: named selections as image hashes; each must name images of this version.
            preprocessing: dataset-level description of the pipeline that made the blobs.
            attachments: files stored under the version's report prefix before the manifest.
            findings: the K findings of a multi-label version (records carry ``label_set``).
            mask_classes: names of the mask values (index = value, 0 = background); a record's
                mask PNG travels in its fields as ``mask_png`` (bytes) and is stored as a blob.
        """
        DatasetRef.parse(name)
        records, blobs = [], {}
        for data, fields in items:
            sha = sha256_bytes(data)
            blobs[sha] = data
            fields = dict(fields)
            if (mask := fields.pop("mask_png", None)) is not None:
                fields["mask_sha256"] = sha256_bytes(mask)
                blobs[fields["mask_sha256"]] = mask
            records.append(ImageRecord(sha256=sha, **fields))
        return self.publish_records(
            name, records, classes, description=description, subsets=subsets,
            preprocessing=preprocessing, attachments=attachments, blobs=blobs, progress=progress,
            findings=findings, mask_classes=mask_classes,
        )

    def publish_records(
        self,
        name: str,
        records: Iterable[ImageRecord],
        classes: list[str],
        description: str = "",
        subsets: Mapping[str, Iterable[str]] | None = None,
        preprocessing: list[dict] | None = None,
        attachments: Sequence[Attachment] = (),
        blobs: Mapping[str, bytes] | None = None,
        progress: CountProgress | None = None,
        findings: Sequence[str] | None = None,
        mask_classes: Sequence[str] = (),
    ) -> Manifest:
        """Publish a version from records; blobs not passed in must already be stored.

        This is how derived versions (new splits, new subsets) reuse the images of an
        existing version without downloading them.
        """
        DatasetRef.parse(name)
        blobs = dict(blobs or {})
        records = sorted(records, key=lambda r: (r.split, r.label, r.source_path))
        _check_names(classes, records)
        _check_masks(mask_classes, records)
        shas = {r.sha256 for r in records}
        subsets = {k: sorted(set(v)) for k, v in sorted((subsets or {}).items())}
        for subset, members in subsets.items():
            if not _SUBSET.match(subset):
                raise CatalogError(f"subset name {subset!r} is invalid: use lowercase letters, digits, '.', '_' or '-'")
            if stray := set(members) - shas:
                raise CatalogError(f"subset {subset!r} names {len(stray)} image(s) that are not in the dataset")
        _check_findings(findings, records)
        manifest = Manifest(name, "", records, list(classes), description, subsets, list(preprocessing or []),
                            None if findings is None else list(findings), list(mask_classes))
        body = _manifest_body(manifest)
        version = _version_of(body)
        manifest = dataclasses.replace(manifest, version=version)
        if self.store.exists(self.manifest_key(name, version)):
            self._point_latest(name, version)  # idempotent re-publish
            return manifest
        self._put_blobs(blobs, progress)
        self._require_blobs((shas | {r.mask_sha256 for r in records if r.mask_sha256}) - blobs.keys())
        for item in attachments:
            self.store.put_bytes(self.attachment_key(name, version, item.name), item.data, content_type=item.content_type)
        body = json.dumps({**body, "version": version}, sort_keys=True)
        self.store.put_bytes(self.manifest_key(name, version), body.encode(), content_type="application/json")
        self._point_latest(name, version)
        return manifest

    def _require_blobs(self, shas: Iterable[str]) -> None:
        def check(sha: str) -> None:
            if self.store.head(self.blob_key(sha)).get("Metadata", {}).get("sha256") != sha:
                raise CatalogError(f"object {self.store.uri(self.blob_key(sha))} does not carry its sha256")

        try:
            list(self._map(check, sorted(shas)))
        except ObjectNotFoundError as exc:
            raise CatalogError(f"cannot publish: {exc} (a version may only reference stored images)") from None

    def _put_blobs(self, blobs: dict[str, bytes], progress: CountProgress | None) -> None:
        """Upload blobs not already stored; an existing blob counts only if its recorded hash matches."""

        def put(item: tuple[str, bytes]) -> None:
            sha, data = item
            key = self.blob_key(sha)
            try:
                if self.store.head(key).get("Metadata", {}).get("sha256") == sha:
                    return
            except ObjectNotFoundError:
                pass
            self.store.put_bytes(key, data, content_type="image/png", metadata={"sha256": sha})

        step = max(1, len(blobs) // 20)
        for done, _ in enumerate(self._map(put, list(blobs.items())), 1):
            if progress and (done % step == 0 or done == len(blobs)):
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
                raise BadInput(f"bad version {version!r}")
        except ObjectNotFoundError:
            raise DatasetNotFound(f"dataset {ref.name!r} does not exist in the catalog") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise CatalogError(f"latest pointer {self.store.uri(key)} of {ref.name!r} is corrupt: {exc}") from None
        return DatasetRef(ref.name, version)

    def manifest(self, ref: DatasetRef | str) -> Manifest:
        ref = self.resolve(ref)
        key = self.manifest_key(ref.name, ref.version)
        try:
            raw = json.loads(self.store.get_bytes(key))
        except ObjectNotFoundError:
            raise DatasetNotFound(f"dataset version {ref} does not exist in the catalog") from None
        except ValueError as exc:  # not JSON / not UTF-8
            raise CatalogError(f"manifest {self.store.uri(key)} of {ref} is not valid JSON (tampered?): {exc}") from None
        try:
            manifest = Manifest(**{**raw, "records": [ImageRecord(**r) for r in raw["records"]]})
        except (TypeError, KeyError, AttributeError) as exc:
            raise CatalogError(f"manifest {self.store.uri(key)} of {ref} is malformed (tampered?): {exc!r}") from None
        # The hash covers everything but the version field; that field and the dataset the
        # manifest sits under are checked explicitly.
        if (manifest.name, manifest.version) != (ref.name, ref.version) or _version_of(raw) != ref.version:
            raise CatalogError(
                f"manifest {self.store.uri(key)} of {ref} does not match its version hash (tampered?)"
            )
        return manifest

    def versions(self, name: str) -> list[str]:
        DatasetRef.parse(name)
        prefix = f"{PREFIX}/datasets/{name}/versions/"
        return sorted(k[len(prefix) : -len(".json")] for k in self.store.list_keys(prefix) if k.endswith(".json"))

    def attachment(self, ref: DatasetRef | str, filename: str) -> bytes:
        ref = self.resolve(ref)
        return self.store.get_bytes(self.attachment_key(ref.name, ref.version, filename))

    def fetch(self, record: ImageRecord) -> bytes:
        """The PNG bytes of one record, verified against its hash."""
        return self._fetch_blob(record.sha256, record.source_path)

    def fetch_mask(self, record: ImageRecord) -> bytes:
        """The PNG bytes of one record's mask, verified against its hash (CatalogError without one)."""
        if record.mask_sha256 is None:
            raise CatalogError(f"{record.source_path} has no mask", field="mask")
        return self._fetch_blob(record.mask_sha256, f"mask of {record.source_path}")

    def _fetch_blob(self, sha: str, what: str) -> bytes:
        key = self.blob_key(sha)
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFoundError:
            raise CatalogError(
                f"object {self.store.uri(key)} of {what} is missing from the object store (deleted?)"
            ) from None
        if sha256_bytes(data) != sha:
            raise CatalogError(f"object {self.store.uri(key)} fails its sha256 check ({what})")
        return data

    def _map(self, fn: Callable, items: Sequence) -> Iterator:
        """``fn`` over items on a pool as wide as the S3 connection pool, results in input order.

        The first error cancels everything not yet started, so a dead object store fails an
        upload after the in-flight requests, not after every queued one has run its retries.
        """
        with ThreadPoolExecutor(self.store.settings.s3_max_concurrency) as pool:
            results = pool.map(fn, items)
            try:
                yield from results
            finally:
                pool.shutdown(cancel_futures=True)

    def read_pixels(self, records: Sequence[ImageRecord]) -> np.ndarray:
        """Fetch, verify and decode images into one (N, H, W[, C]) array.

        Concurrent GETs hide the round trips; fetching a chunk, then decoding it on the same
        pool (zlib and hashlib release the GIL), measured ~15 % faster on 2 cores than
        mixing both in one pass, and keeps at most one chunk of PNG bytes in memory.
        """
        out: list[np.ndarray] = []
        for start in range(0, len(records), _READ_CHUNK):
            blobs = list(self._map(self.fetch, records[start : start + _READ_CHUNK]))
            out.extend(self._map(decode_png, blobs))
        return np.stack(out) if out else np.empty((0,), np.uint8)

    def read_masks(self, records: Sequence[ImageRecord]) -> np.ndarray:
        """Fetch, verify and decode the records' masks into one uint8 (N, H, W) label array.

        Raises:
            CatalogError: a record has no mask, or its blob is missing or fails its hash.
        """
        out: list[np.ndarray] = []
        for start in range(0, len(records), _READ_CHUNK):
            blobs = list(self._map(self.fetch_mask, records[start : start + _READ_CHUNK]))
            out.extend(self._map(decode_png, blobs))
        return np.stack(out) if out else np.empty((0,), np.uint8)

    def verify(self, ref: DatasetRef | str, progress: CountProgress | None = None) -> VerifyReport:
        """Re-hash every object of a version and list every problem (not just the first)."""
        manifest = self.manifest(ref)
        records = list({r.sha256: r for r in manifest.records}.values())

        def check(record: ImageRecord) -> str | None:
            try:
                decode_png(self.fetch(record))
                if record.mask_sha256 is not None:
                    decode_png(self.fetch_mask(record))
            except CatalogError as exc:
                return str(exc)
            except (OSError, ValueError) as exc:  # hash matches but the PNG does not decode
                return f"object {self.store.uri(self.blob_key(record.sha256))} does not decode: {exc}"
            return None

        problems = []
        step = max(1, len(records) // 20)
        for done, problem in enumerate(self._map(check, records), 1):
            if problem:
                problems.append(problem)
            if progress and (done % step == 0 or done == len(records)):
                progress(done, len(records))
        return VerifyReport(manifest.ref, len(records), problems)

    def export(
        self, ref: DatasetRef | str, directory: Path, records: Sequence[ImageRecord] | None = None,
        progress: CountProgress | None = None,
    ) -> Path:
        """Write verified PNGs as ``DIR/{split}/{label_name}/{sha256}.png`` plus ``manifest.json``
        (and a record's mask as ``{sha256}.mask.png`` next to its image).

        Each file is written to a temporary name and renamed, so an interrupted export never
        leaves a truncated image; the manifest goes last.
        """
        manifest = self.manifest(ref)
        records = manifest.records if records is None else records
        directory = Path(directory)

        def write(record: ImageRecord) -> None:
            # split, class and hash come from a manifest: confined, whatever it holds
            path = confined(directory, record.split, record.label_name, f"{record.sha256}.png")
            if record.mask_sha256 is not None:  # the label map next to its image
                mask_path = path.with_name(f"{record.sha256}.mask.png")
                if not (mask_path.exists() and sha256_bytes(mask_path.read_bytes()) == record.mask_sha256):
                    _write_atomic(mask_path, self.fetch_mask(record))
            if path.exists() and sha256_bytes(path.read_bytes()) == record.sha256:
                return  # a retried export skips what it already wrote
            _write_atomic(path, self.fetch(record))

        step = max(1, len(records) // 20)
        for done, _ in enumerate(self._map(write, records), 1):
            if progress and (done % step == 0 or done == len(records)):
                progress(done, len(records))
        _write_atomic(directory / "manifest.json", json.dumps(_manifest_body(manifest), indent=1, sort_keys=True).encode())
        return directory

    def datasets(self) -> list[str]:
        names = {k.split("/")[2] for k in self.store.list_keys(f"{PREFIX}/datasets/")}
        return sorted(names)


def _check_names(classes: Sequence[str], records: Sequence[ImageRecord]) -> None:
    """Class, label and split names become folders on export: one path component each."""
    for what, names in (("class name", classes), ("label_name", {r.label_name for r in records}),
                        ("split", {r.split for r in records})):
        for value in names:
            if (problem := name_problem(value)) is not None:
                raise CatalogError(f"{what} {value!r} {problem}: a name is one path component", field=what)
    if bad := next((r.sha256 for r in records if not re.fullmatch(r"[0-9a-f]{64}", r.sha256)), None):
        raise CatalogError(f"image hash {bad!r} is not a sha256 hex digest", field="sha256")


def _check_findings(findings: Sequence[str] | None, records: Sequence[ImageRecord]) -> None:
    """Multi-label records and the findings list come together, and label sets index into it."""
    if findings is None:
        if any(r.label_set is not None or r.uncertain is not None for r in records):
            raise CatalogError("records carry label sets but the version names no findings", field="findings")
        return
    for value in findings:
        if (problem := name_problem(value)) is not None:
            raise CatalogError(f"finding {value!r} {problem}", field="findings")
    if len(set(findings)) != len(findings):
        raise CatalogError(f"findings repeat a name: {list(findings)}", field="findings")
    for r in records:
        for key in _MULTILABEL_RECORD_FIELDS:
            indices = getattr(r, key) or []
            if any(not isinstance(i, int) or not 0 <= i < len(findings) for i in indices):
                raise CatalogError(f"{key} {indices} of {r.source_path} is outside findings 0..{len(findings) - 1}",
                                   field=key)
        if r.label_set is None:
            raise CatalogError(f"record {r.source_path} of a multi-label version has no label_set", field="label_set")


def _check_masks(mask_classes: Sequence[str], records: Sequence[ImageRecord]) -> None:
    """Masks need the names of their values, and mask hashes must be sha256 digests."""
    masked = [r for r in records if r.mask_sha256 is not None]
    if masked and not mask_classes:
        raise CatalogError("records carry masks but the dataset declares no mask classes", field="mask_classes")
    if mask_classes and len(mask_classes) < 2:
        raise CatalogError("mask classes need the background (value 0) and at least one class", field="mask_classes")
    if len(set(mask_classes)) != len(mask_classes):
        raise CatalogError(f"mask classes {list(mask_classes)} repeat a name", field="mask_classes")
    for value in mask_classes:
        if (problem := name_problem(value)) is not None:
            raise CatalogError(f"mask class {value!r} {problem}", field="mask_classes")
    if bad := next((r.mask_sha256 for r in masked if not re.fullmatch(r"[0-9a-f]{64}", r.mask_sha256)), None):
        raise CatalogError(f"mask hash {bad!r} is not a sha256 hex digest", field="mask_sha256")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
