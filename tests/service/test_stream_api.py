"""gRPC StreamingRecognize: finals equal offline Recognize, interims arrive, message order is enforced."""

from __future__ import annotations

import time

import grpc
import pytest

from model.audio import decode_audio
from service.asr_pb import asr_pb2, asr_pb2_grpc
from service.domain import TranscriptionRequest
from tests.service.test_grpc_support import AN4_TEST_MANIFEST, an4_test_set, run, service_config, serving
from tests.tiny_model import publish_tiny_model

pytestmark = pytest.mark.skipif(not AN4_TEST_MANIFEST.exists(), reason="shared AN4 data not found")


def _config(rate=16_000, interim=True, **config):
    config = {"encoding": asr_pb2.LINEAR_PCM, "enable_word_time_offsets": True} | config
    return asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
        config=asr_pb2.RecognitionConfig(sample_rate_hertz=rate, **config),
        interim_results=interim))


def _audio_messages(pcm: bytes, chunk_bytes=3200, pace_s=0.0):
    async def gen():
        for offset in range(0, len(pcm), chunk_bytes):
            if pace_s:
                await __import__("asyncio").sleep(pace_s)
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset: offset + chunk_bytes])
    return gen()


async def _with_first(first, rest):
    for message in first:
        yield message
    async for message in rest:
        yield message


def _tone():
    import numpy as np

    return (0.1 * np.sin(np.arange(8_000) / 5)).astype("float32")


def _pcm(samples) -> bytes:
    return (samples * 32768).round().clip(-32768, 32767).astype("<i2").tobytes()


def _stream(tiny_registry, requests_factory):
    async def main():
        async with serving(service_config(tiny_registry)) as (engine, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
                return engine, [r async for r in stub.StreamingRecognize(requests_factory())]
    return run(main())


def test_stream_finals_equal_offline(tiny_registry):
    clips = [decode_audio(path, 16_000).samples for path, _ in an4_test_set(limit=4)]

    async def main():
        async with serving(service_config(tiny_registry)) as (engine, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
                for index, audio in enumerate(clips):
                    offline = await engine.transcribe(TranscriptionRequest(audio))
                    # The first clip at real-time pace (100 ms per message), the rest as fast as possible.
                    pace = 0.1 if index == 0 else 0.0
                    started = time.monotonic()
                    responses = []
                    async for response in stub.StreamingRecognize(
                            _with_first([_config()], _audio_messages(_pcm(audio), pace_s=pace))):
                        responses.append((time.monotonic() - started, response))
                    results = [r for _, resp in responses for r in resp.results]
                    finals = [r for r in results if r.is_final]
                    assert " ".join(f.alternatives[0].transcript for f in finals if f.alternatives[0].transcript
                                    ) == offline.text
                    assert finals[-1].audio_processed == pytest.approx(len(audio) / 16_000, abs=1e-3)
                    if offline.words:
                        assert [w.word for f in finals for w in f.alternatives[0].words] == [
                            w.word for w in offline.words]
                    if pace:
                        interims = [(t, r) for t, resp in responses for r in resp.results if not r.is_final]
                        assert interims, "no interim results at real-time pace"
                        assert interims[0][0] < 1.0
                        assert all(0 < r.stability < 1 for _, r in interims)
                    assert responses[0][1].model.name == "tiny"
    run(main())


@pytest.mark.parametrize("rate", [8_000, 96_000, 192_000])
def test_stream_resamples_pcm_at_any_supported_rate(tiny_registry, rate):
    audio = decode_audio(an4_test_set(limit=1)[0][0], rate).samples
    _, responses = _stream(tiny_registry, lambda: _with_first([_config(rate=rate, interim=False)],
                                                             _audio_messages(_pcm(audio), chunk_bytes=1601)))
    results = [r for resp in responses for r in resp.results]
    assert results and all(r.is_final for r in results)
    assert results[-1].audio_processed == pytest.approx(len(audio) / rate, abs=1e-3)


def _wav_bytes(samples, rate: int, subtype: str = "PCM_16", channels: int = 1, metadata: bool = False) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    data = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    with sf.SoundFile(buf, "w", rate, channels, subtype=subtype, format="WAV") as out:
        if metadata:
            out.title = "a LIST chunk before the samples"
        out.write(data)
    return buf.getvalue()


@pytest.mark.parametrize("rate, channels, metadata", [(16_000, 1, False), (8_000, 2, True)])
def test_a_wav_files_bytes_stream_with_the_format_unset_like_riva_sample_apps_send_them(tiny_registry, rate, channels,
                                                                                      metadata):
    """Header first, split over small messages, then the samples: the same finals as the samples sent as raw PCM."""
    import soundfile as sf

    audio = decode_audio(an4_test_set(limit=1)[0][0], rate).samples
    wav = _wav_bytes(audio, rate, channels=channels, metadata=metadata)
    assert (b"LIST" in wav[:200]) == metadata
    header_bytes = len(wav) - sf.info(__import__("io").BytesIO(wav)).frames * 2 * channels
    header, samples = wav[:header_bytes], wav[header_bytes:]
    unset = _config(rate=0, encoding=asr_pb2.ENCODING_UNSPECIFIED)
    _, from_wav = _stream(tiny_registry, lambda: _with_first(
        [unset, *(asr_pb2.StreamingRecognizeRequest(audio_content=header[i:i + 7]) for i in range(0, header_bytes, 7))],
        _audio_messages(samples)))
    _, from_pcm = _stream(tiny_registry, lambda: _with_first([_config(rate=rate, audio_channel_count=channels)],
                                                             _audio_messages(samples)))
    finals = [[r.alternatives[0].transcript for resp in responses for r in resp.results if r.is_final]
              for responses in (from_wav, from_pcm)]
    assert finals[0] == finals[1] and finals[0]
    last = [r for resp in from_wav for r in resp.results][-1]
    assert last.audio_processed == pytest.approx(len(audio) / rate, abs=1e-3)  # the header is not heard as audio


def test_speech_contexts_decode_a_streams_finals_as_recognize_decodes_with_them(tiny_registry):
    audio = decode_audio(an4_test_set(limit=1)[0][0], 16_000).samples
    contexts = [asr_pb2.SpeechContext(phrases=["jhv", "r"], boost=30.0)]

    async def main():
        async with serving(service_config(tiny_registry)) as (_, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
                texts = {}
                for label, speech_contexts in (("plain", []), ("boosted", contexts)):
                    config = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000,
                                                       speech_contexts=speech_contexts)
                    offline = await stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio=_pcm(audio)))
                    first = asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                        config=config, endpointing=asr_pb2.EndpointingConfig(disabled=True)))
                    streamed = [r async for r in stub.StreamingRecognize(_with_first([first],
                                                                                     _audio_messages(_pcm(audio))))]
                    finals = [r.alternatives[0].transcript for resp in streamed for r in resp.results if r.is_final]
                    texts[label] = (offline.results[0].alternatives[0].transcript, finals)
                return texts

    texts = run(main())
    for offline, finals in texts.values():
        assert finals == [offline], texts
    assert texts["boosted"][0] != texts["plain"][0]  # the boost changed the words, on both paths


