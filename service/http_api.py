"""REST routes: POST /transcribe, GET /v1/models, health probes and /metrics (thin over the Engine).

``/transcribe`` takes multipart (``file`` + fields) or a raw audio body; decoder knobs come
as query parameters or form fields:

    curl -F file=@clip.flac 'localhost:8000/transcribe?decoder=beam&hotwords=yes:8,two&alternatives=3'
    curl --data-binary @clip.wav -H 'Content-Type: audio/wav' localhost:8000/transcribe
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from model.audio_stream import AudioStream
from service.auth import check_api_key
from service.domain import RequestError, TranscriptionRequest, TranscriptionResult, UnauthenticatedError
from service.errors import ClientGoneError
from service.engine import Engine
from service.http_errors import count_failure, error_response, status_for
from service.metrics import CONTENT_TYPE_LATEST
from service.upload import Upload, read_upload

router = APIRouter()
T = TypeVar("T")

_TRANSCRIBE_PARAMS = ("model", "decoder", "word_timestamps", "hotwords", "beam_width", "lm_alpha", "lm_beta", "lm",
                      "alternatives")
_UPLOAD_DOC = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, **{p: {"type": "string"} for p in _TRANSCRIBE_PARAMS}}}},
    "audio/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


async def serve(request: Request, api: str, handler: Callable[[], Awaitable[Response]]) -> Response:
    """Runs a route body, converting errors to JSON and counting the request once, when it ends.

    The request is in flight (``Engine.admit``) from here, before its body is read: a drain
    waits for uploads still arriving, and a draining server refuses new requests with 503.
    """
    engine = engine_of(request)
    metrics = engine.metrics
    started = time.monotonic()
    try:
        check_api_key(engine.config.api_keys, request.headers.get("authorization"))
        async with engine.admit():
            response = await handler()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, never a traceback
        count_failure(metrics, exc)
        response = error_response(exc)
    metrics.observe_request(api, response.status_code, time.monotonic() - started)
    return response


# --- parameter parsing (form fields override query parameters) ---------------------------

def param(request: Request, upload: Upload, name: str) -> str | None:
    value = upload.field(name)
    return value if value is not None else request.query_params.get(name)


def parse_bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise RequestError(f"{name} must be true or false, got {value!r}")


def parse_number(name: str, value: str | None, kind: type = float) -> float | int | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = kind(value)
    except ValueError:
        raise RequestError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"{name} must be finite, got {value!r}")
    return number


def parse_hotwords(value: str | None, default_boost: float) -> tuple[tuple[str, float], ...]:
    """"yes:8, two cats" -> (("yes", 8.0), ("two cats", default_boost))."""
    if not value:
        return ()
    hotwords = []
    for item in value.split(","):
        phrase, sep, boost = item.strip().rpartition(":")
        if not sep:
            phrase, boost = boost, ""
        if not phrase.strip():
            continue
        hotwords.append((phrase.strip(), parse_number(f"hotword boost of {phrase!r}", boost) if boost else default_boost))
    return tuple(hotwords)


async def open_audio(engine: Engine, upload: Upload, sample_rate: int) -> AudioStream:
    """The uploaded file, opened for reading a window at a time at the model's rate (model.audio_stream).

    Only the header is read here, so audio over the duration limit is refused before any of it
    is decoded; a container libsndfile cannot read (WebM, MP4/M4A, AAC, MP3) is decoded to a temporary
    file first, and no further than the limit.

    Raises:
        AudioError (400), PayloadTooLargeError (413, too long).
    """
    audio = await asyncio.to_thread(AudioStream, upload.file, sample_rate, upload.filename,
                                    max_duration_s=engine.config.max_audio_duration_s)
    try:
        engine.check_duration(audio.duration_s)
    except BaseException:
        audio.close()
        raise
    return audio


async def transcribe_upload(engine: Engine, upload: Upload, request: TranscriptionRequest,
                            http_request: Request) -> TranscriptionResult:
    """Transcribes an upload with the model version pinned when it is resolved, for the whole request.

    A client that disconnects meanwhile stops the work at its next window (``while_connected``).
    """
    name, version, sample_rate = engine.resolve_model(request.model, http_request.headers.get("x-request-id"))
    with await open_audio(engine, upload, sample_rate) as audio:
        return await while_connected(http_request,
                                     engine.transcribe(replace(request, audio=audio, model=f"{name}@{version}")))


async def while_connected(request: Request, work: Awaitable[T]) -> T:
    """Awaits ``work`` unless the client disconnects first; then cancels it and raises ClientGoneError.

    Call it once the request body has been read: the disconnect is the next ASGI message.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGoneError("the client closed the connection before the transcript was ready")
        return task.result()
    finally:
        gone.cancel()
        task.cancel()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def words_json(words) -> list[dict]:
    return [{"word": w.word, "start": w.start_s, "end": w.end_s, "confidence": w.confidence} for w in words]


