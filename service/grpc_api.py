"""The asr.v1.SpeechRecognition servicer: proto <-> domain conversion and one error-to-status mapping.

Recognize builds a TranscriptionRequest and calls ``Engine.transcribe`` (the REST path does the
same). StreamingRecognize feeds a service.streaming.StreamingSession, which runs its windows
through ``Engine.log_probs``. Every failure leaves through ``_rpc_status``: request errors become
INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED / UNAVAILABLE with the
error's one-line message, anything else INTERNAL (logged with its traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import numpy as np
from google.protobuf import duration_pb2

from model.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioError, resample
from model.audio_stream import AudioStream
from model.errors import ASRError, Kind
from service.asr_pb import asr_pb2, asr_pb2_grpc
from service.domain import (IdleTimeoutError, PayloadTooLargeError, RequestError, TranscriptionRequest,
                            TranscriptionResult, WordTiming, error_reason)
from service.budget import Reservation
from service.config import BeamConfig
from service.container_stream import decode_container
from service.decoding import plan_decoding
from service.errors import public_message
from service.streaming import (MAX_STREAM_BACKLOG_S, StreamingOptions, StreamingSession, StreamResult,
                               pcm16_to_float32)
from service.wav_stream import WavFormat, peel_wav_header

log = logging.getLogger(__name__)

SERVICE_NAME = asr_pb2.DESCRIPTOR.services_by_name["SpeechRecognition"].full_name

# The one table from an error's kind (model.errors) to the gRPC status it is reported with (Riva's API too).
GRPC_BY_KIND: dict[Kind, grpc.StatusCode] = {
    Kind.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.UNSUPPORTED_MEDIA: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.WRONG_KIND: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.IDLE: grpc.StatusCode.OUT_OF_RANGE,  # as Google's streaming API answers an audio timeout
    Kind.CANCELLED: grpc.StatusCode.CANCELLED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.UPSTREAM: grpc.StatusCode.UNAVAILABLE,
    Kind.STORAGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_CONTAINER_HINT = " (raw PCM needs encoding=LINEAR_PCM and sample_rate_hertz)"
# Interleaved channels a LINEAR_PCM request may declare (0 means 1); files may have any number.
MAX_PCM_CHANNELS = 8


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and one-line message a request failure is reported with."""
    if isinstance(exc, ASRError):
        return GRPC_BY_KIND[exc.kind], public_message(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see server logs"


class SpeechRecognitionServicer(asr_pb2_grpc.SpeechRecognitionServicer):
    """Serves asr.v1.SpeechRecognition on top of an ``Engine`` (service.engine)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.config = engine.config
        self.metrics = engine.metrics

    # ---- RPCs ---------------------------------------------------------------------------

    async def Recognize(self, request: asr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
                        ) -> asr_pb2.RecognizeResponse:
        async with self._rpc_status(context, "grpc"), self.engine.admit(refuse_if_draining=False):
            config = request.config
            name, version, model_rate = self.engine.resolve_model(config.model or None,
                                                                  request.request_id or _request_id(context))
            if len(request.audio) > self.config.max_audio_bytes:
                raise PayloadTooLargeError(f"audio is {len(request.audio)} bytes; the limit is "
                                           f"{self.config.max_audio_bytes}")
            transcription = self._transcription_request(None, f"{name}@{version}", config, _deadline(context))
            # The message itself stays in memory for the whole call: its bytes count in the budget as the
            # float32 samples they would be (service.budget), besides what the engine reserves.
            with self.engine.budget.reserve(len(request.audio) / (4 * model_rate), "request"):
                audio = await asyncio.to_thread(self._request_audio, request.audio, config, model_rate)
                try:
                    result = await self.engine.transcribe(replace(transcription, audio=audio))
                finally:
                    if isinstance(audio, AudioStream):
                        audio.close()
            return _recognize_response(result, request.request_id)

    async def StreamingRecognize(self, request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[asr_pb2.StreamingRecognizeResponse]:
        async with (self._rpc_status(context, "grpc_stream", request_iterator),
                    self.engine.admit(refuse_if_draining=False)):
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("streaming_request") != "streaming_config":
                got = "an empty stream" if first is None else "audio_content"
                raise RequestError(f"the first message must carry streaming_config, got {got}")
            stream_config = first.streaming_config
            name, version, model_rate = self.engine.resolve_model(stream_config.config.model or None,
                                                                  _request_id(context))
            options = _streaming_options(stream_config, self.config.beam)
            rate, channels, audio_messages, decoded = await self._stream_audio(stream_config.config, request_iterator)
            session = StreamingSession(self.engine, f"{name}@{version}", model_rate, rate, options,
                                       deadline_s=_deadline(context))
            model_ref = asr_pb2.ModelRef(name=name, version=version)
            self.metrics.active_streams.inc()
            reader = _AudioReader(audio_messages, session, channels, self.config,
                                  self.engine.budget.reserve(0.0, "stream"), self._next_message, float_samples=decoded)
            try:
                async for results in reader.drive():
                    yield _streaming_response(results, model_ref)
            finally:
                reader.reservation.release()
                self.metrics.active_streams.dec()

    async def ListModels(self, request: asr_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> asr_pb2.ListModelsResponse:
        async with self._rpc_status(context, "grpc"):
            entries = await asyncio.to_thread(self.engine.registry_models)
            loaded = {(m["name"], m["version"]): m for m in self.engine.list_models()}
            response = asr_pb2.ListModelsResponse(default_model=self.config.default_model)
            for entry in entries:
                if request.name and entry["name"] != request.name:
                    continue
                key = (entry["name"], entry["version"])
                rate = loaded[key]["sample_rate"] if key in loaded else _published_rate(self.engine, *key)
                params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()
                          if k not in ("name", "version") and v is not None}
                if key in loaded:
                    params["frame_duration_s"] = str(loaded[key]["frame_duration_s"])
                response.models.append(asr_pb2.ModelInfo(
                    name=entry["name"], version=entry["version"], sample_rate_hertz=rate,
                    is_default=entry["state"] == "active", loaded=key in loaded, parameters=params))
            return response

    # ---- helpers ------------------------------------------------------------------------

    async def _stream_audio(self, config: asr_pb2.RecognitionConfig, requests: AsyncIterator
                            ) -> tuple[int, int, AsyncIterator, bool]:
        """A stream's (rate, channels, audio messages, whether they are decoded float32 samples).

        Raw PCM at the configured rate; or a file's bytes whose header says the rate, as Riva's sample apps
        stream a .wav or .flac with the format unset: a WAV's samples as they are, FLAC, Ogg, WebM or MP3
        decoded to mono float32 as they arrive (service.container_stream). A stream declared LINEAR_PCM is
        never sniffed.
        """
        rate, channels = _stream_format(config)
        wav, messages = await peel_wav_header(aiter(requests), self._next_message)
        if wav is None and config.encoding != asr_pb2.LINEAR_PCM:
            file_rate, messages = await decode_container(messages, self._next_message)
            if file_rate is not None:
                return *_stream_rate(WavFormat(file_rate, 1, 0), rate, 1), messages, True
            if config.encoding in _CONTAINER_ENCODINGS:
                raise RequestError(f"the stream is not the {asr_pb2.AudioEncoding.Name(config.encoding)} file its "
                                   "config says (a FLAC, Ogg or WebM file's bytes, from its start)")
        return *_stream_rate(wav, rate, channels), messages, False

    async def _next_message(self, messages: AsyncIterator):
        """A stream's next message, None at its end; IdleTimeoutError after ``stream_idle_timeout_s`` of silence."""
        try:
            async with asyncio.timeout(self.config.stream_idle_timeout_s):
                return await anext(messages)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise IdleTimeoutError(f"no audio for {self.config.stream_idle_timeout_s:g} s; the stream was closed "
                                   "(send audio in real time, or half-close when done)") from None

    @contextlib.asynccontextmanager
    async def _rpc_status(self, context: grpc.aio.ServicerContext, api: str, requests: AsyncIterator | None = None):
        """Counts the call once it ends and turns any exception into a gRPC status.

        ``requests``: a stream's messages, read to their end (for at most a second) before a failure is
        answered, so that a client still sending gets the status and not a failed write (INTERNAL).
        """
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            yield
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN  # the status abort() was given
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status, never a crash
            code, message = status_for(exc)
            self.metrics.count_error(error_reason(exc))
            if code is grpc.StatusCode.INTERNAL:
                log.exception("gRPC %s failed", api)
            if requests is not None:
                await drain_requests(requests)
            await context.abort(code, message)
        finally:
            self.metrics.observe_request(api, code.name, time.monotonic() - started)

    def _request_audio(self, data: bytes, config: asr_pb2.RecognitionConfig, model_rate: int
                       ) -> np.ndarray | AudioStream:
        """Recognize's audio at ``model_rate``: PCM converted, a container opened a window at a time.

        Either way its duration is checked first, from the byte count or the file's header, so
        audio over the limit is refused before it is decoded (runs in a worker thread).
        """
        if not data:
            raise RequestError("audio is empty (0 bytes)")
        if config.encoding == asr_pb2.LINEAR_PCM:
            rate, channels = _pcm_format(config)
            self.engine.check_duration(len(data) / (2 * channels * rate))
            return resample(pcm16_to_float32(data, channels), rate, model_rate)
        _pcm_format(config)  # the same field checks for every encoding
        try:
            audio = AudioStream(io.BytesIO(data), model_rate, "audio", max_duration_s=self.config.max_audio_duration_s)
        except AudioError as e:
            hint = _CONTAINER_HINT if config.encoding == asr_pb2.ENCODING_UNSPECIFIED else ""
            raise AudioError(f"{e}{hint}") from None
        try:
            self.engine.check_duration(audio.duration_s)
        except BaseException:
            audio.close()
            raise
        return audio

    def _transcription_request(self, audio: np.ndarray | None, model: str, config: asr_pb2.RecognitionConfig,
                               deadline_s: float | None) -> TranscriptionRequest:
        decoder = config.decoder_config
        default_boost = self.config.beam.hotword_boost
        hotwords = tuple((phrase, context.boost or default_boost)
                         for context in config.speech_contexts for phrase in context.phrases)
        return TranscriptionRequest(
            audio=audio, model=model, decoder=decoder.decoder or "greedy",
            word_timestamps=config.enable_word_time_offsets, hotwords=hotwords,
            beam_width=decoder.beam_width or None,
            lm_alpha=decoder.lm_alpha if decoder.HasField("lm_alpha") else None,
            lm_beta=decoder.lm_beta if decoder.HasField("lm_beta") else None,
            # 0 is proto3's "unset"; a negative count reaches plan_decoding's range check, as on REST.
            lm=decoder.lm or None, num_alternatives=config.max_alternatives or 1,
            deadline_s=deadline_s, api="grpc")


class _AudioReader:
    """Reads a stream's audio messages in the background while the session runs the model.

    Reading and inference overlap, so a slow window never stalls the client's sends, and the
    next window covers all audio that arrived meanwhile. Reading pauses while more than
    ``MAX_STREAM_BACKLOG_S`` of audio waits for the model (gRPC's flow control then holds the
    client back), so a client pushing an hour at once holds seconds, not the hour. What the
    stream holds is reserved from the memory budget (service.budget); a client silent for
    ``stream_idle_timeout_s`` ends the stream with OUT_OF_RANGE.
    """

    def __init__(self, requests: AsyncIterator, session: StreamingSession, channels: int, config,
                 reservation: Reservation, next_message, *, float_samples: bool = False) -> None:
        self.requests = requests
        # A decoded file's audio (service.container_stream) comes as mono float32, not 16-bit PCM.
        self.float_samples = float_samples
        self.next_message = next_message
        self.session = session
        self.channels = channels
        self.config = config
        self.reservation = reservation
        self._wake = asyncio.Event()
        self._stepped = asyncio.Event()
        self._done = False
        self._error: BaseException | None = None
        self._carry = b""
        self._received = 0

    async def drive(self) -> AsyncIterator[list[StreamResult]]:
        """Yields each non-empty batch of results until the client half-closes, then the finals."""
        task = asyncio.create_task(self._read())
        try:
            while True:
                if self._error is not None:
                    raise self._error
                if self.session.ready():
                    results = await self.session.step()
                    self.reservation.resize(self.session.held_s)
                    self._stepped.set()
                elif self._done:
                    break
                else:
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                if results:
                    yield results
            results = await self.session.finish()
            if results:
                yield results
        finally:
            task.cancel()

    async def _read(self) -> None:
        try:
            messages = aiter(self.requests)
            while (message := await self.next_message(messages)) is not None:
                if message.WhichOneof("streaming_request") != "audio_content":
                    raise RequestError("streaming_config may only be sent once, as the first message")
                self._add(message.audio_content)
                self._wake.set()
                while self.session.backlog_s > MAX_STREAM_BACKLOG_S:
                    self._stepped.clear()
                    await self._stepped.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to drive(), which reports it as the call's status
            self._error = exc
        self._done = True
        self._wake.set()

    def _add(self, data: bytes) -> None:
        self._received += len(data) // (2 if self.float_samples else 1)  # as the 16-bit PCM it would be
        if self._received > self.config.max_audio_bytes:
            raise PayloadTooLargeError(f"stream audio exceeds {self.config.max_audio_bytes} bytes")
        data = self._carry + data
        frame_bytes = 4 if self.float_samples else 2 * self.channels
        usable = len(data) - len(data) % frame_bytes  # a message may end inside a PCM frame
        self._carry = data[usable:]
        samples = (np.frombuffer(data[:usable], dtype="<f4").copy() if self.float_samples
                   else pcm16_to_float32(data[:usable], self.channels))
        self.session.add_audio(samples)
        self.reservation.resize(self.session.held_s)
        if self.session.audio_received_s > self.config.max_audio_duration_s:
            raise PayloadTooLargeError(f"stream audio exceeds {self.config.max_audio_duration_s:.0f} s")


async def drain_requests(requests: AsyncIterator, seconds: float = 1.0) -> None:
    """Reads a refused stream's remaining messages, for at most ``seconds``, so its client can take the status."""
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, asyncio.CancelledError, RuntimeError):
        async with asyncio.timeout(seconds):
            async for _ in requests:
                pass


