"""Reader studies over HTTP: the owner's API (bearer key) and the readers' pages (link token).

Mounted on the Serve ingress by :mod:`services.serving.app` (``api.include_router(router)`` and
:func:`attach` with the ingress's deployment handles). Server-rendered with Jinja2; no
single-page app.

Owner (``Authorization: Bearer <key>``)::

    POST /v1/studies                    create: fakes rendered by the Synthesizer (the /v1/synthesize
                                        path, one recorded seed each), reals from the catalog; 201
    GET  /v1/studies                    every study with its state
    GET  /v1/studies/{id}               status and counts (answers per reader; never the answers)
    POST /v1/studies/{id}/close         close, analyse, log to MLflow (a Ray task: the ingress stays
                                        free of MLflow); closing twice returns the same results
    GET  /v1/studies/{id}/results       the analysis as JSON (409 while open)
    GET  /v1/studies/{id}/report        the owner's results page (HTML)

Reader (the token in the link is the credential; not in the OpenAPI schema)::

    GET  /study/{token}                 the next image, or "done" / "closed"
    GET  /study/{token}/image/{iid}     the image (PNG; identical headers for every image)
    POST /study/{token}/answer          form: image_id, answer real|synthetic|none, confidence, elapsed_ms
    GET  /study/{token}/progress        JSON: answered, total, next image id

Blinding: a reader's page, image response and JSON are built from ``study.json`` and the
reader's own answer keys only; the truth file is read by owner routes alone, and no reader
route returns any answer's content, their own included. Responses carry
``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store`` (the token is in the URL).
"""

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from services.serving.auth import require_key
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from infra.errors import RETRY_AFTER_S, BadInput, NotFound, SynthrayError, Unavailable, classify
from infra.settings import get_settings

log = logging.getLogger("ray.serve")

STUDIES_PATH = "/v1/studies"
READER_PATH = "/study"
SYNTH_CONCURRENCY = 8  # fakes rendered at once: below the Synthesizer's queue limit, batched by Serve
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates") / "studies"))
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex",
            "X-Content-Type-Options": "nosniff"}

router = APIRouter()
_handles: dict[str, Any] = {}
_store: Any = None


def attach(directory: Any, synthesizer: Any) -> None:
    """Give the routes the ingress's ModelDirectory and Synthesizer handles (``Api.__init__``)."""
    _handles["directory"], _handles["synthesizer"] = directory, synthesizer


def studies():
    """The process's :class:`~training.studies.store.StudyStore` (one boto3 client)."""
    global _store
    if _store is None:
        from infra.object_store import ObjectStore
        from training.studies.store import StudyStore

        _store = StudyStore(ObjectStore(get_settings()))
    return _store


# -- auth and errors ---------------------------------------------------------------------------------
OWNER = [Depends(require_key)]  # the same keys as every /v1 route
_ERRORS = {401: {"description": "Missing or invalid API key."}, 404: {"description": "No such study."},
           409: {"description": "The study is not in a state that allows this (open / closed)."},
           422: {"description": "Invalid body; the error names the field."},
           503: {"description": "Object store, registry or generator unavailable; retry (Retry-After)."}}


def http_error(exc: BaseException) -> Exception:
    """A SynthrayError (or a library error that classifies as one) → the HTTP error to raise."""
    err = classify(exc)
    if err is None:
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
    if isinstance(err, BadInput) and err.field:
        return RequestValidationError([{"type": "value_error", "loc": ("body", err.field), "msg": err.message,
                                        "input": None}])
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(err, Unavailable) else None
    return HTTPException(err.http_status, err.message, headers=headers)


