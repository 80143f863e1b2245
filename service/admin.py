"""Admin routes (model listing, hot swap, rollback) behind a bearer token separate from inference.

With ``ASR_ADMIN_TOKEN`` unset every admin route answers 403 "admin API disabled"; a missing
or wrong token gets 401. Tokens are compared with ``hmac.compare_digest``.

    curl -H "Authorization: Bearer $ASR_ADMIN_TOKEN" -d '{"name": "an4-quartznet", "version": 3}' \\
         -H 'Content-Type: application/json' localhost:8000/admin/models/activate
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.domain import RequestError
from service.http_api import engine_of
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


def _describe(model) -> dict:
    return {"name": model.name, "version": model.version}


@router.get("/models", summary="Registry versions with their state (active, loaded, available)")
async def list_models(request: Request) -> dict:
    engine = engine_of(request)
    active = engine.slot.active
    return {"active": _describe(active) if active else None, "models": engine.registry_models()}


@router.post("/models/activate", summary="Load + warm a version beside the current one, then switch to it")
async def activate(request: Request, body: ActivateRequest) -> JSONResponse:
    engine = engine_of(request)
    previous = engine.slot.active
    try:
        model = await engine.activate(body.name, body.version)
    except ModelLoadError as e:
        serving = f"; still serving {previous}" if previous else ""
        return JSONResponse(error_body(f"{e}{serving}", "model_load_failed", "activation_failed"), 409)
    except RequestError as e:
        return error_response(e)
    return JSONResponse({"active": _describe(model), "previous": _describe(previous) if previous else None})


@router.post("/models/rollback", summary="Re-activate the version that was active before the last swap")
async def rollback(request: Request) -> JSONResponse:
    engine = engine_of(request)
    previous = engine.slot.active
    try:
        model = await engine.rollback()
    except ModelLoadError as e:
        return JSONResponse(error_body(str(e), "model_load_failed", "rollback_failed"), 409)
    except RequestError as e:
        return JSONResponse(error_body(str(e), "invalid_request_error", "nothing_to_roll_back"), 409)
    return JSONResponse({"active": _describe(model), "previous": _describe(previous) if previous else None})


def install_admin(app) -> None:
    """Adds the admin router and its 401/403 handler to ``app``."""

    @app.exception_handler(_AdminDenied)
    async def _denied(request: Request, exc: _AdminDenied) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        code = "unauthorized" if exc.status == 401 else "admin_disabled"
        return JSONResponse(error_body(str(exc), "authentication_error", code), exc.status, headers=headers)

    app.include_router(router)
