"""gRPC unary API against an in-process Engine: results match offline, health, reflection, errors."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from model.audio import decode_audio
from service.asr_pb import asr_pb2, asr_pb2_grpc
from service.domain import TranscriptionRequest
from tests.service.conftest import slow_worker
from tests.service.test_grpc_support import AN4_TEST_MANIFEST, an4_test_set, run, service_config, serving

pytestmark = pytest.mark.skipif(not AN4_TEST_MANIFEST.exists(), reason="shared AN4 data not found")


def _call(tiny_registry, body, **config):
    """Runs ``body(engine, stub, channel)`` against a fresh server."""
    async def main():
        async with serving(service_config(tiny_registry, **config)) as (engine, target):
            async with grpc.aio.insecure_channel(target) as channel:
                return await body(engine, asr_pb2_grpc.SpeechRecognitionStub(channel), channel)
    return run(main())


def test_recognize_matches_offline_for_container_and_pcm(tiny_registry):
    clips = an4_test_set(limit=3)

    async def body(engine, stub, _):
        for path, _text in clips:
            audio = decode_audio(path, 16_000).samples
            offline = await engine.transcribe(TranscriptionRequest(audio))
            flac = await stub.Recognize(asr_pb2.RecognizeRequest(
                config=asr_pb2.RecognitionConfig(enable_word_time_offsets=True), audio=path.read_bytes(),
                request_id="r1"))
            pcm = (audio * 32768).round().clip(-32768, 32767).astype("<i2").tobytes()
            raw = await stub.Recognize(asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(
                encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000), audio=pcm))
            best = flac.results[0].alternatives[0]
            assert best.transcript == offline.text
            assert [w.word for w in best.words] == [w.word for w in offline.words]
            if offline.words:
                assert best.words[0].start_time.ToNanoseconds() == round(offline.words[0].start_s * 1e9)
            assert flac.model.name == "tiny" and flac.model.version == 1 and flac.request_id == "r1"
            assert flac.timings.precision == engine.precision and flac.timings.total_s > 0
            assert raw.results[0].alternatives[0].transcript == offline.text
            assert not raw.results[0].alternatives[0].words  # word offsets were not asked for
    _call(tiny_registry, body)


def test_health_reflection_and_list_models(tiny_registry):
    async def body(engine, stub, channel):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "asr.v1.SpeechRecognition"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [r async for r in reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"asr.v1.SpeechRecognition", "grpc.health.v1.Health"} <= names
        listing = await stub.ListModels(asr_pb2.ListModelsRequest())
        assert listing.default_model == "tiny"
        [info] = listing.models
        assert (info.name, info.version, info.sample_rate_hertz, info.is_default, info.loaded) == ("tiny", 1, 16_000,
                                                                                                  True, True)
        assert json.loads(info.parameters["card"])["vocabulary"]["kind"] == "characters"  # the model card
        assert not (await stub.ListModels(asr_pb2.ListModelsRequest(name="other"))).models
        engine.begin_drain()  # what service/server.py does first on SIGTERM
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # A call the gRPC server still takes is served: it stops taking calls itself (GOAWAY) right after, and an
        # UNAVAILABLE from inside a call could not be retried elsewhere by a balancer (its request is consumed).
        response = await stub.Recognize(asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000),
            audio=b"\0\0" * 16_000))
        assert response.model.version == 1
    _call(tiny_registry, body)


@pytest.mark.parametrize("request_kwargs, code, fragment", [
    ({"audio": b"not audio at all"}, grpc.StatusCode.INVALID_ARGUMENT, "not a readable audio file"),
    ({"audio": b""}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ({"audio": b"\0\0" * 1600, "config": {"encoding": asr_pb2.LINEAR_PCM}}, grpc.StatusCode.INVALID_ARGUMENT,
     "sample_rate_hertz is required"),
    ({"audio": b"\0" * 3, "config": {"encoding": asr_pb2.LINEAR_PCM, "sample_rate_hertz": 16_000}},
     grpc.StatusCode.INVALID_ARGUMENT, "whole 16-bit frames"),
    ({"audio": b"\0\0" * 1600, "config": {"encoding": asr_pb2.LINEAR_PCM, "sample_rate_hertz": 16_000,
                                          "model": "nosuchmodel"}}, grpc.StatusCode.NOT_FOUND, "nosuchmodel"),
    ({"audio": b"\0\0" * 1600, "config": {"encoding": asr_pb2.LINEAR_PCM, "sample_rate_hertz": 16_000,
                                          "decoder_config": {"decoder": "magic"}}},
     grpc.StatusCode.INVALID_ARGUMENT, "decoder must be one of"),
])
def test_recognize_errors(tiny_registry, request_kwargs, code, fragment):
    config = asr_pb2.RecognitionConfig(**request_kwargs.pop("config", {}))

    async def body(_engine, stub, _channel):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Recognize(asr_pb2.RecognizeRequest(config=config, **request_kwargs))
        return error.value

    error = _call(tiny_registry, body)
    assert error.code() == code
    assert fragment in error.details()


def test_queue_full_is_resource_exhausted(tiny_registry, monkeypatch):
    slow_worker(monkeypatch, 0.3)

    async def body(engine, stub, _channel):
        pcm = np.zeros(16_000, dtype="<i2").tobytes()
        request = asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(
            encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000), audio=pcm)
        outcomes = await asyncio.gather(*(stub.Recognize(request) for _ in range(6)), return_exceptions=True)
        return [o.code() if isinstance(o, grpc.aio.AioRpcError) else grpc.StatusCode.OK for o in outcomes]

    codes = _call(tiny_registry, body, max_queue_size=1, max_batch_size=1)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