async def _run(fn, *args, **kwargs):
    """``fn`` off the event loop; its SynthrayErrors as HTTP errors."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped by classify; the rest re-raised as is
        raise http_error(exc) from None


async def _remote(response) -> Any:
    """Await a deployment call: a returned or raised SynthrayError → its HTTP error."""
    try:
        value = await response
    except Exception as exc:  # noqa: BLE001
        name = type(exc).__name__
        if name in {"BackPressureError", "RayActorError", "ActorUnavailableError"}:
            raise HTTPException(503, f"serving is busy or restarting, retry: {name}",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        raise http_error(getattr(exc, "cause", None) or exc) from None
    if isinstance(value, SynthrayError):  # deployments return their client errors as values
        raise http_error(value)
    return value


# -- owner API ----------------------------------------------------------------------------------------
class StudyCreate(BaseModel):
    """Body of ``POST /v1/studies``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"examples": [
        {"model": "gan-phantom-knee-wgan-gp-knee-small@champion", "reference": "phantom-knee:split=test",
         "n_real": 30, "n_fake": 30, "size": 315, "readers": 15, "groups": {"radiologist": 8, "surgeon": 7},
         "time_limit_s": 30, "require_disjoint": True}]})

    model: str = Field(max_length=300, description="Generator: NAME@alias or NAME/VERSION (resolved and recorded).")
    reference: str = Field(max_length=300, description="Real images: NAME[@VERSION][:SELECTOR], e.g. "
                                                        "phantom-knee@1a2b:split=test,label=KL0.")
    n_real: int = Field(default=30, ge=1, le=500)
    n_fake: int = Field(default=30, ge=1, le=500)
    size: int = Field(default=315, ge=32, le=2048, description="Side of every served image, in pixels.")
    readers: int = Field(default=15, ge=1, le=200)
    groups: dict[str, int] | None = Field(default=None, description="Reader groups and sizes, adding up to readers.")
    time_limit_s: float | None = Field(default=None, ge=3, le=3600, description="Per-image limit; a timeout is 'no answer'.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seeds the choice of reals and fake seeds.")
    require_disjoint: bool = Field(default=False, description="Refuse a reference that shares patients or images "
                                                               "with the generator's training selection.")
    cls: int | str | None = Field(default=None, alias="class", description="Class of the fakes (conditional generators).")
    title: str = Field(default="", max_length=200)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post(STUDIES_PATH, status_code=201, responses=_ERRORS, dependencies=OWNER, tags=["studies"])
