"""The one place REST maps exceptions to HTTP statuses and OpenAI-shaped JSON error bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.errors import ASRError, Kind
from service.domain import error_reason
from service.errors import public_message

log = logging.getLogger(__name__)

# The one table from an error's kind (model.errors) to its HTTP status and OpenAI error type; the error's own
# ``code`` goes into the body. The realtime WebSocket reports the same type and code, and derives its close
# code from the status.
HTTP_BY_KIND: dict[Kind, tuple[int, str]] = {
    Kind.BAD_REQUEST: (400, "invalid_request_error"),
    Kind.UNSUPPORTED_MEDIA: (415, "invalid_request_error"),
    Kind.TOO_LARGE: (413, "invalid_request_error"),
    Kind.NOT_FOUND: (404, "invalid_request_error"),
    Kind.WRONG_KIND: (400, "invalid_request_error"),
    Kind.UNAUTHENTICATED: (401, "invalid_request_error"),
    Kind.BUSY: (429, "server_busy"),
    Kind.DEADLINE: (504, "timeout"),
    Kind.IDLE: (408, "timeout"),
    Kind.CANCELLED: (499, "invalid_request_error"),
    Kind.UNAVAILABLE: (503, "unavailable"),
    Kind.UPSTREAM: (502, "upstream_error"),
    Kind.STORAGE: (507, "server_error"),
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    """OpenAI's error shape, used by every route: {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def known_error(exc: BaseException) -> tuple[int, str, str] | None:
    """The HTTP status, OpenAI error type and code of a failure the client caused or can retry; None if internal."""
    if not isinstance(exc, ASRError):
        return None
    status, type_ = HTTP_BY_KIND[exc.kind]
    return status, type_, exc.code


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
    metrics.count_error(error_reason(exc))


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