def model_header(result: TranscriptionResult) -> dict[str, str]:
    """Every transcription response names the version that produced it (hot-swap audits)."""
    return {"X-ASR-Model": f"{result.model_name}@{result.model_version}"}


def result_json(result: TranscriptionResult) -> dict:
    return {
        "text": result.text,
        "words": words_json(result.words),
        "alternatives": [{"text": a.text, "confidence": a.confidence, "words": words_json(a.words)}
                         for a in result.alternatives],
        "duration": result.duration_s,
        "model": {"name": result.model_name, "version": result.model_version},
        "decoder": result.decoder,
        "timings": result.timings,
    }


# --- routes ----------------------------------------------------------------------------------

@router.post("/transcribe", tags=["transcription"], openapi_extra=_UPLOAD_DOC,
             summary="Transcribe an audio file (multipart 'file' or raw audio body)")
async def transcribe(request: Request) -> Response:
    """Query/form parameters: model (NAME[@VERSION]), decoder (greedy|beam), word_timestamps (bool),
    hotwords (comma-separated, optional ``phrase:boost``), beam_width, lm_alpha, lm_beta, lm,
    alternatives (N-best, beam only)."""
    engine = engine_of(request)

    async def handle() -> Response:
        with await read_upload(request, max_bytes=engine.config.max_audio_bytes) as upload:
            return await _transcribe(request, engine, upload)

    return await serve(request, "rest", handle)


async def _transcribe(request: Request, engine: Engine, upload: Upload) -> Response:
    get = lambda name: param(request, upload, name)  # noqa: E731
    alternatives = parse_number("alternatives", get("alternatives"), int)
    req = TranscriptionRequest(
        audio=None, model=get("model") or None, decoder=(get("decoder") or "greedy").lower(),
        word_timestamps=parse_bool("word_timestamps", get("word_timestamps"), True),
        hotwords=parse_hotwords(get("hotwords"), engine.config.beam.hotword_boost),
        beam_width=parse_number("beam_width", get("beam_width"), int),
        lm_alpha=parse_number("lm_alpha", get("lm_alpha")), lm_beta=parse_number("lm_beta", get("lm_beta")),
        lm=get("lm") or None, num_alternatives=1 if alternatives is None else alternatives, api="rest")
    result = await transcribe_upload(engine, upload, req, request)
    return JSONResponse(result_json(result), headers=model_header(result))


@router.get("/v1/models", tags=["models"], summary="Loaded models (OpenAI list shape)")
async def list_models(request: Request) -> Response:
    engine = engine_of(request)
    try:
        check_api_key(engine.config.api_keys, request.headers.get("authorization"))
    except UnauthenticatedError as exc:
        return error_response(exc)
    data = []
    for m in engine.list_models():
        entry = {"id": f"{m['name']}@{m['version']}", "object": "model", "created": 0, "owned_by": "quartznet-asr",
                 "name": m["name"], "version": m["version"], "state": m["state"], "sample_rate": m["sample_rate"],
                 "language": "en", "card": m["card"]}
        data.append(entry)
        if m["state"] == "active":
            data.append(entry | {"id": m["name"]})
    return JSONResponse({"object": "list", "data": data})


@router.get("/health/live", tags=["health"], summary="The process is up and its event loop answers")
async def live() -> dict:
    return {"status": "ok"}


@router.get("/health/ready", tags=["health"], summary="200 once a model is loaded and warmed; 503 while draining")
async def ready(request: Request) -> JSONResponse:
    engine = engine_of(request)
    if engine.ready:
        active = engine.slot.active
        return JSONResponse({"status": "ready", "model": {"name": active.name, "version": active.version},
                             "warnings": engine.startup_warnings})
    if engine.startup_error:
        message = engine.startup_error
    elif engine.slot.active is None:
        message = "loading model"
    else:
        message = "draining"
    return JSONResponse({"status": "unavailable", "error": {"message": message, "type": "unavailable",
                                                            "code": "not_ready"}}, 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format)")
async def metrics(request: Request) -> Response:
    return Response(engine_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["router", "serve", "status_for"]
