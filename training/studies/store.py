"""Where a study lives in the object store, and the objects' one-writer rules.

Layout under ``studies/`` (``{sid}`` = study id, ``{rid}`` = reader id, ``{iid}`` = opaque image id)::

    studies/{sid}/study.json              what readers' pages need: no truth, no tokens
    studies/{sid}/truth.json              image id → class and provenance (seed / catalog hash)
    studies/{sid}/readers.json            reader id → group and link token (owner only)
    studies/{sid}/images/{iid}.png        the frozen, re-encoded images
    studies/{sid}/views/{rid}/{iid}.json  when the reader first saw the image (the time limit's clock)
    studies/{sid}/answers/{rid}/{iid}.json  the reader's answer: one object per (reader, image)
    studies/{sid}/closed.json             present once the study is closed
    studies/{sid}/results.json            the analysis, written at close
    studies/_tokens/{sha256(token)}.json  token → (study, reader); the token itself is not the key

Answers and views are **written once** (:meth:`StudyStore.put_new`, an S3 conditional PUT with
``If-None-Match: *``): a double click, a retried POST or two racing replicas store one answer,
the first. Every answer is in S3 before the reader sees the next image, so a replica restart
loses nothing; nothing about a reader's progress lives in a process.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from infra.errors import NotFound
from infra.object_store import ObjectNotFoundError, ObjectStore

PREFIX = "studies"
FORMAT = "synthray-study/1"
STUDY_ID = re.compile(r"^s-[0-9a-f]{16}$")
IMAGE_ID = re.compile(r"^[0-9a-f]{16}$")
READER_ID = re.compile(r"^r[0-9]{2,3}$")


def check_study_id(study_id: str) -> str:
    if not isinstance(study_id, str) or not STUDY_ID.match(study_id):
        raise NotFound(f"no study {study_id!r} (study ids look like s-0123456789abcdef)")
    return study_id


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Reader:
    reader_id: str
    group: str


@dataclass(frozen=True)
class Study:
    """The public part of a study (``study.json``): safe to use on a reader's page."""

    study_id: str
    created_at: float
    model: dict[str, Any]  # name, version, run_id, spec (as given), uri
    reference: dict[str, Any]  # dataset (name@version), selector
    n_real: int
    n_fake: int
    size: int
    time_limit_s: float | None
    seed: int
    readers: list[Reader]
    images: list[str]  # opaque ids, sorted (order says nothing about class)
    groups: dict[str, int] = field(default_factory=dict)
    title: str = ""
    encoding: dict[str, Any] = field(default_factory=dict)
    disjoint: str = ""

    def reader(self, reader_id: str) -> Reader:
        for r in self.readers:
            if r.reader_id == reader_id:
                return r
        raise NotFound(f"study {self.study_id} has no reader {reader_id!r}")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "study_id": self.study_id, "created_at": self.created_at, "model": self.model,
                "reference": self.reference, "n_real": self.n_real, "n_fake": self.n_fake, "size": self.size,
                "time_limit_s": self.time_limit_s, "seed": self.seed, "title": self.title,
                "readers": [{"reader_id": r.reader_id, "group": r.group} for r in self.readers],
                "groups": self.groups, "images": self.images, "encoding": self.encoding, "disjoint": self.disjoint}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Study:
        return cls(study_id=body["study_id"], created_at=body["created_at"], model=body["model"],
                   reference=body["reference"], n_real=body["n_real"], n_fake=body["n_fake"], size=body["size"],
                   time_limit_s=body.get("time_limit_s"), seed=body["seed"], title=body.get("title", ""),
                   readers=[Reader(r["reader_id"], r["group"]) for r in body["readers"]],
                   groups=body.get("groups", {}), images=list(body["images"]), encoding=body.get("encoding", {}),
                   disjoint=body.get("disjoint", ""))


def _dumps(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, indent=1).encode()