# ---- proto -> domain --------------------------------------------------------------------

def _request_id(context: grpc.aio.ServicerContext) -> str | None:
    """The client's ``x-request-id`` metadata: a retried call, same id, is routed to the same version."""
    return dict(context.invocation_metadata() or ()).get("x-request-id")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + max(0.0, remaining)


def _check_rate(rate: int) -> int:
    if rate <= 0:
        raise RequestError("sample_rate_hertz is required for LINEAR_PCM audio")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise RequestError(f"sample_rate_hertz must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}, got {rate}")
    return rate


def _pcm_format(config: asr_pb2.RecognitionConfig) -> tuple[int, int]:
    """The one check of a RecognitionConfig's audio fields, for Recognize and StreamingRecognize alike.

    Returns (sample rate, channels) for LINEAR_PCM; the rate is 0 for container encodings, whose
    header says it.
    """
    if config.encoding not in asr_pb2.AudioEncoding.values():
        raise RequestError(f"encoding {config.encoding} is not an AudioEncoding value "
                           f"({', '.join(asr_pb2.AudioEncoding.keys())})")
    if not 0 <= config.audio_channel_count <= MAX_PCM_CHANNELS:
        raise RequestError(f"audio_channel_count must be between 0 and {MAX_PCM_CHANNELS}, "
                           f"got {config.audio_channel_count}")
    channels = max(1, config.audio_channel_count)
    if config.encoding != asr_pb2.LINEAR_PCM:
        return 0, channels
    return _check_rate(config.sample_rate_hertz), channels


