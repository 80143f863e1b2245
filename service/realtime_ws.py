"""The live-transcription WebSocket ``/v1/realtime?intent=transcription``, in OpenAI Realtime's event shape (the
beta API's transcription_session events and the GA API's session.update of a "transcription" session).

The protocol is in README.md ("Live transcription over a WebSocket"). Each buffered item is a
service.streaming.StreamingSession, so windows, finals, limits and metrics are the gRPC stream's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from dataclasses import replace

import numpy as np
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from model.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from service.auth import check_api_key
from service.decoding import plan_decoding
from service.domain import (IdleTimeoutError, PayloadTooLargeError, RequestError, ServiceUnavailableError,
                            TranscriptionRequest)
from service.errors import public_message
from service.g711 import g711_to_pcm16
from service.http_api import words_json
from service.http_errors import count_failure, error_response, known_error
from service.openai_api import OPENAI_MODEL_IDS
from service.riva_realtime import FILE_FORMAT, default_session, from_riva_session, is_riva_session
from service.streaming import (MAX_STREAM_BACKLOG_S, STABLE_STABILITY, StreamingOptions, StreamingSession, StreamResult,
                               pcm16_to_float32)
from service.wav_stream import is_wav, parse_wav_header

log = logging.getLogger(__name__)

router = APIRouter()

API = "realtime"
# OpenAI's pcm16 is 24 kHz mono; a session may declare another rate, which the stream resamples.
DEFAULT_SAMPLE_RATE = 24_000
DEFAULT_SILENCE_MS = 800
# Browsers cannot set headers on a WebSocket, so the key may ride in a subprotocol (OpenAI's way).
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
# The shortest item a commit may hold (OpenAI's own minimum; longer than any model's output frame).
MIN_COMMIT_S = 0.1
# Client events received but not yet applied, beyond which the socket is not read.
_MAX_QUEUED_EVENTS = 64
# transcription_session.update is the beta API's; session.update with a "transcription" session the GA API's
# (openai's client.realtime). Each is answered in its own shape.
_EVENTS = ("transcription_session.update", "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
           "input_audio_buffer.clear", "input_audio_buffer.done")


# Telephony's G.711, as the beta API names it and as the GA API does (8 kHz, one byte a sample; service.g711).
_G711_FORMATS = {"g711_ulaw": "mulaw", "g711_alaw": "alaw"}
_GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


class _EventError(RequestError):
    """A client event this protocol cannot take; ``code`` names it and ``close_code`` ends the socket."""

    def __init__(self, code: str, message: str, close_code: int = 1008) -> None:
        super().__init__(message)
        self.code, self.close_code = code, close_code


class _ClientGone(Exception):
    """The client closed the socket; nothing more can be sent."""


# RFC 6455 close codes by the HTTP status REST gives the same failure: too big 1009, try again
# later 1013, server-side failure 1011, an idle socket 1001 (going away); any other client error
# is a policy violation (1008).
_CLOSE_CODES = {408: 1001, 413: 1009, 429: 1013, 503: 1013, 504: 1011}


def error_for(exc: BaseException) -> tuple[int, dict]:
    """The close code and ``error`` object a failure is reported with; internals are never echoed."""
    if isinstance(exc, _EventError):
        return exc.close_code, {"type": "invalid_request_error", "code": exc.code, "message": public_message(exc)}
    known = known_error(exc)
    if known is None:
        log.error("realtime transcription failed", exc_info=exc)
        return 1011, {"type": "server_error", "code": "internal", "message": "internal server error"}
    status, type_, code = known
    return _CLOSE_CODES.get(status, 1008), {"type": type_, "code": code, "message": public_message(exc)}


@router.post("/v1/realtime/transcription_sessions", tags=["realtime"],
             summary="Riva's realtime API: the defaults of a new transcription session, before its socket opens")
async def create_transcription_session(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    try:
        check_api_key(engine.config.api_keys, request.headers.get("authorization"))
        name, version, _ = engine.resolve_model(None, request.headers.get("x-request-id"))
    except Exception as exc:  # noqa: BLE001 - answered as every REST error is
        count_failure(engine.metrics, exc)
        return error_response(exc)
    return JSONResponse(default_session(_new_id("sess"), f"{name}@{version}", 16_000))


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    engine = websocket.app.state.engine
    offered = list(websocket.scope.get("subprotocols") or ())
    started = time.monotonic()
    if not engine.ready and "websocket.http.response" in websocket.scope.get("extensions", {}):
        # Loading or draining: answer the handshake with 503, as REST would, so that a load balancer
        # sends the client to another replica instead of this one accepting a socket it cannot serve.
        unavailable = ServiceUnavailableError("not ready (loading the model or draining); retry shortly")
        count_failure(engine.metrics, unavailable)
        await websocket.send_denial_response(error_response(unavailable))
        engine.metrics.observe_request(API, 503, time.monotonic() - started)
        return
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    connection = _Connection(websocket, engine)
    try:
        # Without an intent the session is a transcription one too (it is all this server does), so a client
        # given only the base URL connects; another intent is refused rather than served as something it is not.
        if websocket.query_params.get("intent", "transcription") != "transcription":
            raise _EventError("unsupported_intent", "this server only transcribes: connect to "
                                                    "/v1/realtime?intent=transcription")
        check_api_key(engine.config.api_keys, _authorization(websocket, offered))
        async with engine.admit():
            engine.metrics.active_streams.inc()
            try:
                await connection.run()
            finally:
                engine.metrics.active_streams.dec()
        status = connection.client_close_code
    except _ClientGone:
        status = connection.client_close_code
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error event and a close, never a traceback
        count_failure(engine.metrics, exc)
        status, error = error_for(exc)
        try:
            await connection.send("error", error=error)
            await websocket.close(status, error["code"])
        except (_ClientGone, WebSocketDisconnect, RuntimeError):
            pass  # the client left first; there is no one to tell
    engine.metrics.observe_request(API, status, time.monotonic() - started)


def _authorization(websocket: WebSocket, offered: list[str]) -> str | None:
    """``Authorization`` header, else ``?api_key=``, else the key subprotocol, as a Bearer value."""
    if websocket.headers.get("authorization"):
        return websocket.headers["authorization"]
    key = websocket.query_params.get("api_key") or next(
        (p[len(KEY_SUBPROTOCOL_PREFIX):] for p in offered if p.startswith(KEY_SUBPROTOCOL_PREFIX)), None)
    return f"Bearer {key}" if key else None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _parse(message: dict) -> dict:
    """One client frame as an event dict; appends get their decoded audio as ``pcm`` (bytes)."""
    text = message.get("text")
    if text is None:
        raise _EventError("unsupported_frame", "send events as JSON text frames, not binary", 1003)
    try:
        event = json.loads(text)
    except ValueError:
        raise _EventError("invalid_json", "the message is not valid JSON", 1003) from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise _EventError("invalid_event", "an event must be a JSON object with a string 'type'", 1003)
    if event["type"] not in _EVENTS:
        raise _EventError("unknown_event", f"unknown event type {event['type'][:64]!r}; this server accepts "
                                           f"{', '.join(_EVENTS)}", 1003)
    if event["type"] == "input_audio_buffer.append":
        try:
            event["pcm"] = base64.b64decode(event["audio"], validate=True)
        except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
            raise _EventError("invalid_audio", "'audio' must be base64-encoded 16-bit little-endian mono PCM",
                              1003) from None
    return event


class _Connection:
    """One socket's state: the session settings, the open item's stream and the audio received."""

    def __init__(self, websocket: WebSocket, engine) -> None:
        self.ws, self.engine, self.config = websocket, engine, engine.config
        self.client_close_code = 1000
        self.session_id = _new_id("sess")
        self.model: tuple[str, int, int] | None = None  # (name, version, model rate), pinned at update
        self.source_rate, self.silence_ms, self.audio_format = DEFAULT_SAMPLE_RATE, None, "pcm16"
        self.channels, self.hotwords, self.riva = 1, (), False  # riva: the session came from Riva's client
        self._header = b""  # a file's first bytes while its WAV header is incomplete (input_audio_format "none")
        self._force_eou = False  # Riva's runtime_config.force_eou: the next commit ends the item
        self.stream: StreamingSession | None = None
        self.item_id: str | None = None
        self.previous_item_id: str | None = None
        self.sent_stable = ""  # stable text already sent as deltas for the open item
        self.item_start_s = 0.0  # where the open item starts in its stream
        self.received_s = 0.0  # all items' audio, for max_audio_duration_s
        self._carry = b""  # an append may end inside a 16-bit sample
        # Bounded: a client sending faster than the model runs is held back by TCP, not by our memory.
        self._events: asyncio.Queue = asyncio.Queue(maxsize=_MAX_QUEUED_EVENTS)
        self.reservation = engine.budget.reserve(0.0, "stream")

    async def run(self) -> None:
        """Serves events until the client closes; raises the first error."""
        await self.send("transcription_session.created", session=self._session_json())
        reader = asyncio.create_task(self._read())
        try:
            while True:
                # Apply every event that has arrived before running the model, so each window
                # covers all audio received meanwhile (the gRPC stream's reader does the same),
                # unless that audio is already more than the model should take in one window.
                if self.stream is not None and self.stream.ready() and (
                        self._events.empty() or self.stream.backlog_s > MAX_STREAM_BACKLOG_S):
                    await self._publish(await self.stream.step())
                    self.reservation.resize(self.stream.held_s if self.stream is not None else 0.0)
                    continue
                event = await self._events.get()
                if isinstance(event, BaseException):
                    raise event
                if event is None:
                    return
                await self._apply(event)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.reservation.release()

    async def send(self, event_type: str, **fields) -> None:
        try:
            await self.ws.send_json({"type": event_type, "event_id": _new_id("event"), **fields})
        except (WebSocketDisconnect, RuntimeError):
            raise _ClientGone() from None

    async def _read(self) -> None:
        """Receives frames in the background, so a slow model window never stalls the client's sends."""
        received_bytes = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(self.config.stream_idle_timeout_s):
                        message = await self.ws.receive()
                except TimeoutError:
                    raise IdleTimeoutError(f"no event for {self.config.stream_idle_timeout_s:g} s; the socket was "
                                           "closed (send audio in real time, and close the socket when done)") from None
                if message["type"] == "websocket.disconnect":
                    self.client_close_code = message.get("code") or 1000
                    break
                event = _parse(message)
                received_bytes += len(event.get("pcm", b""))
                if received_bytes > self.config.max_audio_bytes:  # checked here: the queue must stay bounded
                    raise PayloadTooLargeError(f"stream audio exceeds {self.config.max_audio_bytes} bytes")
                await self._events.put(event)
        except Exception as exc:  # noqa: BLE001 - handed to run(), which reports it
            await self._events.put(exc)
            return
        await self._events.put(None)

    async def _apply(self, event: dict) -> None:
        kind = event["type"]
        if kind == "transcription_session.update":
            session = event.get("session")
            if isinstance(session, dict) and is_riva_session(session):
                self.riva, session = True, from_riva_session(session)
            self._update(session)
            await self.send("transcription_session.updated", session=self._session_json())
        elif kind == "session.update":
            self._update(_from_ga_session(event.get("session")))
            await self.send("session.updated", session=self._ga_session_json())
        elif kind == "input_audio_buffer.append":
            self._append(event["pcm"])
            runtime = event.get("runtime_config")
            self._force_eou = self._force_eou or (isinstance(runtime, dict) and
                                                  str(runtime.get("force_eou")).lower() == "true")
        elif kind == "input_audio_buffer.done":  # Riva's: the last audio is in; its final is the last result
            await self._end_item(last=True)
        elif kind == "input_audio_buffer.commit":
            if self.riva and (not self._force_eou or self.stream is None):
                return  # Riva's client commits after every chunk: its items end at pauses, force_eou or done
            self._force_eou = False
            if self.stream is None:
                raise _EventError("input_audio_buffer_commit_empty", "nothing to commit: no audio was appended "
                                                                     "since the last commit")
            if self.stream.audio_received_s < MIN_COMMIT_S:
                raise _EventError("input_audio_buffer_commit_empty", f"buffer too small: "
                                  f"{1000 * self.stream.audio_received_s:.0f} ms of audio; commit at least "
                                  f"{1000 * MIN_COMMIT_S:.0f} ms")
            await self._end_item()
        else:  # input_audio_buffer.clear
            self.stream, self._carry = None, b""
            self.reservation.resize(0.0)
            await self.send("input_audio_buffer.cleared")

    async def _end_item(self, last: bool = False) -> None:
        """Finishes the open item's stream and completes the item (with no audio buffered: an empty one)."""
        results = await self.stream.finish() if self.stream is not None else []
        self.stream, self._carry, self._header = None, b"", b""
        self.reservation.resize(0.0)
        await self._complete(results[0] if results else None, last=last)

    def _update(self, session) -> None:
        """Applies the fields a ``transcription_session.update`` sets; the others keep their values."""
        if not isinstance(session, dict):
            raise _EventError("invalid_session", "transcription_session.update needs a 'session' object")
        if self.stream is not None:
            raise _EventError("session_locked", "the session cannot change while audio is buffered; commit or "
                                                "clear it first")
        audio_format = session.get("input_audio_format", self.audio_format)
        if audio_format not in _G711_FORMATS and audio_format not in ("pcm16", FILE_FORMAT):
            raise _EventError("unsupported_audio_format", f"input_audio_format must be pcm16, g711_ulaw, g711_alaw or "
                              f"none (a WAV file's bytes), got {str(audio_format)[:32]!r}", 1003)
        channels = session.get("channels", self.channels)
        if type(channels) is not int or not 1 <= channels <= 8:
            raise _EventError("invalid_channels", f"num_channels must be an integer from 1 to 8, got "
                                                  f"{str(channels)[:32]}")
        hotwords = tuple(session.get("hotwords", self.hotwords))
        plan_decoding(TranscriptionRequest(np.zeros(0, dtype=np.float32), hotwords=hotwords), self.config.beam, {})
        # G.711 is 8 kHz by definition; 16-bit PCM keeps the session's rate unless the update sets one.
        rate = session.get("sample_rate", 8_000 if audio_format in _G711_FORMATS else self.source_rate)
        if type(rate) is not int or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise _EventError("invalid_sample_rate", f"sample_rate must be an integer from {MIN_SAMPLE_RATE} to "
                                                     f"{MAX_SAMPLE_RATE} Hz, got {str(rate)[:32]}")
        transcription = session.get("input_audio_transcription") or {}
        if not isinstance(transcription, dict):
            raise _EventError("invalid_session", "input_audio_transcription must be an object")
        spec = transcription.get("model", session.get("model"))
        if spec is not None and not isinstance(spec, str):
            raise _EventError("invalid_model", "input_audio_transcription.model must be a string")
        if "turn_detection" in session:
            self.silence_ms = _silence_ms(session["turn_detection"])
        if spec is not None or self.model is None:
            self.model = self.engine.resolve_model(None if spec in (None, "", "default", *OPENAI_MODEL_IDS)
                                                   else spec, self.ws.headers.get("x-request-id") or self.session_id)
        self.source_rate, self.audio_format, self.channels, self.hotwords = rate, audio_format, channels, hotwords

    def _append(self, pcm: bytes) -> None:
        if self.model is None:  # no session update: the defaults (the active model, 24 kHz), as OpenAI's
            self.model = self.engine.resolve_model(None, self.ws.headers.get("x-request-id") or self.session_id)
        if self.stream is None:
            if self.audio_format == FILE_FORMAT:
                pcm = self._past_wav_header(pcm)
                if pcm is None:
                    return  # the header goes on in the next append
            name, version, model_rate = self.model
            self.stream = StreamingSession(self.engine, f"{name}@{version}", model_rate, self.source_rate,
                                           StreamingOptions(silence_ms=self.silence_ms, hotwords=self.hotwords),
                                           api=API)
            self.item_id, self.sent_stable, self.item_start_s = _new_id("item"), "", 0.0
        if self.audio_format in _G711_FORMATS:  # one byte a sample: never split
            pcm = g711_to_pcm16(pcm, _G711_FORMATS[self.audio_format])
        frame_bytes = 2 * self.channels
        data = self._carry + pcm
        usable = len(data) - len(data) % frame_bytes
        self._carry = data[usable:]
        self.stream.add_audio(pcm16_to_float32(data[:usable], self.channels))
        self.reservation.resize(self.stream.held_s)
        self.received_s += usable / frame_bytes / self.source_rate
        if self.received_s > self.config.max_audio_duration_s:
            raise PayloadTooLargeError(f"stream audio exceeds {self.config.max_audio_duration_s:.0f} s")

    def _past_wav_header(self, data: bytes) -> bytes | None:
        """A file's bytes (input_audio_format "none"): None until its WAV header is whole, then the bytes after it,
        with the rate and channels the header states."""
        self._header += data
        if len(self._header) < 12:
            return None
        if not is_wav(self._header):
            raise _EventError("unsupported_audio_format", "input_audio_format none takes a WAV file's bytes, header "
                                                          "first", 1003)
        wav = parse_wav_header(self._header)
        if wav is None:
            return None
        if not MIN_SAMPLE_RATE <= wav.sample_rate <= MAX_SAMPLE_RATE or wav.channels > 8:
            raise _EventError("invalid_sample_rate", f"the WAV file is {wav.sample_rate} Hz with {wav.channels} "
                                                     f"channel(s); {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz and 1-8 "
                                                     "channels are read")
        self.source_rate, self.channels = wav.sample_rate, wav.channels
        rest, self._header = self._header[wav.data_offset:], b""
        return rest

    async def _publish(self, results: list[StreamResult]) -> None:
        """Sends a step's results: a final (server VAD endpoint) completes the item, interims are deltas."""
        final = next((r for r in results if r.is_final), None)
        if final is not None:
            await self._complete(final)
            # The stream goes on as the next item, which starts where the stream's next segment does.
            self.item_id, self.sent_stable = _new_id("item"), ""
            self.item_start_s = self.stream.segment_start_s
            return
        stable = " ".join(r.text for r in results if r.stability == STABLE_STABILITY and r.text)
        # Deltas are append-only (OpenAI's contract), so only settled words go out as deltas;
        # ``transcript`` is the whole current hypothesis, tentative tail included, for display.
        delta = ""
        if stable.startswith(self.sent_stable):  # else a settled word was revised: the final will say
            delta, self.sent_stable = stable[len(self.sent_stable):], stable
        await self.send("conversation.item.input_audio_transcription.delta", item_id=self.item_id,
                        content_index=0, delta=delta, transcript=" ".join(r.text for r in results if r.text))

    async def _complete(self, final: StreamResult | None, last: bool = False) -> None:
        name, version, _ = self.model
        text = final.text if final else ""
        if text.startswith(self.sent_stable) and text != self.sent_stable:
            # The rest of the final as one more delta, so that the item's deltas add up to its transcript (unless
            # the final revised a word already sent: deltas cannot be taken back).
            await self.send("conversation.item.input_audio_transcription.delta", item_id=self.item_id,
                            content_index=0, delta=text[len(self.sent_stable):], transcript=text)
        await self.send("input_audio_buffer.committed", previous_item_id=self.previous_item_id, item_id=self.item_id)
        # Word times count from the item's start (the stream's, for every item after a server VAD endpoint).
        offset_s = self.item_start_s
        words = [replace(w, start_s=round(w.start_s - offset_s, 3), end_s=round(w.end_s - offset_s, 3))
                 for w in final.words] if final else []
        # is_last_result and words_info (times in ms) are Riva's; OpenAI's clients read past them.
        riva = {"words_info": {"words": [{"word": w.word, "start_time": round(1000 * w.start_s),
                                          "end_time": round(1000 * w.end_s), "confidence": w.confidence,
                                          "speaker_tag": 0} for w in words]}} if self.riva else {}
        await self.send("conversation.item.input_audio_transcription.completed", item_id=self.item_id,
                        content_index=0, transcript=text, words=words_json(words),
                        model={"name": name, "version": version}, is_last_result=last, **riva)
        self.previous_item_id = self.item_id

    def _ga_session_json(self) -> dict:
        beta = self._session_json()
        return {"type": "transcription", "id": self.session_id, "object": "realtime.transcription_session",
                "audio": {"input": {"format": {"type": {v: k for k, v in _GA_FORMATS.items()}.get(self.audio_format,
                                                                                                   "audio/pcm"),
                                               "rate": self.source_rate},
                                    "transcription": beta["input_audio_transcription"],
                                    "turn_detection": beta["turn_detection"], "noise_reduction": None}}}

    def _session_json(self) -> dict:
        model = f"{self.model[0]}@{self.model[1]}" if self.model else None
        turn = None if self.silence_ms is None else {"type": "server_vad", "silence_duration_ms": self.silence_ms}
        return {"id": self.session_id, "object": "realtime.transcription_session",
                "input_audio_format": self.audio_format, "sample_rate": self.source_rate,
                "input_audio_transcription": {"model": model}, "turn_detection": turn}


