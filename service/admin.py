"""Admin routes (model listing, hot swap, rollback, .nemo import) behind a bearer token separate from inference.

With ``ASR_ADMIN_TOKEN`` unset every admin route answers 403 "admin API disabled"; a missing
or wrong token gets 401. Tokens are compared with ``hmac.compare_digest``.

    curl -H "Authorization: Bearer $ASR_ADMIN_TOKEN" -d '{"name": "an4-quartznet", "version": 3}' \\
         -H 'Content-Type: application/json' localhost:8000/admin/models/activate
    curl -H "Authorization: Bearer $ASR_ADMIN_TOKEN" -F file=@model.nemo -F name=english \\
         localhost:8000/admin/models/import          # publishes english@N; activate it to serve it
    curl -H "Authorization: Bearer $ASR_ADMIN_TOKEN" -d '{"source": "hf:nvidia/stt_en_citrinet_256_ls"}' \\
         -H 'Content-Type: application/json' localhost:8000/admin/models/pull   # 202 + a job to poll
"""

from __future__ import annotations

import asyncio
import hmac
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.domain import RequestError
from service.errors import public_message, without_paths
from service.http_api import engine_of
from service.upload import read_upload
from service.http_errors import error_body, error_response
from service.model_slot import ModelLoadError


class _AdminDenied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def require_admin(request: Request) -> None:
    token = engine_of(request).config.admin_token
    if token is None or not token.get_secret_value():
        raise _AdminDenied(403, "admin API disabled (set ASR_ADMIN_TOKEN)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise _AdminDenied(401, "missing or invalid admin token (send 'Authorization: Bearer <ASR_ADMIN_TOKEN>')")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class ActivateRequest(BaseModel):
    """Body of POST /admin/models/activate; version None means the registry's newest."""

    name: str
    version: int | None = Field(None, ge=1)


def _caller(request: Request) -> str:
    """Who asked, for the registry's history of the active version."""
    return f"admin API from {request.client.host if request.client else 'unknown'}"


def _describe(model) -> dict:
    return {"name": model.name, "version": model.version}


@router.get("/models", summary="Registry versions with their state (active, loaded, available)")
async def list_models(request: Request) -> dict:
    engine = engine_of(request)
    active = engine.slot.active
    return {"active": _describe(active) if active else None, "models": engine.registry_models()}


@router.get("/fleet", summary="Every server reporting into this registry: versions served, refusals, load")
async def fleet(request: Request) -> dict:
    engine = engine_of(request)
    return {"replica": engine.replica.replica_id, "replicas": await asyncio.to_thread(engine.replica.fleet)}


@router.post("/models/activate", summary="Load + warm a version beside the current one, then switch to it")
async def activate(request: Request, body: ActivateRequest) -> JSONResponse:
    engine = engine_of(request)
    previous = engine.slot.active
    try:
        model = await engine.activate(body.name, body.version, by=_caller(request))
    except ModelLoadError as e:
        serving = f"; still serving {previous}" if previous else ""
        return JSONResponse(error_body(f"{public_message(e)}{serving}", "model_load_failed", "activation_failed"), 409)
    except RequestError as e:
        return error_response(e)
    return JSONResponse({"active": _describe(model), "previous": _describe(previous) if previous else None})


@router.post("/models/rollback", summary="Re-activate the version that was active before the last swap")
async def rollback(request: Request) -> JSONResponse:
    engine = engine_of(request)
    previous = engine.slot.active
    try:
        model = await engine.rollback(by=_caller(request))
    except ModelLoadError as e:
        return JSONResponse(error_body(public_message(e), "model_load_failed", "rollback_failed"), 409)
    except RequestError as e:
        return JSONResponse(error_body(public_message(e), "invalid_request_error", "nothing_to_roll_back"), 409)
    return JSONResponse({"active": _describe(model), "previous": _describe(previous) if previous else None})


@router.post("/models/import", summary="Import a NeMo .nemo checkpoint (multipart 'file' and 'name') and publish it")
async def import_model(request: Request) -> JSONResponse:
    """The same import as ``asr models import-nemo``; nothing is published unless it succeeds."""
    engine = engine_of(request)
    try:
        with await read_upload(request, max_bytes=engine.config.max_import_bytes) as upload:
            name = (upload.field("name") or "").strip()
            if not name:
                raise RequestError("missing form field 'name': the registry name to publish the model as")
            frontend = upload.field("frontend") or None
            ref = await asyncio.to_thread(_import_and_publish, engine.registry, upload.file, name, frontend)
    except Exception as exc:  # noqa: BLE001 - one JSON error shape for every failure
        return error_response(_as_request_error(exc))
    return JSONResponse({"published": str(ref), "name": ref.name, "version": ref.version}, 201)


class PullRequest(BaseModel):
    """Body of POST /admin/models/pull (see `asr models pull`)."""

    source: str = Field(..., description="hf:ORG/REPO[@REV][:FILE.nemo], ngc:ORG/[TEAM/]MODEL:VERSION[:FILE.nemo] "
                                         "or an https:// URL of a .nemo")
    name: str | None = Field(None, description="registry name (default: the model's own)")
    activate: bool = Field(False, description="record it as the version every server on this registry serves")


@router.post("/models/pull", status_code=202,
             summary="Pull a .nemo from the Hugging Face Hub, NGC or a URL and publish it (a job; see its progress)")
async def pull_model(body: PullRequest, request: Request) -> JSONResponse:
    """Starts the pull as a job (or joins the one already pulling this source) and answers 202 with it."""
    from interop.hubs import PullError, parse_source

    try:
        parse_source(body.source)  # a malformed source is the request's fault: say so now, not in the job
    except PullError as exc:
        return error_response(exc)
    job, started = _pull_jobs(request).start(body.source, body.name, body.activate)
    return JSONResponse({**job.describe(), "joined": not started}, 202,
                        headers={"Location": f"/admin/models/pull/{job.id}"})


@router.get("/models/pull/{job_id}", summary="A pull job: state, bytes so far, what it published or why it failed")
async def pull_status(job_id: str, request: Request) -> JSONResponse:
    job = _pull_jobs(request).get(job_id)
    if job is None:
        return JSONResponse(error_body(f"no pull job {job_id!r}", "invalid_request_error", "unknown_job"), 404)
    return JSONResponse(job.describe())


def _pull_jobs(request: Request):
    from service.pull_jobs import PullJobs

    state = request.app.state
    if getattr(state, "pull_jobs", None) is None:
        from interop.pull import pull_model as pull

        registry = engine_of(request).registry
        state.pull_jobs = PullJobs(lambda source, **kw: pull(registry, source, by="admin API", **kw))
    return state.pull_jobs


def _import_and_publish(registry, source, name: str, frontend: str | None):
    from interop.nemo import import_nemo
    from model.checkpoint import publish_model
    from model.registry import validate_name

    validate_name(name)  # before the (slow) import
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "upload.nemo"
        with open(archive, "wb") as out:
            shutil.copyfileobj(source, out)
        model, info = import_nemo(archive, frontend=frontend)
    return publish_model(registry, name, model, source="imported", extra={"nemo": info})


def _as_request_error(exc: Exception) -> Exception:
    """Import failures the uploader caused (bad archive, name or front end) as 400s, without server paths."""
    from interop.nemo import NemoImportError
    from model.registry import RegistryError

    if isinstance(exc, (NemoImportError, RegistryError, ValueError)) and not isinstance(exc, RequestError):
        return RequestError(without_paths(str(exc)).replace("<path>: ", "") or type(exc).__name__)
    return exc


def install_admin(app) -> None:
    """Adds the admin router and its 401/403 handler to ``app``."""

    @app.exception_handler(_AdminDenied)
    async def _denied(request: Request, exc: _AdminDenied) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        code = "unauthorized" if exc.status == 401 else "admin_disabled"
        return JSONResponse(error_body(str(exc), "authentication_error", code), exc.status, headers=headers)

    app.include_router(router)
