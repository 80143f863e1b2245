"""What every transport does at the edges: clips too short for a frame, error texts without server paths, idle
streams, streams over the memory budget, clients that push faster than real time, and refusals in metrics."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
import soundfile as sf

import service.streaming as streaming
from service.asr_pb import asr_pb2, asr_pb2_grpc
from service.domain import (DeadlineExceededError, IdleTimeoutError, PayloadTooLargeError, QueueFullError,
                            RequestError, ServiceUnavailableError, UnauthenticatedError, UnknownModelError,
                            WrongModelKindError)
from service.errors import MemoryBudgetError, public_message
from service.grpc_api import status_for
from service.http_errors import error_response
from service.model_slot import ModelLoadError
from service.realtime_ws import error_for
from tests.service.conftest import make_config, running_app
from tests.service.test_grpc_support import free_port, run, serving

RATE = 16_000


def _pcm(seconds: float) -> bytes:
    samples = 0.1 * np.sin(np.arange(int(seconds * RATE)) / 7.0)
    return (samples * 32767).astype("<i2").tobytes()


def _wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(int(seconds * RATE), dtype=np.float32) / 7), RATE, format="WAV")
    return buf.getvalue()


def _linear(**fields) -> asr_pb2.RecognitionConfig:
    return asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=RATE, **fields)


# ---- a clip shorter than one output frame (the tiny model's is 20 ms) ----


@pytest.mark.anyio
async def test_a_clip_shorter_than_a_frame_is_a_400_on_rest_and_openai(registry_root) -> None:
    async with running_app(make_config(registry_root)) as (client, _):
        for route in ("/transcribe", "/v1/audio/transcriptions"):
            r = await client.post(route, files={"file": ("short.wav", _wav(0.005))})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"] == "audio is 5.0 ms long; tiny@1 needs at least 20 ms (one output frame)"
        assert (await client.post("/transcribe", files={"file": ("ok.wav", _wav(0.02))})).status_code == 200


def test_a_clip_shorter_than_a_frame_is_invalid_on_grpc_and_riva(registry_root) -> None:
    from riva.client.proto import riva_asr_pb2, riva_asr_pb2_grpc, riva_audio_pb2

    async def main():
        config = make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1")
        async with serving(config) as (_, target), grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(
                    asr_pb2.RecognizeRequest(config=_linear(), audio=_pcm(0.005)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs at least 20 ms" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await riva_asr_pb2_grpc.RivaSpeechRecognitionStub(channel).Recognize(riva_asr_pb2.RecognizeRequest(
                    config=riva_asr_pb2.RecognitionConfig(encoding=riva_audio_pb2.LINEAR_PCM, sample_rate_hertz=RATE),
                    audio=_pcm(0.005)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs at least 20 ms" in err.value.details()

            async def messages():  # a stream of a few ms still ends with a final, as Riva's does
                yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                    config=_linear()))
                yield asr_pb2.StreamingRecognizeRequest(audio_content=_pcm(0.005))

            responses = [r async for r in asr_pb2_grpc.SpeechRecognitionStub(channel).StreamingRecognize(messages())]
            assert [(r.is_final, r.alternatives[0].transcript) for r in responses[-1].results] == [(True, "")]
    run(main())


# ---- one sanitiser: no server path in any error text ----


ERRORS = [RequestError, UnknownModelError, WrongModelKindError, UnauthenticatedError, QueueFullError,
          MemoryBudgetError, DeadlineExceededError, IdleTimeoutError, PayloadTooLargeError, ServiceUnavailableError,
          ModelLoadError]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_no_error_kind_carries_a_server_path_on_any_wire(error) -> None:
    import json

    exc = error("no model named 'x' in registry /srv/asr/registry (available: a, b); see /tmp/x.log\ntraceback")
    clean = "no model named 'x' in registry <path> (available: a, b); see <path>"
    assert public_message(exc) == clean
    assert json.loads(error_response(exc).body)["error"]["message"] == clean
    assert status_for(exc)[1] == clean
    assert error_for(exc)[1]["message"] == clean


@pytest.mark.anyio
async def test_an_unknown_model_names_no_path_on_rest_or_admin(registry_root) -> None:
    config = make_config(registry_root, admin_token="t0ken")
    async with running_app(config) as (client, _):
        r = await client.post("/transcribe", files={"file": ("a.wav", _wav(1.0))}, data={"model": "nope"})
        assert r.status_code == 404 and "no model named 'nope'" in r.text and str(registry_root) not in r.text
        r = await client.post("/admin/models/activate", json={"name": "nope"}, headers={"Authorization": "Bearer t0ken"})
        assert r.status_code == 404 and str(registry_root) not in r.text


# ---- streams: idle, over the budget, pushing faster than real time ----


def _stream(config, requests, *, metadata=()) -> tuple[list, grpc.aio.AioRpcError | None, object]:
    async def main():
        async with serving(config) as (engine, target), grpc.aio.insecure_channel(target) as channel:
            stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
            responses = []
            try:
                async for response in stub.StreamingRecognize(requests(), metadata=metadata):
                    responses.append(response)
            except grpc.aio.AioRpcError as exc:
                return responses, exc, engine
            return responses, None, engine
    return run(main())


def _first(**fields):
    return asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
        config=_linear(), **fields))


def test_an_idle_stream_is_closed_with_out_of_range(registry_root) -> None:
    stop = asyncio.Event()

    async def requests():
        yield _first()
        yield asr_pb2.StreamingRecognizeRequest(audio_content=_pcm(0.5))
        await stop.wait()  # then nothing, for longer than the idle timeout

    config = make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1", stream_idle_timeout_s=0.5)
    _, error, engine = _stream(config, requests)
    stop.set()
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error.details().startswith("no audio for 0.5 s; the stream was closed")
    assert 'asr_errors_total{reason="idle_timeout"} 1.0' in engine.metrics.render().decode()


def test_a_stream_past_the_memory_budget_is_resource_exhausted(registry_root) -> None:
    async def requests():
        yield _first()
        for _ in range(10):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=_pcm(1.0))

    config = make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1", max_buffered_audio_s=3.0)
    _, error, engine = _stream(config, requests)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the limit is 3 s" in error.details()
    assert 'asr_errors_total{reason="memory_budget"} 1.0' in engine.metrics.render().decode()
    assert engine.budget.held_s == 0.0  # released when the stream ended


def test_a_client_pushing_a_minute_at_once_is_read_only_seconds_ahead_of_the_model(registry_root, monkeypatch) -> None:
    backlogs = []
    step = streaming.StreamingSession.step

    async def measured(self):
        backlogs.append(self.backlog_s)
        return await step(self)

    monkeypatch.setattr(streaming.StreamingSession, "step", measured)

    async def requests():
        yield _first(interim_results=True)
        for _ in range(120):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=_pcm(0.5))

    config = make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1")
    responses, error, _ = _stream(config, requests)
    assert error is None and responses[-1].results[-1].is_final
    # The reader stops once 5 s wait (MAX_STREAM_BACKLOG_S), having just added one 0.5 s message.
    assert max(backlogs) <= streaming.MAX_STREAM_BACKLOG_S + 0.5
    assert len(backlogs) >= 60 / (streaming.MAX_STREAM_BACKLOG_S + 0.5)


def test_a_refused_api_key_is_counted_on_grpc(registry_root) -> None:
    async def requests():
        yield _first()
        yield asr_pb2.StreamingRecognizeRequest(audio_content=_pcm(0.5))

    config = make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1", api_keys=["right"])
    _, error, engine = _stream(config, requests, metadata=(("authorization", "Bearer wrong"),))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    metrics = engine.metrics.render().decode()
    assert 'asr_requests_total{api="grpc_stream",status="UNAUTHENTICATED"} 1.0' in metrics
    assert 'asr_errors_total{reason="invalid_api_key"} 1.0' in metrics