@pytest.mark.parametrize("messages, fragment", [
    (lambda: [_config(speech_contexts=[asr_pb2.SpeechContext(phrases=["a"], boost=1e6)])], "hotword boost must be"),
    (lambda: [_config(rate=0, encoding=asr_pb2.ENCODING_UNSPECIFIED),
              asr_pb2.StreamingRecognizeRequest(audio_content=_wav_bytes(_tone(), 16_000, "PCM_24"))], "16-bit PCM"),
    (lambda: [_config(rate=8_000), asr_pb2.StreamingRecognizeRequest(audio_content=_wav_bytes(_tone(), 16_000))],
     "header says 16000 Hz, its config 8000 Hz"),
    (lambda: [_config(rate=0), asr_pb2.StreamingRecognizeRequest(audio_content=_wav_bytes(_tone(), 16_000)[:30])],
     "ended inside its WAV header"),
    (lambda: [_config(rate=0), asr_pb2.StreamingRecognizeRequest(audio_content=b"\0\0" * 800)],
     "sample_rate_hertz is required"),
    (lambda: [asr_pb2.StreamingRecognizeRequest(audio_content=b"\0\0" * 100)], "first message must carry"),
    (lambda: [_config(), _config()], "only be sent once"),
    (lambda: [], "got an empty stream"),
    (lambda: [_config(encoding=asr_pb2.MP3)], "LINEAR_PCM, or a WAV, FLAC, Ogg or WebM file"),
    (lambda: [_config(encoding=asr_pb2.FLAC)], "not the FLAC file its config says"),
    (lambda: [_config(rate=0)], "sample_rate_hertz is required"),
    (lambda: [_config(rate=4_000)], "between 8000 and 192000"),
    (lambda: [_config(decoder_config=asr_pb2.DecoderConfig(decoder="beam"))], "decodes greedily"),
])
def test_stream_rejects_bad_requests(tiny_registry, messages, fragment):
    async def gen():
        for message in messages():
            yield message

    with pytest.raises(grpc.aio.AioRpcError) as error:
        _stream(tiny_registry, gen)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.value.details()


def test_stream_unknown_model_is_not_found(tiny_registry):
    async def gen():
        yield _config(model="nosuchmodel@3")

    with pytest.raises(grpc.aio.AioRpcError) as error:
        _stream(tiny_registry, gen)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_ensemble_streams_and_recognizes_like_offline(tmp_path):
    from model import EnsembleRecognizer, load_model, publish_model
    from tests.tiny_model import agreeing_copy

    registry = publish_tiny_model(tmp_path, "tiny", seed=0)
    member = load_model(registry, "tiny@1")[0]
    publish_model(registry, "duo", EnsembleRecognizer.of([member, agreeing_copy(member, 1)]), source="ensemble")
    clips = [decode_audio(path, 16_000).samples for path, _ in an4_test_set(limit=2)]

    async def main():
        async with serving(service_config(tmp_path, model="duo")) as (engine, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
                for audio in clips:
                    offline = await engine.transcribe(TranscriptionRequest(audio))
                    assert offline.text and offline.model_name == "duo"
                    unary = await stub.Recognize(asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(
                        encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000), audio=_pcm(audio)))
                    assert unary.results[0].alternatives[0].transcript == offline.text
                    finals = [r for resp in [x async for x in stub.StreamingRecognize(
                        _with_first([_config()], _audio_messages(_pcm(audio))))] for r in resp.results if r.is_final]
                    assert " ".join(f.alternatives[0].transcript for f in finals
                                    if f.alternatives[0].transcript) == offline.text
    run(main())