# Encodings a stream may declare for a file's bytes, which the stream's first bytes must then confirm.
_CONTAINER_ENCODINGS = (asr_pb2.FLAC, asr_pb2.OGG_VORBIS)


def _stream_format(config: asr_pb2.RecognitionConfig) -> tuple[int, int]:
    if config.encoding not in (asr_pb2.ENCODING_UNSPECIFIED, asr_pb2.LINEAR_PCM, asr_pb2.WAV,
                               *_CONTAINER_ENCODINGS) and config.encoding in asr_pb2.AudioEncoding.values():
        raise RequestError(f"StreamingRecognize accepts LINEAR_PCM, or a WAV, FLAC, Ogg or WebM file's bytes, got "
                           f"{asr_pb2.AudioEncoding.Name(config.encoding)}")
    linear = asr_pb2.RecognitionConfig()
    linear.CopyFrom(config)
    if config.encoding in (asr_pb2.WAV, *_CONTAINER_ENCODINGS):
        linear.sample_rate_hertz = 0  # the file's header says the rate
    # A stream is raw PCM, or a file whose header says its rate (_stream_rate).
    linear.encoding = asr_pb2.LINEAR_PCM if linear.sample_rate_hertz else asr_pb2.ENCODING_UNSPECIFIED
    return _pcm_format(linear)


