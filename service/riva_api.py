"""nvidia.riva.asr.RivaSpeechRecognition on our engine, so Riva's clients (nvidia-riva-client) work unchanged.

Each Riva request is translated into the asr.v1 request it means and served by the asr.v1
servicer (service.grpc_api), whose limits, errors and version pinning therefore apply as they
are; the answers are translated back. The message definitions are the ones nvidia-riva-client
ships (``riva.client.proto``), not a copy.

Mapping (RecognitionConfig):

* ``encoding``: LINEAR_PCM (with ``sample_rate_hertz`` and ``audio_channel_count``), MULAW and ALAW
  (G.711, turned into that PCM), FLAC, OGGOPUS, or unset for any container our decoder reads (WAV, FLAC, OGG,
  MP3, WebM, MP4/M4A, AAC). A stream is 16-bit PCM at the stated rate, or a file's bytes whose header states
  it: WAV (service.wav_stream), as Riva's sample apps send, or FLAC, Ogg (Opus, Vorbis) or WebM, decoded as
  they arrive (service.container_stream).
* ``GetRivaSpeechRecognitionConfig`` lists every version twice, ``type`` "offline" and "online",
  as Riva lists a pipeline per mode and its sample apps keep one of them.
* ``model``, ``max_alternatives``, ``enable_word_time_offsets`` (word times in milliseconds, as
  Riva gives them), ``speech_contexts`` (phrases and boost become hotwords, which use the beam
  decoder), ``endpointing_config.stop_history`` (ms of silence that ends an utterance).
* ``custom_configuration``: ``decoder`` (greedy|beam), ``beam_width``, ``lm``, ``lm_alpha``,
  ``lm_beta``; any other key is refused.
* ``language_code`` must be English (or empty); automatic punctuation, speaker diarization and
  separate recognition per channel are refused with INVALID_ARGUMENT (the models do none of it);
  ``profanity_filter`` and ``verbatim_transcripts`` are ignored (transcripts are always verbatim).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from riva.client.proto import riva_asr_pb2, riva_asr_pb2_grpc, riva_audio_pb2

from service.asr_pb import asr_pb2
from service.domain import RequestError
from service.errors import public_message
from service.g711 import g711_to_pcm16
from service.grpc_api import SpeechRecognitionServicer

SERVICE_NAME = riva_asr_pb2.DESCRIPTOR.services_by_name["RivaSpeechRecognition"].full_name
# Riva's telephony encodings arrive as G.711 bytes and go on as the 16-bit PCM they stand for (service.g711);
# Ogg Opus is a container the decoder reads (Recognize only: a stream is PCM).
_ENCODINGS = {riva_audio_pb2.ENCODING_UNSPECIFIED: asr_pb2.ENCODING_UNSPECIFIED,
              riva_audio_pb2.LINEAR_PCM: asr_pb2.LINEAR_PCM, riva_audio_pb2.FLAC: asr_pb2.FLAC,
              riva_audio_pb2.MULAW: asr_pb2.LINEAR_PCM, riva_audio_pb2.ALAW: asr_pb2.LINEAR_PCM,
              riva_audio_pb2.OGGOPUS: asr_pb2.ENCODING_UNSPECIFIED}
_G711 = {riva_audio_pb2.MULAW: "mulaw", riva_audio_pb2.ALAW: "alaw"}
_ENGLISH = ("", "en", "en-us", "en-gb", "en-au", "en-in")
_CUSTOM_KEYS = ("decoder", "beam_width", "lm", "lm_alpha", "lm_beta")


class RivaSpeechRecognitionServicer(riva_asr_pb2_grpc.RivaSpeechRecognitionServicer):
    """Riva's ASR service over an asr.v1 servicer (the same engine, limits and errors)."""

    def __init__(self, servicer: SpeechRecognitionServicer) -> None:
        self.asr = servicer

    async def Recognize(self, request: riva_asr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
                        ) -> riva_asr_pb2.RecognizeResponse:
        try:
            config = to_asr_config(request.config)
        except RequestError as exc:  # counted and reported like asr.v1's own refusals
            self.asr.metrics.count_error(exc.code)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, public_message(exc))
        response = await self.asr.Recognize(asr_pb2.RecognizeRequest(
            config=config, audio=_pcm(request.audio, request.config.encoding), request_id=request.id.value), context)
        return riva_asr_pb2.RecognizeResponse(
            results=[riva_asr_pb2.SpeechRecognitionResult(alternatives=_alternatives(r.alternatives),
                                                          channel_tag=r.channel_tag, audio_processed=r.audio_processed)
                     for r in response.results], id=request.id)

    async def StreamingRecognize(self, request_iterator: AsyncIterator[riva_asr_pb2.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[riva_asr_pb2.StreamingRecognizeResponse]:
        request_id = riva_asr_pb2.StreamingRecognizeRequest().id

        async def translated() -> AsyncIterator[asr_pb2.StreamingRecognizeRequest]:
            nonlocal request_id
            encoding = riva_audio_pb2.ENCODING_UNSPECIFIED
            async for message in request_iterator:
                if message.WhichOneof("streaming_request") == "streaming_config":
                    request_id, encoding = message.id, message.streaming_config.config.encoding
                    yield asr_pb2.StreamingRecognizeRequest(streaming_config=to_asr_streaming_config(
                        message.streaming_config))
                else:
                    yield asr_pb2.StreamingRecognizeRequest(audio_content=_pcm(message.audio_content, encoding))

        # A translation error surfaces inside asr.v1's stream, which reports it as INVALID_ARGUMENT.
        async for response in self.asr.StreamingRecognize(translated(), context):
            results = [riva_asr_pb2.StreamingRecognitionResult(
                alternatives=_alternatives(r.alternatives), is_final=r.is_final, stability=r.stability,
                channel_tag=r.channel_tag or 1, audio_processed=r.audio_processed) for r in response.results]
            _space_interim_pieces(results)
            yield riva_asr_pb2.StreamingRecognizeResponse(results=results, id=request_id)

    async def GetRivaSpeechRecognitionConfig(self, request: riva_asr_pb2.RivaSpeechRecognitionConfigRequest,
                                             context: grpc.aio.ServicerContext
                                             ) -> riva_asr_pb2.RivaSpeechRecognitionConfigResponse:
        listing = await self.asr.ListModels(asr_pb2.ListModelsRequest(), context)
        response = riva_asr_pb2.RivaSpeechRecognitionConfigResponse()
        for model in listing.models:
            spec = f"{model.name}@{model.version}"
            if request.model_name and request.model_name not in (model.name, spec):
                continue
            # Riva lists a pipeline per mode, and its sample apps keep the "offline" or the "online" ones;
            # every version of ours serves both under one name.
            for kind in ("offline", "online"):
                entry = response.model_config.add()
                entry.model_name = spec
                entry.parameters.update({"language_code": "en-US", "sample_rate": str(model.sample_rate_hertz),
                                         "type": kind, "default": str(model.is_default).lower(),
                                         **{k: v for k, v in model.parameters.items()
                                            if k in ("card", "frame_duration_s")}})
        return response


def to_asr_config(config: riva_asr_pb2.RecognitionConfig) -> asr_pb2.RecognitionConfig:
    """The asr.v1 RecognitionConfig a Riva one asks for (module docstring); RequestError for what we cannot do."""
    if config.encoding not in _ENCODINGS:
        name = riva_audio_pb2.AudioEncoding.Name(config.encoding) if config.encoding in \
            riva_audio_pb2.AudioEncoding.values() else str(config.encoding)
        raise RequestError(f"encoding {name} is not supported: send LINEAR_PCM, FLAC, MULAW, ALAW, OGGOPUS, or an "
                           "audio file with the encoding unset")
    if config.language_code.lower() not in _ENGLISH:
        raise RequestError(f"language_code {config.language_code!r} is not supported: the models transcribe English")
    if config.enable_automatic_punctuation:
        raise RequestError("enable_automatic_punctuation is not supported: transcripts have no punctuation")
    if config.diarization_config.enable_speaker_diarization:
        raise RequestError("speaker diarization is not supported")
    if config.enable_separate_recognition_per_channel:
        raise RequestError("enable_separate_recognition_per_channel is not supported: channels are mixed to mono")
    custom = dict(config.custom_configuration)
    unknown = sorted(set(custom) - set(_CUSTOM_KEYS))
    if unknown:
        raise RequestError(f"custom_configuration keys {unknown} are not known; use {', '.join(_CUSTOM_KEYS)}")
    decoder = asr_pb2.DecoderConfig(decoder=custom.get("decoder", ""), lm=custom.get("lm", ""),
                                    beam_width=_number(custom, "beam_width", int) or 0)
    for key in ("lm_alpha", "lm_beta"):
        if key in custom:
            setattr(decoder, key, _number(custom, key, float))
    return asr_pb2.RecognitionConfig(
        encoding=_ENCODINGS[config.encoding], sample_rate_hertz=config.sample_rate_hertz,
        audio_channel_count=config.audio_channel_count, model=config.model,
        enable_word_time_offsets=config.enable_word_time_offsets, max_alternatives=config.max_alternatives,
        speech_contexts=[asr_pb2.SpeechContext(phrases=list(c.phrases), boost=c.boost) for c in config.speech_contexts],
        decoder_config=decoder)


def _pcm(audio: bytes, encoding: int) -> bytes:
    """Riva's audio bytes as asr.v1 takes them: G.711 as 16-bit PCM, anything else as it is."""
    return g711_to_pcm16(audio, _G711[encoding]) if encoding in _G711 else audio


def to_asr_streaming_config(config: riva_asr_pb2.StreamingRecognitionConfig) -> asr_pb2.StreamingRecognitionConfig:
    # Encoding unset or OGGOPUS: raw PCM at the stated rate, or a WAV, FLAC, Ogg or WebM file's bytes.
    inner = to_asr_config(config.config)
    streaming = asr_pb2.StreamingRecognitionConfig(config=inner, interim_results=config.interim_results)
    stop_history = config.config.endpointing_config.stop_history
    if stop_history > 0:
        streaming.endpointing.silence_ms = stop_history
    return streaming


def _space_interim_pieces(results: list[riva_asr_pb2.StreamingRecognitionResult]) -> None:
    """Riva's clients concatenate a response's interim pieces (the stable words, then the rest) as they are, so
    each piece but the last ends with a space."""
    pieces = [r.alternatives[0] for r in results if not r.is_final and r.alternatives and r.alternatives[0].transcript]
    for piece in pieces[:-1]:
        if not piece.transcript.endswith(" "):
            piece.transcript += " "


def _number(custom: dict[str, str], key: str, kind: type) -> float | int | None:
    if key not in custom:
        return None
    try:
        return kind(custom[key])
    except ValueError:
        raise RequestError(f"custom_configuration {key} must be {'an integer' if kind is int else 'a number'}, "
                           f"got {custom[key]!r}") from None


def _alternatives(alternatives) -> list[riva_asr_pb2.SpeechRecognitionAlternative]:
    return [riva_asr_pb2.SpeechRecognitionAlternative(
        transcript=a.transcript, confidence=a.confidence,
        words=[riva_asr_pb2.WordInfo(word=w.word, confidence=w.confidence,
                                     start_time=round(w.start_time.ToNanoseconds() / 1e6),
                                     end_time=round(w.end_time.ToNanoseconds() / 1e6)) for w in a.words])
        for a in alternatives]