def _from_ga_session(session) -> dict:
    """A GA ``session.update``'s transcription session in the beta fields ``_update`` reads.

    GA: ``{"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
    "transcription": {"model": ...}, "turn_detection": ...}}}``; each field left out keeps its value.
    """
    if not isinstance(session, dict):
        raise _EventError("invalid_session", "session.update needs a 'session' object")
    if session.get("type", "transcription") != "transcription":
        raise _EventError("unsupported_session_type", "this server only transcribes: the session's type must be "
                                                      "\"transcription\"")
    audio = session.get("audio") or {}
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    if not isinstance(audio_input or {}, dict):
        raise _EventError("invalid_session", "session.audio.input must be an object")
    audio_input = audio_input or {}
    beta: dict = {}
    audio_format = audio_input.get("format")
    if audio_format is not None:
        kind = audio_format.get("type", "audio/pcm") if isinstance(audio_format, dict) else None
        if kind not in _GA_FORMATS:
            raise _EventError("unsupported_audio_format", "audio.input.format.type must be audio/pcm, audio/pcmu or "
                                                          "audio/pcma", 1003)
        beta["input_audio_format"] = _GA_FORMATS[kind]
        if "rate" in audio_format:
            beta["sample_rate"] = audio_format["rate"]
    if "transcription" in audio_input:
        beta["input_audio_transcription"] = audio_input["transcription"]
    if "turn_detection" in audio_input:
        beta["turn_detection"] = audio_input["turn_detection"]
    return beta


def _silence_ms(turn_detection) -> int | None:
    """None (commit by hand) or ``{"type": "server_vad", "silence_duration_ms": N}`` -> the endpoint silence."""
    if turn_detection is None:
        return None
    if not isinstance(turn_detection, dict) or turn_detection.get("type") != "server_vad":
        raise _EventError("unsupported_turn_detection", "turn_detection must be null or {\"type\": \"server_vad\"}")
    silence_ms = turn_detection.get("silence_duration_ms", DEFAULT_SILENCE_MS)
    if type(silence_ms) is not int or silence_ms <= 0:
        raise _EventError("invalid_turn_detection", "turn_detection.silence_duration_ms must be a positive integer")
    return silence_ms