def _stream_rate(wav: WavFormat | None, rate: int, channels: int) -> tuple[int, int]:
    """A stream's (rate, channels): its WAV header's (which must agree with the config's), else the config's."""
    if wav is None:
        if rate == 0:
            raise RequestError("sample_rate_hertz is required for LINEAR_PCM audio (or stream a WAV file's bytes, "
                               "header first)")
        return rate, channels
    if rate and rate != wav.sample_rate:
        raise RequestError(f"the stream's WAV header says {wav.sample_rate} Hz, its config {rate} Hz")
    if channels > 1 and channels != wav.channels:
        raise RequestError(f"the stream's WAV header says {wav.channels} channel(s), its config {channels}")
    if wav.channels > MAX_PCM_CHANNELS:
        raise RequestError(f"the stream's WAV file has {wav.channels} channels; at most {MAX_PCM_CHANNELS}")
    return _check_rate(wav.sample_rate), wav.channels


def _streaming_options(stream_config: asr_pb2.StreamingRecognitionConfig, limits: BeamConfig) -> StreamingOptions:
    """A stream's options; its hotwords (speech_contexts) are checked here, at its start, as Recognize checks them."""
    config = stream_config.config
    if config.decoder_config.decoder not in ("", "greedy"):
        raise RequestError(f"StreamingRecognize decodes greedily; decoder {config.decoder_config.decoder!r} "
                           "is only available in Recognize")
    if config.max_alternatives > 1:
        raise RequestError("StreamingRecognize returns one alternative; max_alternatives must be 0 or 1")
    endpointing = stream_config.endpointing
    if endpointing.silence_ms < 0:
        raise RequestError(f"endpointing.silence_ms must not be negative, got {endpointing.silence_ms}")
    silence_ms = None if endpointing.disabled else (endpointing.silence_ms or 800)
    hotwords = tuple((phrase, context.boost or limits.hotword_boost)
                     for context in config.speech_contexts for phrase in context.phrases)
    plan_decoding(TranscriptionRequest(np.zeros(0, dtype=np.float32), hotwords=hotwords), limits, {})
    return StreamingOptions(interim_results=stream_config.interim_results,
                            word_timestamps=config.enable_word_time_offsets, silence_ms=silence_ms, hotwords=hotwords)


