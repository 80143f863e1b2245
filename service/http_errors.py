"""The one place REST maps exceptions to HTTP statuses and OpenAI-shaped JSON error bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.audio import AudioError
from service.domain import (DeadlineExceededError, IdleTimeoutError, PayloadTooLargeError, QueueFullError, RequestError,
                            ServiceUnavailableError, UnauthenticatedError, UnknownModelError, WrongModelKindError,
                            error_reason)
from service.errors import ClientGoneError, public_message
from service.model_slot import ModelLoadError
from service.upload import UnsupportedMediaTypeError

log = logging.getLogger(__name__)

# Most specific first: (class, HTTP status, OpenAI error type, OpenAI error code). The realtime
# WebSocket reports the same type and code, and derives its close code from the status.
_STATUS = (
    (UnauthenticatedError, 401, "invalid_request_error", "invalid_api_key"),
    (UnsupportedMediaTypeError, 415, "invalid_request_error", "unsupported_media_type"),
    (UnknownModelError, 404, "invalid_request_error", "model_not_found"),
    (WrongModelKindError, 400, "invalid_request_error", "wrong_model_kind"),
    (QueueFullError, 429, "server_busy", "queue_full"),
    (DeadlineExceededError, 504, "timeout", "deadline_exceeded"),
    (IdleTimeoutError, 408, "timeout", "idle_timeout"),
    (ClientGoneError, 499, "invalid_request_error", "client_closed_request"),
    (PayloadTooLargeError, 413, "invalid_request_error", "too_large"),
    (ServiceUnavailableError, 503, "unavailable", "unavailable"),
    (ModelLoadError, 503, "unavailable", "model_load_failed"),
    (AudioError, 400, "invalid_request_error", "bad_audio"),
    (RequestError, 400, "invalid_request_error", "bad_request"),
)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    """OpenAI's error shape, used by every route: {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def known_error(exc: BaseException) -> tuple[int, str, str] | None:
    """The HTTP status, OpenAI error type and code of a failure the client caused or can retry; None if internal."""
    for cls, status, type_, code in _STATUS:
        if isinstance(exc, cls):
            return status, type_, code
    return None


def status_for(exc: BaseException) -> int:
    known = known_error(exc)
    return 500 if known is None else known[0]


def error_response(exc: BaseException, param: str | None = None) -> JSONResponse:
    """Converts any exception into a JSON error response; internals are logged, never echoed."""
    known = known_error(exc)
    if known is None:
        log.exception("internal error while serving a request", exc_info=exc)
        return JSONResponse(error_body("internal server error", "server_error", "internal"), 500)
    status, type_, code = known
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(public_message(exc), type_, code, getattr(exc, "param", param)), status,
                        headers=headers)


def count_failure(metrics, exc: BaseException) -> None:
    """Counts ``asr_errors_total{reason}`` for a failed request."""
    metrics.count_error("internal" if isinstance(exc, ModelLoadError) else error_reason(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Makes framework-level errors (404 route, 405, validation) use the same JSON shape."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", str(exc.status_code)),
                            exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(error_body(f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error",
                                       "bad_request", where or None), 422)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)
