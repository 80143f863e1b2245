"""An imported NeMo Citrinet (SentencePiece pieces, SE, 80 ms frames) served by REST, gRPC, Riva and streaming."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from interop.nemo import import_nemo
from model.audio import decode_audio
from model.checkpoint import publish_model
from model.registry import Registry
from service.asr_pb import asr_pb2, asr_pb2_grpc
from service.domain import TranscriptionRequest
from tests.service.conftest import make_config, running_app
from tests.service.test_grpc_support import SPEECH_ROOT, free_port, run, service_config, serving

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nemo"
MANIFEST = json.loads((FIXTURES / "citrinet_manifest.json").read_text())
CASES = MANIFEST["fixtures"]  # NeMo 3.0.0's own greedy transcripts of three clips
MODEL = "citrinet"


@pytest.fixture(scope="module")
def citrinet_registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("citrinet_registry")
    model, info = import_nemo(FIXTURES / "citrinet_small.nemo")
    publish_model(Registry(root), MODEL, model, source="imported", extra={"nemo": info})
    return root


def _clip(case) -> tuple[Path, np.ndarray]:
    path = SPEECH_ROOT / case["clip"]
    return path, decode_audio(path, 16_000).samples


def _pcm(audio: np.ndarray) -> bytes:
    return (audio * 32768).round().clip(-32768, 32767).astype("<i2").tobytes()


@pytest.mark.anyio
async def test_rest_transcribe_gives_nemos_transcripts(citrinet_registry):
    async with running_app(make_config(citrinet_registry, default_model=f"{MODEL}@1")) as (client, _):
        for case in CASES:
            path, _ = _clip(case)
            response = await client.post("/transcribe", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["text"] == case["greedy_transcript"]
            assert [w["word"] for w in body["words"]] == body["text"].split()
        models = (await client.get("/v1/models")).json()["data"]
        card = next(m for m in models if m["id"].startswith(MODEL))["card"]
        assert card["vocabulary"]["kind"] == "word pieces" and "SentencePiece" in card["vocabulary"]["description"]


def test_grpc_recognize_and_streaming_give_nemos_transcripts(citrinet_registry):
    async def main():
        config = service_config(citrinet_registry, model=MODEL, precision="fp32")
        async with serving(config) as (engine, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
                for case in CASES:
                    path, audio = _clip(case)
                    reply = await stub.Recognize(asr_pb2.RecognizeRequest(
                        config=asr_pb2.RecognitionConfig(enable_word_time_offsets=True), audio=path.read_bytes()))
                    best = reply.results[0].alternatives[0]
                    assert best.transcript == case["greedy_transcript"]
                    assert [w.word for w in best.words] == best.transcript.split()
                    assert reply.model.name == MODEL
                    # Streaming: finals put together are the offline transcript.
                    offline = await engine.transcribe(TranscriptionRequest(audio))
                    assert offline.text == case["greedy_transcript"]
                    responses = [r async for r in stub.StreamingRecognize(_stream_requests(audio))]
                    finals = [r for resp in responses for r in resp.results if r.is_final]
                    assert " ".join(f.alternatives[0].transcript for f in finals
                                    if f.alternatives[0].transcript) == offline.text
                    assert finals[-1].audio_processed == pytest.approx(len(audio) / 16_000, abs=1e-3)
    run(main())


async def _stream_requests(audio: np.ndarray, chunk_bytes: int = 3200):
    yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
        config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000,
                                         enable_word_time_offsets=True), interim_results=True))
    pcm = _pcm(audio)
    for offset in range(0, len(pcm), chunk_bytes):
        yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset: offset + chunk_bytes])


def test_riva_recognize_gives_nemos_transcripts(citrinet_registry):
    riva_client = pytest.importorskip("riva.client")
    from tests.service.test_riva_api import RunningServer

    server = RunningServer(make_config(citrinet_registry, default_model=f"{MODEL}@1", grpc_port=free_port(),
                                       http_host="127.0.0.1"))
    try:
        asr = riva_client.ASRService(riva_client.Auth(uri=server.target))
        for case in CASES:
            path, audio = _clip(case)
            response = asr.offline_recognize(_pcm(audio), riva_client.RecognitionConfig(
                language_code="en-US", max_alternatives=1, encoding=riva_client.AudioEncoding.LINEAR_PCM,
                sample_rate_hertz=16_000, enable_word_time_offsets=True))
            best = response.results[0].alternatives[0]
            # int16 PCM rounds the samples, so compare with the server's own transcript of those samples.
            assert best.transcript == server.offline(np.frombuffer(_pcm(audio), "<i2").astype(np.float32) / 32768)
            assert [w.word for w in best.words] == best.transcript.split()
            if path.suffix == ".flac":
                flac = asr.offline_recognize(path.read_bytes(), riva_client.RecognitionConfig(
                    language_code="en-US", max_alternatives=1, encoding=riva_client.AudioEncoding.FLAC))
                assert flac.results[0].alternatives[0].transcript == case["greedy_transcript"]
    finally:
        server.close()


@pytest.mark.anyio
async def test_admin_upload_of_a_citrinet_publishes_and_serves(tmp_path):
    from tests.service.conftest import tiny_model

    publish_model(Registry(tmp_path), "tiny", tiny_model(0), source="trained")
    auth = {"Authorization": "Bearer s3cret"}
    async with running_app(make_config(tmp_path, admin_token="s3cret")) as (client, _):
        files = {"file": ("citrinet.nemo", (FIXTURES / "citrinet_small.nemo").read_bytes())}
        r = await client.post("/admin/models/import", files=files, data={"name": MODEL}, headers=auth)
        assert r.status_code == 201, r.text
        path, _ = _clip(CASES[0])
        ok = await client.post(f"/transcribe?model={MODEL}", files={"file": (path.name, path.read_bytes())})
        assert ok.status_code == 200 and ok.json()["text"] == CASES[0]["greedy_transcript"]