def _published_rate(engine, name: str, version: int) -> int:
    try:
        return engine.resolve_model(f"{name}@{version}")[2]
    except Exception:  # noqa: BLE001 - a broken version is still listed (its error is in parameters)
        return 0


# ---- domain -> proto --------------------------------------------------------------------

def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def _words(words: tuple[WordTiming, ...]) -> list[asr_pb2.WordInfo]:
    return [asr_pb2.WordInfo(word=w.word, start_time=_duration(w.start_s), end_time=_duration(w.end_s),
                             confidence=w.confidence) for w in words]


def _recognize_response(result: TranscriptionResult, request_id: str) -> asr_pb2.RecognizeResponse:
    alternatives = [asr_pb2.SpeechRecognitionAlternative(transcript=a.text, confidence=a.confidence,
                                                         words=_words(a.words))
                    for a in result.alternatives]
    timings = asr_pb2.Timings(**{k: float(result.timings.get(k, 0.0))
                                 for k in ("queue_s", "inference_s", "decode_s", "total_s")},
                              precision=str(result.timings.get("precision", "")))
    return asr_pb2.RecognizeResponse(
        results=[asr_pb2.SpeechRecognitionResult(alternatives=alternatives, channel_tag=1,
                                                 audio_processed=result.duration_s)],
        model=asr_pb2.ModelRef(name=result.model_name, version=result.model_version),
        timings=timings, request_id=request_id)


def _streaming_response(results: list[StreamResult], model: asr_pb2.ModelRef) -> asr_pb2.StreamingRecognizeResponse:
    return asr_pb2.StreamingRecognizeResponse(model=model, results=[
        asr_pb2.StreamingRecognitionResult(
            alternatives=[asr_pb2.SpeechRecognitionAlternative(transcript=r.text, confidence=r.confidence,
                                                               words=_words(r.words))],
            is_final=r.is_final, stability=r.stability, audio_processed=r.audio_processed_s, channel_tag=1)
        for r in results])
