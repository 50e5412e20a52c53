"""The Api's one exception handler: every SynthrayError answers by its class's ``http_status``.

A tiny FastAPI app that registers the same handler function (:func:`services.serving.app.error_response`)
makes every class answer, including the 503s that are impractical to force on the real stack
(a registry outage, an overloaded or restarted replica). The real-stack paths (422/404/409
through the deployments) are in ``test_serve.py``, on its running Serve app.
"""

from __future__ import annotations

import asyncio
import copy

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from infra.errors import RETRY_AFTER_S, BadInput, Conflict, NotFound, SynthrayError, Unavailable
from infra.object_store import ObjectNotFoundError, ObjectStoreUnavailable
from services.batches.api import BatchBusyError, BatchCorrupt, BatchNotFound, BatchNotReady
from services.serving.app import _call, error_response
from services.serving.fid_scorer import CorruptContent
from training.catalog.store import DatasetNotFound

# (error raised in a route, its class's status, Retry-After or None, body detail or None for FastAPI's 422 shape)
CASES = [
    (BadInput("n: must be positive", field="n"), 422, None, None),
    (BadInput("no field to name"), 422, None, "no field to name"),
    (NotFound("model 'x@champion' not found", field="model"), 404, None, "model 'x@champion' not found"),
    (BatchNotFound("unknown batch 'b-1'", field="batch_id"), 404, None, "unknown batch 'b-1'"),
    (DatasetNotFound("dataset 'x' does not exist in the catalog"), 404, None, None),
    (ObjectNotFoundError("object not found: s3://b/k"), 404, None, "object not found: s3://b/k"),
    (Conflict("batch b-1 is running, not succeeded"), 409, None, "batch b-1 is running, not succeeded"),
    (BatchNotReady("batch b-1 is cancelled, not succeeded", field="batch_id"), 409, None, None),
    (Unavailable("model registry at http://x unreachable"), 503, str(RETRY_AFTER_S), None),
    (Unavailable("overloaded, retry later", retry_after_s=4.6), 503, "5", "overloaded, retry later"),
    (Unavailable("lost", retry_after_s=0.1), 503, "1", "lost"),  # never "Retry-After: 0"
    (BatchBusyError("batch b-1 is shutting down"), 503, str(RETRY_AFTER_S), "batch b-1 is shutting down"),
    (ObjectStoreUnavailable("cannot reach the object store"), 503, str(RETRY_AFTER_S),
     "object store unavailable, retry later: cannot reach the object store"),  # its HTTP wording
    (BatchCorrupt("s3://b/k does not match the sha256"), 500, None, "s3://b/k does not match the sha256"),
    (CorruptContent("reference: catalog content failed its checks"), 500, None, None),
    (SynthrayError("fits no narrower class"), 400, None, "fits no narrower class"),
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.add_exception_handler(SynthrayError, error_response)

    @app.get("/raise/{index}")
    async def raise_case(index: int) -> None:
        raise CASES[index][0]

    @app.get("/returned/{index}")
    async def returned_case(index: int) -> None:  # as a deployment's returned value, through _call
        async def deployment_call():  # a copy, as Ray hands the Api (which may re-field it)
            return copy.copy(CASES[index][0])

        await _call(deployment_call())

    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{type(c[0]).__name__}-{c[1]}" for c in CASES])
@pytest.mark.parametrize("how", ["raise", "returned"])
def test_every_class_answers_with_its_http_status(client: TestClient, how: str, index: int) -> None:
    error, status, retry_after, detail = CASES[index]
    response = client.get(f"/{how}/{index}")
    assert response.status_code == status == type(error).http_status, response.text
    assert response.headers.get("Retry-After") == retry_after
    body = response.json()
    if status == 422 and error.field:  # FastAPI's own validation shape, naming the field
        ((item,),) = [body["detail"]]
        assert item["loc"] == ["body", error.field] and item["msg"] == error.message and item["type"] == "value_error"
    else:
        assert body == {"detail": detail or error.message}


def test_returned_errors_name_the_field_the_client_sent() -> None:
    """Deployment argument names → request fields (FID candidates, uploads)."""

    async def returned(error: SynthrayError, uploads: bool = False) -> SynthrayError:
        async def deployment_call():
            return error

        with pytest.raises(SynthrayError) as raised:
            await _call(deployment_call(), uploads=uploads)
        return raised.value

    assert asyncio.run(returned(BadInput("images: bad", field="images"))).field == "candidate"
    assert asyncio.run(returned(BadInput("limit: bad", field="limit"))).field == "candidate"
    assert asyncio.run(returned(BadInput("images[3]: bad", field="images[3]"), uploads=True)).field == "files"
    assert asyncio.run(returned(BadInput("reference: bad", field="reference"))).field == "reference"
    assert asyncio.run(returned(NotFound("batch_id: x", field="batch_id"))).field == "candidate"


def test_overload_and_a_lost_replica_are_unavailable() -> None:
    from ray.exceptions import ActorUnavailableError
    from ray.serve.exceptions import BackPressureError

    async def overloaded():
        raise BackPressureError(num_queued_requests=9, max_queued_requests=8, retry_after_s=None)

    async def lost():
        raise ActorUnavailableError("replica gone", b"\0" * 16)

    for call in (overloaded, lost):
        with pytest.raises(Unavailable) as raised:
            asyncio.run(_call(call()))
        assert raised.value.http_status == 503 and raised.value.retry_after_s == RETRY_AFTER_S


def test_errors_returned_by_deployments_survive_pickling() -> None:
    """Deployments return these across Ray: class, message, field and retry hint all arrive."""
    import pickle

    for error, *_ in CASES:
        arrived = pickle.loads(pickle.dumps(error))
        assert type(arrived) is type(error) and arrived.message == error.message and arrived.field == error.field
        assert getattr(arrived, "retry_after_s", None) == getattr(error, "retry_after_s", None)
