"""Client mistakes are client errors on every API, the same limits everywhere, API keys, and pinned versions."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import soundfile as sf

import service.http_api as http_api
from lm.store import publish_lm
from model.registry import Registry
from model.vocabulary import Vocabulary
from service.asr_pb import asr_pb2, asr_pb2_grpc
from tests.service.conftest import make_config, running_app
from tests.service.test_grpc_support import free_port, run, serving

KEY = "k3y-for-tests"


def _wav(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(int(seconds * rate), dtype=np.float32) / 9), rate, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def lm_registry(registry_root, tmp_path_factory):
    """The tiny models' registry with a word LM beside them (a registry version of another kind)."""
    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text("yes no\nyes yes no\n")
    publish_lm(Registry(registry_root), "words-lm", corpus, order=2, labels=Vocabulary().labels)
    return registry_root


# ---- a language model where an acoustic model belongs ----


@pytest.mark.anyio
async def test_an_lm_as_the_model_is_a_client_error_without_server_paths(lm_registry):
    async with running_app(make_config(lm_registry)) as (client, _):
        for route, data in (("/transcribe", {"model": "words-lm"}), ("/v1/audio/transcriptions", {"model": "words-lm"})):
            r = await client.post(route, files={"file": ("a.wav", _wav())}, data=data)
            assert r.status_code == 400, r.text
            message = r.json()["error"]["message"]
            assert "words-lm@1 is a language model, not an acoustic model" in message
            assert str(lm_registry) not in r.text and "/" not in message


def test_grpc_reports_an_lm_as_the_model_as_failed_precondition(lm_registry):
    async def main():
        config = make_config(lm_registry, grpc_port=free_port(), http_host="127.0.0.1")
        async with serving(config) as (_, target), grpc.aio.insecure_channel(target) as channel:
            stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Recognize(asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(model="words-lm"),
                                                              audio=_wav()))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "language model" in err.value.details() and str(lm_registry) not in err.value.details()
    run(main())


# ---- one set of limits ----


def _grpc_error(registry_root, request=None, stream_config=None) -> tuple[grpc.StatusCode, str]:
    async def main():
        config = make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1")
        async with serving(config) as (_, target), grpc.aio.insecure_channel(target) as channel:
            stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
            try:
                if request is not None:
                    await stub.Recognize(request)
                else:
                    async def messages():
                        yield asr_pb2.StreamingRecognizeRequest(streaming_config=stream_config)
                        yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\0\0" * 1600)
                    async for _ in stub.StreamingRecognize(messages()):
                        pass
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
            raise AssertionError("the call succeeded")
    return run(main())


def test_an_undefined_encoding_is_invalid(registry_root):
    code, message = _grpc_error(registry_root, asr_pb2.RecognizeRequest(
        config=asr_pb2.RecognitionConfig(encoding=99, sample_rate_hertz=16_000), audio=b"\0\0" * 100))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "encoding 99 is not an AudioEncoding" in message


def test_negative_alternatives_are_refused_alike_on_rest_and_grpc(registry_root):
    async def rest():
        async with running_app(make_config(registry_root)) as (client, _):
            return await client.post("/transcribe?alternatives=-5", files={"file": ("a.wav", _wav())})
    r = run(rest())
    assert r.status_code == 400
    code, message = _grpc_error(registry_root, asr_pb2.RecognizeRequest(
        config=asr_pb2.RecognitionConfig(max_alternatives=-5), audio=_wav()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == r.json()["error"]["message"] == "alternatives must be between 1 and 10, got -5"


@pytest.mark.parametrize("channels", [2**31 - 1, 9, -1])
def test_channel_counts_are_checked_alike_by_recognize_and_streaming(registry_root, channels):
    linear = dict(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000, audio_channel_count=channels)
    unary = _grpc_error(registry_root, asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(**linear),
                                                                audio=b"\0\0" * 1600))
    streaming = _grpc_error(registry_root, stream_config=asr_pb2.StreamingRecognitionConfig(
        config=asr_pb2.RecognitionConfig(**linear)))
    assert unary == streaming
    assert unary[0] == grpc.StatusCode.INVALID_ARGUMENT and "audio_channel_count must be between 0 and 8" in unary[1]


# ---- the version is pinned when the request resolves it ----


@pytest.mark.anyio
async def test_a_swap_during_a_request_does_not_change_its_version(registry_root, monkeypatch):
    original = http_api.open_audio
    swapped = []

    async def open_then_swap(engine, upload, sample_rate):
        audio = await original(engine, upload, sample_rate)
        await engine.activate("tiny", 2)  # between resolving the model and running it
        swapped.append(engine.slot.active.version)
        return audio

    monkeypatch.setattr(http_api, "open_audio", open_then_swap)
    async with running_app(make_config(registry_root)) as (client, engine):
        r = await client.post("/transcribe", files={"file": ("a.wav", _wav())})
        assert r.status_code == 200 and swapped == [2]
        assert r.headers["x-asr-model"] == "tiny@1" and r.json()["model"]["version"] == 1
        r = await client.post("/v1/audio/transcriptions", files={"file": ("a.wav", _wav())})
        assert r.json()["model"] == "tiny@2"  # resolved to the new default, and pinned to it


# ---- API keys ----


@pytest.mark.anyio
async def test_api_keys_guard_rest_and_openai(registry_root):
    async with running_app(make_config(registry_root, api_keys=["other", KEY])) as (client, _):
        for route in ("/transcribe", "/v1/audio/transcriptions"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = await client.post(route, files={"file": ("a.wav", _wav())}, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (route, headers)
            r = await client.post(route, files={"file": ("a.wav", _wav())}, headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200, r.text
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer other"})).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200  # probes stay open
        assert (await client.get("/metrics")).status_code == 200


def test_api_keys_guard_grpc_unary_and_streaming(registry_root):
    async def main():
        config = make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1", api_keys=[KEY])
        async with serving(config) as (_, target), grpc.aio.insecure_channel(target) as channel:
            stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
            request = asr_pb2.RecognizeRequest(audio=_wav())
            for metadata in ((), (("authorization", "Bearer nope"),)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Recognize(request, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", f"Bearer {KEY}"),)
            assert (await stub.Recognize(request, metadata=good)).model.name == "tiny"

            async def messages():
                yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                    config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000)))
                yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\0\0" * 16_000)

            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.StreamingRecognize(messages()):
                    pass
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            responses = [r async for r in stub.StreamingRecognize(messages(), metadata=good)]
            assert responses and responses[-1].model.name == "tiny"
    run(main())


def test_api_keys_must_not_be_empty(registry_root):
    with pytest.raises(ValueError, match="empty keys"):
        make_config(registry_root, api_keys=[""])
