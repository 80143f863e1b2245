"""OpenAI-compatible ``POST /v1/audio/transcriptions`` over the same Engine as /transcribe.

Model ids: a registry NAME[@VERSION] picks that model; "default", an empty value and
OpenAI's own ids (``whisper-1``, ``gpt-4o-transcribe``, ``gpt-4o-mini-transcribe``) mean the
active model. ``language`` accepts only English ("en", "en-US", "english" or empty);
``prompt`` and ``temperature`` are accepted and ignored (CTC has no prompt or sampling).
``timestamp_granularities[]=word`` (also without brackets, or repeated) adds ``words`` to
``verbose_json``; with other formats it is ignored rather than refused. ``stream=true`` answers
with server-sent events in OpenAI's shape, ``transcript.text.delta`` ({"delta"}) for each word
and then ``transcript.text.done`` ({"text"}), so the official client's stream iterator works;
the deltas come once the file is decoded (live audio belongs to a stream, not a file upload).
``/v1/audio/translations`` answers 400: the models transcribe English, they do not translate.

    curl localhost:8000/v1/audio/transcriptions -F file=@clip.flac -F model=whisper-1 \\
         -F response_format=verbose_json -F 'timestamp_granularities[]=word'
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from model.subtitles import build_segments, to_srt, to_vtt
from service.domain import RequestError, TranscriptionRequest, TranscriptionResult
from service.http_api import engine_of, model_header, parse_bool, parse_number, serve, transcribe_upload
from service.upload import read_upload

router = APIRouter()

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
OPENAI_MODEL_IDS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
_ENGLISH = ("", "en", "en-us", "en-gb", "english")

_UPLOAD_DOC = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
        "language": {"type": "string"}, "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
        "temperature": {"type": "number"}, "stream": {"type": "boolean"},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}}}}}}}}


class _ParamError(RequestError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@router.post("/v1/audio/transcriptions", tags=["openai"], openapi_extra=_UPLOAD_DOC,
             summary="OpenAI-compatible transcription (multipart)")
async def create_transcription(request: Request) -> Response:
    engine = engine_of(request)

    async def handle() -> Response:
        with await read_upload(request, max_bytes=engine.config.max_audio_bytes) as upload:
            return await _create_transcription(engine, upload, request)

    return await serve(request, "openai", handle)


async def _create_transcription(engine, upload, request: Request) -> Response:
    model = (upload.field("model") or "").strip()
    model = None if model in ("", "default", *OPENAI_MODEL_IDS) else model
    response_format = (upload.field("response_format") or "json").strip().lower()
    if response_format not in RESPONSE_FORMATS:
        raise _ParamError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                          f"got {response_format!r}", "response_format")
    language = (upload.field("language") or "").strip()
    if language.lower() not in _ENGLISH:
        raise _ParamError(f"language {language!r} is not supported: this model transcribes English only "
                          "(use 'en' or leave it empty)", "language")
    temperature = parse_number("temperature", upload.field("temperature"))
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        raise _ParamError(f"temperature must be between 0 and 1, got {temperature}", "temperature")
    granularities = {g.strip().lower() for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for value in upload.fields.get(key, []) for g in value.split(",") if g.strip()}
    if granularities - {"word", "segment"}:
        raise _ParamError(f"timestamp_granularities must be 'word' and/or 'segment', got {sorted(granularities)}",
                          "timestamp_granularities[]")
    stream = parse_bool("stream", upload.field("stream"), False)
    if stream and response_format not in ("json", "text"):
        raise _ParamError(f"stream=true returns text deltas; response_format must be json or text, got "
                          f"{response_format!r}", "response_format")
    result = await transcribe_upload(engine, upload, TranscriptionRequest(audio=None, model=model, api="openai"),
                                     request)
    if stream:
        return StreamingResponse(_events(result), media_type="text/event-stream", headers=model_header(result))
    return format_result(result, response_format, "word" in granularities)


def _events(result: TranscriptionResult):
    """The transcript as OpenAI's transcription stream: one delta per word, then the whole text."""
    words = result.text.split(" ") if result.text else []
    for i, word in enumerate(words):
        yield _event({"type": "transcript.text.delta", "delta": word if i == 0 else f" {word}"})
    yield _event({"type": "transcript.text.done", "text": result.text})


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@router.post("/v1/audio/translations", tags=["openai"], summary="Not available: the models transcribe only")
async def create_translation(request: Request) -> Response:
    async def handle() -> Response:
        raise _ParamError("translation is not available: these models transcribe English speech, they do not "
                          "translate; use /v1/audio/transcriptions", "model")

    return await serve(request, "openai", handle)


def format_result(result: TranscriptionResult, response_format: str, with_words: bool) -> Response:
    headers = model_header(result)
    model_id = f"{result.model_name}@{result.model_version}"
    if response_format == "json":
        return JSONResponse({"text": result.text, "model": model_id}, headers=headers)
    if response_format == "text":
        return PlainTextResponse(result.text + "\n", headers=headers)
    segments = build_segments(result.words, result.text, result.duration_s)
    if response_format == "srt":
        return PlainTextResponse(to_srt(segments), headers=headers, media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), headers=headers, media_type="text/vtt")
    body = {"task": "transcribe", "language": "english", "duration": result.duration_s, "text": result.text,
            "segments": segments, "model": model_id}
    if with_words:
        body["words"] = [{"word": w.word, "start": w.start_s, "end": w.end_s, "probability": w.confidence}
                         for w in result.words]
    return JSONResponse(body, headers=headers)