async def create_study(body: StudyCreate, request: Request) -> JSONResponse:
    """Freeze a blinded real-vs-synthetic image set and issue one link per reader."""
    from training.catalog.store import Catalog
    from training.studies.create import StudyRequest, freeze, plan

    try:
        req = StudyRequest(model=body.model, reference=body.reference, n_real=body.n_real, n_fake=body.n_fake,
                           size=body.size, readers=body.readers, groups=dict(body.groups or {}),
                           time_limit_s=body.time_limit_s, seed=body.seed, require_disjoint=body.require_disjoint,
                           cls=body.cls, title=body.title)
        from training.registry.refs import ModelReference

        ModelReference.parse(body.model)
    except SynthrayError as exc:
        raise http_error(exc) from None
    if "directory" not in _handles:
        raise HTTPException(503, "study creation is not wired to the Synthesizer on this replica",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    ref = await _remote(_handles["directory"].resolve.remote(body.model))
    from training.registry.tags import GENERATOR_KIND

    if ref.kind and ref.kind != GENERATOR_KIND:
        raise http_error(BadInput(f"{body.model!r} is a {ref.kind}, not a generator", field="model"))
    store = studies()
    catalog = Catalog(store.store)
    model = {"name": ref.name, "version": str(ref.version), "run_id": ref.run_id, "spec": body.model, "uri": ref.uri}
    the_plan = await _run(plan, req, model, dict(ref.tags or {}), catalog)
    synth = _handles["synthesizer"].options(multiplexed_model_id=ref.uri)
    gate = asyncio.Semaphore(SYNTH_CONCURRENCY)

    async def render(seed: int):
        async with gate:
            return await _remote(synth.images.remote(ref, 1, seed, body.cls))

    fakes = await asyncio.gather(*(render(s) for s in the_plan.fake_seeds))
    created = await _run(freeze, the_plan, list(fakes), catalog, store)
    study = created.study
    links = created.links(_base_url(request))
    return JSONResponse({
        "study_id": study.study_id, "state": "open", "model": study.model, "reference": study.reference,
        "n_real": study.n_real, "n_fake": study.n_fake, "size": study.size, "time_limit_s": study.time_limit_s,
        "seed": study.seed, "disjoint": study.disjoint,
        "readers": [{"reader_id": r.reader_id, "group": r.group, "url": links[r.reader_id]} for r in study.readers],
        "status_url": f"{STUDIES_PATH}/{study.study_id}", "report_url": f"{STUDIES_PATH}/{study.study_id}/report",
    }, status_code=201, headers={"Location": f"{STUDIES_PATH}/{study.study_id}"})


@router.get(STUDIES_PATH, responses=_ERRORS, dependencies=OWNER, tags=["studies"])
async def list_studies() -> dict[str, Any]:
    """Every study: id, model, state."""
    def go():
        store = studies()
        out = []
        for sid in store.study_ids():
            try:
                s = store.study(sid)
            except NotFound:
                continue  # being created
            out.append({"study_id": sid, "title": s.title, "model": f"{s.model['name']}/{s.model['version']}",
                        "state": "closed" if store.closed(sid) else "open", "created_at": s.created_at})
        return {"studies": out}

    return await _run(go)


@router.get(STUDIES_PATH + "/{study_id}", responses=_ERRORS, dependencies=OWNER, tags=["studies"])
async def study_status(study_id: str) -> dict[str, Any]:
    """State, the generator version, and answers per reader (counts only)."""
    from training.studies.results import status

    return await _run(status, studies(), study_id)


def _close(study_id: str) -> dict[str, Any]:
    """Runs as a Ray task: statistics, figures and MLflow stay out of the ingress process."""
    from infra.object_store import ObjectStore
    from training.studies.results import close_study
    from training.studies.store import StudyStore

    return close_study(StudyStore(ObjectStore(get_settings())), study_id)


@router.post(STUDIES_PATH + "/{study_id}/close", responses=_ERRORS, dependencies=OWNER, tags=["studies"])
async def close_study(study_id: str) -> dict[str, Any]:
    """Close the study (readers see "closed"), analyse it and log it to MLflow; idempotent."""
    import ray

    await _run(studies().study, study_id)  # 404 before starting anything
    task = ray.remote(num_cpus=0, max_retries=2)(_close)
    try:
        result = await task.remote(study_id)
    except Exception as exc:  # noqa: BLE001 - RayTaskError carries the cause
        raise http_error(getattr(exc, "cause", None) or exc) from None
    return _summary(result)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"study_id": result["study"]["study_id"], "state": "closed", "closed_at": result.get("closed_at"),
            "mlflow_run_id": result.get("mlflow_run_id"), "overall": result["overall"],
            "groups": result["groups"], "fleiss_kappa": result["fleiss_kappa"],
            "most_fooling_fake_rate": result["most_fooling_fake_rate"]}


@router.get(STUDIES_PATH + "/{study_id}/results", responses=_ERRORS, dependencies=OWNER, tags=["studies"])
async def study_results(study_id: str) -> dict[str, Any]:
    """Everything the analysis computed (per reader, group, pair, image); 409 while open."""
    from training.studies.results import stored_results

    return await _run(stored_results, studies(), study_id)


@router.get(STUDIES_PATH + "/{study_id}/report", response_class=HTMLResponse, responses=_ERRORS, dependencies=OWNER,
            tags=["studies"])
async def study_report(study_id: str, request: Request) -> HTMLResponse:
    """The owner's page: status while open; results, κ, fooling rates and the contact sheet once closed."""
    from training.studies.results import CONTACT_SHEET, status

    def gather():
        store = studies()
        state = status(store, study_id)
        result = sheet = None
        if state["state"] == "closed":
            key = store.key(study_id, "results.json")
            result = store.get_json(key) if store.store.exists(key) else None
            sheet_key = store.key(study_id, CONTACT_SHEET)
            if store.store.exists(sheet_key):
                sheet = base64.b64encode(store.store.get_bytes(sheet_key)).decode()
        return state, result, sheet

    state, result, sheet = await _run(gather)
    return TEMPLATES.TemplateResponse(request, "report.html", {"s": state, "r": result, "sheet": sheet,
                                                                "pct": _pct, "num": _num}, headers=NO_STORE)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f} %"


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}g}"


