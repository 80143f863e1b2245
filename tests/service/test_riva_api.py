"""nvidia-riva-client, unchanged, against our gRPC port: offline and streaming recognition like `asr transcribe`."""

from __future__ import annotations

import io
import threading
import wave

import grpc
import numpy as np
import pytest

riva_client = pytest.importorskip("riva.client")

from model.audio import decode_audio  # noqa: E402
from service.domain import TranscriptionRequest  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402
from tests.service.conftest import make_config  # noqa: E402

STARTER = REPO_ROOT / "starter" / "registry"
from tests.service.test_grpc_support import an4_test_set, free_port, serving  # noqa: E402


class RunningServer:
    """An in-process Engine + gRPC server on its own event loop thread, for Riva's synchronous client."""

    def __init__(self, config) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop = None
        self.thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self.thread.start()
        assert self.ready.wait(120), "the server did not start"

    def _run(self, config) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop = asyncio.Event()
            async with serving(config) as (engine, target):
                self.engine, self.target = engine, target
                self.ready.set()
                await self.stop.wait()

        self.loop.run_until_complete(main())

    def offline(self, audio: np.ndarray, **request) -> str:
        import asyncio

        future = asyncio.run_coroutine_threadsafe(self.engine.transcribe(TranscriptionRequest(audio=audio, **request)),
                                                  self.loop)
        return future.result(60).text

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(registry_root):
    """The tiny random models: Riva's messages against ours, field by field."""
    running = RunningServer(make_config(registry_root, grpc_port=free_port(), http_host="127.0.0.1"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def starter_server():
    """The shipped starter model, whose transcripts mean something (AN4 words)."""
    if not (STARTER / "an4-quartznet" / "6").is_dir():
        pytest.skip("the starter registry is not in this checkout")
    running = RunningServer(make_config(STARTER, default_model="an4-quartznet@6", grpc_port=free_port(),
                                        http_host="127.0.0.1"))
    yield running
    running.close()


def _asr(server) -> "riva_client.ASRService":
    return riva_client.ASRService(riva_client.Auth(uri=server.target))


def _config(**fields) -> "riva_client.RecognitionConfig":
    return riva_client.RecognitionConfig(language_code="en-US", max_alternatives=1, **fields)


def _pcm_wav(audio: np.ndarray, rate: int = 16_000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes())
    return buf.getvalue()


def test_offline_recognize_gives_our_transcript_for_pcm_and_flac(starter_server):
    server = starter_server
    asr = _asr(server)
    for path, _ in an4_test_set(limit=3):
        audio = decode_audio(path, 16_000).samples
        want = server.offline(audio)
        pcm = (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()
        linear = asr.offline_recognize(pcm, _config(encoding=riva_client.AudioEncoding.LINEAR_PCM,
                                                    sample_rate_hertz=16_000, enable_word_time_offsets=True))
        flac = asr.offline_recognize(path.read_bytes(), _config(encoding=riva_client.AudioEncoding.FLAC))
        for response in (linear, flac):
            assert response.results[0].alternatives[0].transcript == want
        words = linear.results[0].alternatives[0].words
        assert [w.word for w in words] == want.split()
        assert all(isinstance(w.start_time, int) and w.start_time <= w.end_time for w in words)  # milliseconds


def test_a_boosted_phrase_changes_the_result(server):
    asr = _asr(server)
    path, _ = an4_test_set(limit=1)[0]
    audio = decode_audio(path, 16_000).samples
    plain = asr.offline_recognize(path.read_bytes(), _config()).results[0].alternatives[0].transcript
    config = _config()
    riva_client.add_word_boosting_to_config(config, ["zyxwv"], 30.0)
    boosted = asr.offline_recognize(path.read_bytes(), config).results[0].alternatives[0].transcript
    assert boosted == server.offline(audio, hotwords=(("zyxwv", 30.0),))
    assert boosted != plain


def test_streaming_gives_interims_then_the_offline_text(starter_server):
    server = starter_server
    asr = _asr(server)
    path, reference = an4_test_set(limit=1)[0]  # noqa: RUF059
    audio = decode_audio(path, 16_000).samples
    streaming_config = riva_client.StreamingRecognitionConfig(
        config=_config(encoding=riva_client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16_000,
                       enable_word_time_offsets=True), interim_results=True)
    wav = _pcm_wav(audio)
    finals, interims = [], 0
    with riva_client.AudioChunkFileIterator(_write(wav), 1600) as chunk_iterator:
        for response in asr.streaming_response_generator(audio_chunks=chunk_iterator,
                                                         streaming_config=streaming_config):
            for result in response.results:
                if result.is_final:
                    finals.append(result.alternatives[0].transcript)
                else:
                    interims += 1
                    assert 0.0 < result.stability < 1.0
    assert interims > 0
    assert " ".join(f for f in finals if f) == server.offline(audio)
    assert reference.split()[0] == finals[0].split()[0]  # a real transcript of the clip, not noise


def _write(data: bytes) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile(suffix=".wav", delete=False)
    handle.write(data)
    handle.close()
    return handle.name


def test_unsupported_options_are_invalid_arguments(server):
    asr = _asr(server)
    path, _ = an4_test_set(limit=1)[0]
    for config, fragment in ((_config(enable_automatic_punctuation=True), "punctuation"),
                             (riva_client.RecognitionConfig(language_code="de-DE"), "de-DE"),
                             (_config(encoding=99, sample_rate_hertz=8000), "encoding 99 is not supported")):
        with pytest.raises(grpc.RpcError) as err:
            asr.offline_recognize(path.read_bytes(), config)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()


def test_get_config_lists_the_models(server):
    from riva.client.proto import riva_asr_pb2

    response = _asr(server).stub.GetRivaSpeechRecognitionConfig(riva_asr_pb2.RivaSpeechRecognitionConfigRequest())
    assert [(c.model_name, c.parameters["type"]) for c in response.model_config] == [
        ("tiny@1", "offline"), ("tiny@1", "online"), ("tiny@2", "offline"), ("tiny@2", "online")]
    assert response.model_config[0].parameters["sample_rate"] == "16000"
    assert response.model_config[0].parameters["default"] == "true"


def test_interim_pieces_concatenate_with_spaces_as_riva_clients_join_them():
    from riva.client.proto import riva_asr_pb2

    from service.riva_api import _space_interim_pieces

    def result(text, final=False):
        return riva_asr_pb2.StreamingRecognitionResult(
            alternatives=[riva_asr_pb2.SpeechRecognitionAlternative(transcript=text)], is_final=final)

    results = [result("rubout g n e", final=True), result("s three"), result("nine")]
    _space_interim_pieces(results)
    assert "".join(r.alternatives[0].transcript for r in results if not r.is_final) == "s three nine"
    assert results[0].alternatives[0].transcript == "rubout g n e"  # finals are whole results, left as they are


def test_g711_and_ogg_opus_are_heard_as_the_pcm_they_carry(server):
    """MULAW and ALAW bytes (libsndfile's G.711 encoder) give the transcript of the 16-bit PCM libsndfile decodes them
    to, offline and streaming; Ogg Opus is read as a container by Recognize."""
    import soundfile as sf

    asr = _asr(server)
    audio = decode_audio(an4_test_set(limit=1)[0][0], 8_000).samples
    for encoding, subtype in ((riva_client.AudioEncoding.MULAW, "ULAW"), (riva_client.AudioEncoding.ALAW, "ALAW")):
        companded = io.BytesIO()
        sf.write(companded, audio, 8_000, format="RAW", subtype=subtype)
        pcm, _ = sf.read(io.BytesIO(companded.getvalue()), dtype="int16", format="RAW", subtype=subtype,
                         samplerate=8_000, channels=1)
        want = asr.offline_recognize(pcm.astype("<i2").tobytes(), _config(
            encoding=riva_client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=8_000)).results[0].alternatives[0]
        got = asr.offline_recognize(companded.getvalue(), _config(encoding=encoding, sample_rate_hertz=8_000))
        assert got.results[0].alternatives[0].transcript == want.transcript, subtype
        streaming_config = riva_client.StreamingRecognitionConfig(
            config=_config(encoding=encoding, sample_rate_hertz=8_000), interim_results=False)
        chunks = [companded.getvalue()[i:i + 799] for i in range(0, len(companded.getvalue()), 799)]
        finals = [r.alternatives[0].transcript for response in asr.streaming_response_generator(
            audio_chunks=chunks, streaming_config=streaming_config) for r in response.results if r.is_final]
        assert " ".join(f for f in finals if f) == want.transcript, subtype
    opus = io.BytesIO()
    sf.write(opus, decode_audio(an4_test_set(limit=1)[0][0], 48_000).samples, 48_000, format="OGG", subtype="OPUS")
    unset = asr.offline_recognize(opus.getvalue(), _config()).results[0].alternatives[0].transcript
    named = asr.offline_recognize(opus.getvalue(), _config(encoding=riva_client.AudioEncoding.OGGOPUS))
    assert named.results[0].alternatives[0].transcript == unset


@pytest.mark.parametrize("encoding, container, subtype", [
    ("FLAC", "FLAC", "PCM_16"), ("ENCODING_UNSPECIFIED", "FLAC", "PCM_16"), ("OGGOPUS", "OGG", "OPUS"),
    ("ENCODING_UNSPECIFIED", "OGG", "VORBIS")])
def test_flac_and_ogg_streams_are_decoded_as_they_arrive(server, encoding, container, subtype):
    """A file's bytes streamed in 4 KiB chunks, as Riva's transcribe_file.py streams a .flac: the finals are
    Recognize's transcript of the same bytes (the same decoder reads both, the stream as it arrives)."""
    import soundfile as sf

    asr = _asr(server)
    data = io.BytesIO()
    rate = 48_000 if subtype == "OPUS" else 16_000
    sf.write(data, decode_audio(an4_test_set(limit=1)[0][0], rate).samples, rate, format=container, subtype=subtype)
    data = data.getvalue()
    offline = asr.offline_recognize(data, _config()).results[0].alternatives[0].transcript
    streaming_config = riva_client.StreamingRecognitionConfig(
        config=_config(encoding=getattr(riva_client.AudioEncoding, encoding)), interim_results=True)
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    finals = [r.alternatives[0].transcript for response in asr.streaming_response_generator(
        audio_chunks=chunks, streaming_config=streaming_config) for r in response.results if r.is_final]
    assert offline and " ".join(f for f in finals if f) == offline


def test_a_stream_that_is_not_the_file_its_encoding_names_is_refused(server):
    asr = _asr(server)
    streaming_config = riva_client.StreamingRecognitionConfig(config=_config(encoding=riva_client.AudioEncoding.FLAC))
    for chunks, fragment in (([b"\0\1" * 4000], "not the FLAC file"), ([b"fLaC" + b"\x7f" * 5000], "flac file: not a readable audio file")):
        with pytest.raises(grpc.RpcError) as err:
            list(asr.streaming_response_generator(audio_chunks=chunks, streaming_config=streaming_config))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()