class StudyStore:
    """Typed access to the layout above on one :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._conditional_put: bool | None = None  # does the server honour If-None-Match?

    # -- keys -------------------------------------------------------------------------------------
    @staticmethod
    def key(study_id: str, *parts: str) -> str:
        return "/".join((PREFIX, study_id, *parts))

    @staticmethod
    def token_key(token: str) -> str:
        return f"{PREFIX}/_tokens/{token_digest(token)}.json"

    # -- JSON objects -----------------------------------------------------------------------------
    def put_json(self, key: str, body: Any) -> None:
        self.store.put_bytes(key, _dumps(body), content_type="application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.store.get_bytes(key))

    def put_new(self, key: str, body: Any) -> bool:
        """Write ``key`` only if it does not exist; True when this call created it.

        An S3 conditional PUT (``If-None-Match: *``), so two concurrent writers cannot both win.
        On a server that does not support conditional writes, a HEAD-then-PUT (one writer per
        reader and image in practice: the reader's own browser).
        """
        data = _dumps(body)
        if self._conditional_put is not False:
            try:
                self.store._call("put", key, self.store.client.put_object, Bucket=self.store.bucket, Key=key,
                                 Body=data, ContentType="application/json", IfNoneMatch="*")
                self._conditional_put = True
                return True
            except Exception as exc:  # noqa: BLE001 - classified just below
                code = _error_code(exc)
                if code in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}:
                    return False
                if code not in {"NotImplemented", "501"}:
                    raise
                self._conditional_put = False
        if self.store.exists(key):
            return False
        self.store.put_bytes(key, data, content_type="application/json")
        return True

    # -- studies ----------------------------------------------------------------------------------
    def study(self, study_id: str) -> Study:
        check_study_id(study_id)
        try:
            return Study.from_json(self.get_json(self.key(study_id, "study.json")))
        except ObjectNotFoundError:
            raise NotFound(f"no study {study_id!r}") from None

    def truth(self, study_id: str) -> dict[str, dict[str, Any]]:
        return self.get_json(self.key(study_id, "truth.json"))["images"]

    def tokens(self, study_id: str) -> dict[str, str]:
        """reader id → link token (owner only)."""
        return {rid: r["token"] for rid, r in self.get_json(self.key(study_id, "readers.json"))["readers"].items()}

    def study_ids(self) -> list[str]:
        """Every study id: one LIST by common prefix (not a walk over every image and answer)."""
        client = self.store.client
        ids: set[str] = set()
        pages = self.store._call("list", f"{PREFIX}/", lambda: list(client.get_paginator("list_objects_v2").paginate(
            Bucket=self.store.bucket, Prefix=f"{PREFIX}/s-", Delimiter="/")))
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                sid = common["Prefix"].split("/")[1]
                if STUDY_ID.match(sid):
                    ids.add(sid)
        return sorted(ids)

    def reader_of(self, token: str) -> tuple[str, str]:
        """(study id, reader id) of a link token; NotFound for an unknown one."""
        if not isinstance(token, str) or not 16 <= len(token) <= 128:
            raise NotFound("unknown study link")
        try:
            body = self.get_json(self.token_key(token))
        except ObjectNotFoundError:
            raise NotFound("unknown study link") from None
        return body["study_id"], body["reader_id"]

    def image(self, study_id: str, image_id: str) -> bytes:
        if not IMAGE_ID.match(image_id or ""):
            raise NotFound("no such image")
        try:
            return self.store.get_bytes(self.key(study_id, "images", f"{image_id}.png"))
        except ObjectNotFoundError:
            raise NotFound("no such image") from None

    # -- close state --------------------------------------------------------------------------------
    def closed(self, study_id: str) -> dict[str, Any] | None:
        try:
            return self.get_json(self.key(study_id, "closed.json"))
        except ObjectNotFoundError:
            return None

    def close(self, study_id: str) -> tuple[dict[str, Any], bool]:
        """(the close record, whether this call closed it). Closing twice keeps the first time."""
        created = self.put_new(self.key(study_id, "closed.json"), {"closed_at": time.time()})
        return self.get_json(self.key(study_id, "closed.json")), created

    # -- views and answers ----------------------------------------------------------------------------
    def answered(self, study_id: str, reader_id: str) -> set[str]:
        prefix = self.key(study_id, "answers", reader_id) + "/"
        return {k[len(prefix) : -len(".json")] for k in self.store.list_keys(prefix) if k.endswith(".json")}

    def answers(self, study_id: str, reader_id: str) -> dict[str, dict[str, Any]]:
        prefix = self.key(study_id, "answers", reader_id) + "/"
        keys = [k for k in self.store.list_keys(prefix) if k.endswith(".json")]
        return {k[len(prefix) : -len(".json")]: json.loads(data) for k, data in self.store.get_many(keys)}

    def first_view(self, study_id: str, reader_id: str, image_id: str, now: float) -> float:
        """When the reader first saw the image (recorded now if never)."""
        key = self.key(study_id, "views", reader_id, f"{image_id}.json")
        if self.put_new(key, {"shown_at": now}):
            return now
        return float(self.get_json(key)["shown_at"])

    def put_answer(self, study_id: str, reader_id: str, image_id: str, body: dict[str, Any]) -> bool:
        """Store the reader's answer unless one exists; True when this call stored it."""
        return self.put_new(self.key(study_id, "answers", reader_id, f"{image_id}.json"), body)


def _error_code(exc: BaseException) -> str:
    while exc is not None:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return ""


def new_study_id() -> str:
    import secrets

    return f"s-{secrets.token_hex(8)}"


def new_image_id() -> str:
    import secrets

    return secrets.token_hex(8)