# -- reader pages -------------------------------------------------------------------------------------
def _session(token: str):
    from training.studies.reading import ReaderSession

    store = studies()
    study_id, reader_id = store.reader_of(token)
    return ReaderSession(store, store.study(study_id), reader_id)


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code, headers=NO_STORE)


async def _reader(request: Request, token: str):
    """The reader's session, or an HTML error page to return."""
    try:
        return await asyncio.to_thread(_session, token), None
    except Exception as exc:  # noqa: BLE001
        err = classify(exc)
        if err is None:
            raise
        return None, _page(request, "message.html", {"title": "Link not valid" if isinstance(err, NotFound)
                                                      else "Please try again", "message": err.message},
                           status_code=err.http_status)


@router.get(READER_PATH + "/{token}", response_class=HTMLResponse, include_in_schema=False)
async def reader_page(request: Request, token: str) -> HTMLResponse:
    session, error = await _reader(request, token)
    if error is not None:
        return error
    position = await _run(session.position)
    study = session.study
    context = {"token": token, "p": position, "size": study.size, "title": study.title or "Reader study",
               "time_limit_s": study.time_limit_s, "base": READER_PATH}
    if position.closed:
        return _page(request, "message.html", {"title": "This study is closed",
                                               "message": f"Thank you. {position.answered} of {position.total} "
                                                          "answers were recorded."})
    if position.done:
        return _page(request, "message.html", {"title": "All done — thank you",
                                               "message": f"All {position.total} answers are recorded. "
                                                          "You can close this window."})
    return _page(request, "reader.html", context)


@router.get(READER_PATH + "/{token}/image/{image_id}", include_in_schema=False)
async def reader_image(request: Request, token: str, image_id: str) -> Response:
    session, error = await _reader(request, token)
    if error is not None:
        return error
    if image_id not in session.order:
        return _page(request, "message.html", {"title": "Not found", "message": "No such image."}, 404)
    data = await _run(studies().image, session.study.study_id, image_id)
    return Response(data, media_type="image/png", headers=NO_STORE)


@router.post(READER_PATH + "/{token}/answer", include_in_schema=False)
async def reader_answer(request: Request, token: str, image_id: str = Form(max_length=64),
                        answer: str = Form(max_length=16), confidence: str = Form(default="", max_length=4),
                        elapsed_ms: str = Form(default="", max_length=16)) -> Response:
    session, error = await _reader(request, token)
    if error is not None:
        return error
    try:
        conf = int(confidence) if confidence.strip() else None
        client_s = round(float(elapsed_ms) / 1000, 3) if elapsed_ms.strip() else None
    except ValueError:
        return _page(request, "message.html", {"title": "Invalid answer", "message": "confidence must be 1–5"}, 422)
    verdict = None if answer == "none" else answer
    started = time.perf_counter()
    try:
        await asyncio.to_thread(session.answer, image_id, verdict, conf, client_s)
    except Exception as exc:  # noqa: BLE001
        err = classify(exc)
        if err is None:
            raise
        if err.http_status == 409:  # closed meanwhile: the page says so
            return RedirectResponse(f"{READER_PATH}/{token}", status_code=303, headers=NO_STORE)
        return _page(request, "message.html", {"title": "Answer not recorded", "message": err.message},
                     err.http_status)
    log.debug("study answer stored in %.3f s", time.perf_counter() - started)
    return RedirectResponse(f"{READER_PATH}/{token}", status_code=303, headers=NO_STORE)


@router.get(READER_PATH + "/{token}/progress", include_in_schema=False)
async def reader_progress(request: Request, token: str) -> JSONResponse:
    session, error = await _reader(request, token)
    if error is not None:
        return JSONResponse({"detail": "unknown study link"}, status_code=error.status_code, headers=NO_STORE)
    position = await _run(session.position, False)
    return JSONResponse(position.public(), headers=NO_STORE)


__all__ = ["STUDIES_PATH", "attach", "router", "studies"]
