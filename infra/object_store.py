"""S3 access for every dataset, cache and artifact synthray keeps.

A thin layer over boto3 that fixes the choices once: path-style addressing (SeaweedFS and
MinIO need it), botocore's own ``standard`` retry mode (no hand-written retry loops), a
connection pool sized for concurrent GETs, and errors that name the object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from infra.errors import NotFound, SynthrayError, Unavailable
from infra.settings import Settings, get_settings


class ObjectStoreError(SynthrayError):
    """The object store could not be reached or refused a request."""


class ObjectStoreUnavailable(ObjectStoreError, Unavailable):
    """The object store did not answer (down, restarting): transient, worth a retry."""


class ObjectNotFoundError(NotFound, KeyError):
    """A key that should exist does not. The message names the full s3:// URI.

    Also a ``KeyError`` (a mapping miss); :class:`SynthrayError` keeps ``str()`` unquoted.
    """


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore:
    """One bucket of an S3-compatible store.

    Args:
        settings: endpoint, credentials and bucket; defaults to the process settings.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.bucket = self.settings.bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=self.settings.s3_endpoint_url,
            aws_access_key_id=self.settings.s3_access_key.get_secret_value(),
            aws_secret_access_key=self.settings.s3_secret_key.get_secret_value(),
            region_name=self.settings.s3_region,
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=self.settings.s3_max_concurrency,
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    # -- addressing -------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _call(self, what: str, key: str, fn, **kwargs):
        """Run one boto3 call, turning its errors into ones that name the object."""
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectNotFoundError(f"object not found: {self.uri(key)}") from None
            raise ObjectStoreError(f"{what} {self.uri(key)} failed: {code or exc}") from exc
        except EndpointConnectionError as exc:
            raise self._unreachable() from exc

    def _unreachable(self) -> ObjectStoreUnavailable:
        return ObjectStoreUnavailable(
            f"cannot reach the object store at {self.settings.s3_endpoint_url} "
            f"(is the local stack up? run 'synthray stack up')"
        )

    # -- bucket -----------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Create the bucket if missing; a no-op when it exists."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call("create bucket", "", self.client.create_bucket, Bucket=self.bucket)
        except EndpointConnectionError as exc:
            raise self._unreachable() from exc

    # -- objects ----------------------------------------------------------------------
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Write one object. S3 PUTs are atomic: readers see the old or the new object."""
        self._call(
            "put",
            key,
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            Metadata=metadata or {},
        )

    def get_bytes(self, key: str) -> bytes:
        resp = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=key)
        return resp["Body"].read()

    def head(self, key: str) -> dict:
        return self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=key)

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    def upload_file(self, path: Path, key: str, *, metadata: dict[str, str] | None = None) -> None:
        """Multipart-aware upload of a local file (boto3's transfer manager)."""
        extra = {"Metadata": metadata} if metadata else None
        self._call(
            "upload", key, self.client.upload_file, Filename=str(path), Bucket=self.bucket,
            Key=key, ExtraArgs=extra,
        )

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(
            "download", key, self.client.download_file, Bucket=self.bucket, Key=key,
            Filename=str(path),
        )

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Fetch many objects concurrently, yielding (key, bytes) in input order.

        Bulk reads are bound by round trips, not bandwidth, so they run on a thread pool
        as wide as the connection pool.
        """
        keys = list(keys)
        with ThreadPoolExecutor(max_workers=self.settings.s3_max_concurrency) as pool:
            yield from zip(keys, pool.map(self.get_bytes, keys))

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except ClientError as exc:
            raise ObjectStoreError(f"list {self.uri(prefix)} failed: {exc}") from exc
        except EndpointConnectionError as exc:
            raise self._unreachable() from exc

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list_keys(prefix))
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            response = self._call(
                "delete", prefix, self.client.delete_objects, Bucket=self.bucket,
                Delete={"Objects": chunk, "Quiet": True},
            )
            # DeleteObjects answers 200 even when single keys fail; those come back here.
            if errors := response.get("Errors"):
                first = errors[0]
                raise ObjectStoreError(
                    f"could not delete {len(errors)} object(s) under {self.uri(prefix)}, e.g. "
                    f"{self.uri(first.get('Key', ''))}: {first.get('Code')} {first.get('Message')}"
                )
        return len(keys)

    def presign_get(self, key: str, expires_s: int = 3600) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
