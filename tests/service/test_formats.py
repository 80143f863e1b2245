"""The formats phones and browsers record, on every transport and the CLI, with the starter model: WebM/Opus, M4A and
MP4 (AAC), raw AAC and MP3, at 48 kHz stereo, and a 192 kHz WAV, give the 48 kHz WAV's words. Encoded here with PyAV's
FFmpeg."""

from __future__ import annotations

import io

import grpc
import pytest
import soundfile as sf

from model.audio import decode_audio
from service.asr_pb import asr_pb2, asr_pb2_grpc
from tests.cli.helpers import asr_in_process
from tests.model.test_audio_container import FORMATS, encode
from tests.service.conftest import make_config, running_app
from tests.service.test_grpc_support import AN4_REGISTRY, an4_test_set, free_port, run, serving

pytestmark = pytest.mark.skipif(not (AN4_REGISTRY / "an4-quartznet" / "6").is_dir(),
                                reason="needs the starter model (scripts/setup.sh seeds ./registry)")
MODEL = "an4-quartznet@6"  # one network: quick, and it hears AN4's words


@pytest.fixture(scope="module")
def recordings() -> dict[str, bytes]:
    """One AN4 test clip as a 48 kHz stereo WAV, and in each format."""
    samples = decode_audio(an4_test_set(limit=1)[0][0], 48_000).samples
    wav = io.BytesIO()
    sf.write(wav, samples[:, None].repeat(2, axis=1), 48_000, format="WAV", subtype="PCM_16")
    high = io.BytesIO()  # a high-resolution recorder's 192 kHz, resampled like any other rate
    sf.write(high, decode_audio(an4_test_set(limit=1)[0][0], 192_000).samples, 192_000, format="WAV", subtype="PCM_24")
    return {"c.wav": wav.getvalue(), "c192k.wav": high.getvalue(),
            **{name: encode(muxer, encoder, samples) for muxer, encoder, name in FORMATS}}


def test_rest_and_openai_hear_each_format_as_the_wav(recordings):
    async def main() -> dict:
        texts = {}
        async with running_app(make_config(AN4_REGISTRY, default_model=MODEL)) as (client, _):
            for name, data in recordings.items():
                rest = await client.post("/transcribe", files={"file": (name, data)})
                openai = await client.post("/v1/audio/transcriptions", files={"file": (name, data)},
                                           data={"model": "whisper-1"})
                assert rest.status_code == openai.status_code == 200, (name, rest.text, openai.text)
                texts[name] = (rest.json()["text"], openai.json()["text"])
        return texts

    texts = run(main())
    wav_text = texts["c.wav"][0]
    assert wav_text  # the starter hears words in this clip
    assert {name: pair for name, pair in texts.items()} == {name: (wav_text, wav_text) for name in texts}


def test_grpc_recognize_and_the_cli_hear_each_format_as_the_wav(recordings, tmp_path):
    async def main() -> dict:
        texts = {}
        async with serving(make_config(AN4_REGISTRY, default_model=MODEL, grpc_port=free_port())) as (_, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
                for name, data in recordings.items():
                    response = await stub.Recognize(asr_pb2.RecognizeRequest(audio=data))
                    texts[name] = response.results[0].alternatives[0].transcript
        return texts

    texts = run(main())
    assert set(texts.values()) == {texts["c.wav"]}, texts
    for name, data in recordings.items():
        (tmp_path / name).write_bytes(data)
        cli = asr_in_process("--registry", AN4_REGISTRY, "transcribe", tmp_path / name, "--model", MODEL)
        assert cli.returncode == 0 and cli.stdout.strip().endswith(texts["c.wav"]), (name, cli.stdout, cli.stderr)


def test_a_container_longer_than_the_limit_is_413_without_decoding_all_of_it(recordings):
    async def main():
        async with running_app(make_config(AN4_REGISTRY, default_model=MODEL, max_audio_duration_s=1.0)) as (client, _):
            return await client.post("/transcribe", files={"file": ("c.webm", recordings["c.webm"])})

    response = run(main())
    assert response.status_code == 413 and "limit is 1 s" in response.json()["error"]["message"], response.text


@pytest.mark.parametrize("name", ["c.webm", "c.mp3"])
def test_a_recording_streamed_over_grpc_is_heard_as_the_wav(recordings, name):
    """WebM/Opus (Chrome's MediaRecorder) and MP3 streamed in 4 KiB messages, as a browser uploads while it records:
    the finals are the WAV's words (tests/model/test_container_stream.py shows the decoding keeps pace)."""
    data = recordings[name]
    assert data[:3] == b"ID3" or name != "c.mp3"  # what makes an MP3 stream recognisable

    async def main() -> list[str]:
        finals = []
        async with serving(make_config(AN4_REGISTRY, default_model=MODEL, grpc_port=free_port())) as (_, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)

                async def messages():
                    yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                        interim_results=True))
                    for offset in range(0, len(data), 4096):
                        yield asr_pb2.StreamingRecognizeRequest(audio_content=data[offset:offset + 4096])

                async for response in stub.StreamingRecognize(messages()):
                    finals += [r.alternatives[0].transcript for r in response.results if r.is_final]
        return finals

    assert " ".join(f for f in run(main()) if f) == _wav_text(recordings)


def _wav_text(recordings) -> str:
    async def main() -> str:
        async with serving(make_config(AN4_REGISTRY, default_model=MODEL, grpc_port=free_port())) as (_, target):
            async with grpc.aio.insecure_channel(target) as channel:
                response = await asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(
                    asr_pb2.RecognizeRequest(audio=recordings["c.wav"]))
        return response.results[0].alternatives[0].transcript

    return run(main())


def test_an_mp4_stream_is_refused_with_a_reason(recordings):
    async def main():
        async with serving(make_config(AN4_REGISTRY, default_model=MODEL, grpc_port=free_port())) as (_, target):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = asr_pb2_grpc.SpeechRecognitionStub(channel)

                async def messages():
                    yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig())
                    yield asr_pb2.StreamingRecognizeRequest(audio_content=recordings["c.m4a"][:4096])

                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.StreamingRecognize(messages()):
                        pass
                return err.value

    error = run(main())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot be streamed" in error.details()
