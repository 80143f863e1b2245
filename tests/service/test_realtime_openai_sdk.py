"""The official `openai` package's realtime clients against /v1/realtime, given only the server's base URL: the GA
client (client.realtime, session.update of a "transcription" session) over ws://, and the beta client
(client.beta.realtime, transcription_session.update), which always connects with wss://, against the server's TLS.
Each commit's transcript equals POST /transcribe's for the same audio."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from model.audio import decode_audio
from tests.service.conftest import make_config
from tests.service.test_realtime_ws import STARTER, STARTER_MODEL, _pcm, _Server
from tests.service.test_grpc_support import AN4_TEST_MANIFEST, an4_test_set

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.skipif(not AN4_TEST_MANIFEST.exists() or not (STARTER / "an4-quartznet" / "6").is_dir(),
                                reason="needs the AN4 data and the starter model")
RATE = 24_000  # the GA API's PCM rate


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return decode_audio(an4_test_set(limit=1)[0][0], RATE).samples


def _rest_text(base: str, clip: np.ndarray, **client) -> str:
    import io

    import soundfile as sf

    wav = io.BytesIO()
    sf.write(wav, clip, RATE, format="WAV", subtype="PCM_16")
    response = httpx.post(base + "/transcribe", files={"file": ("c.wav", wav.getvalue())}, timeout=60, **client)
    return response.json()["text"]


def _events_until_completed(connection) -> list:
    events = []
    for event in connection:
        events.append(event)
        assert event.type != "error", event
        if event.type == "conversation.item.input_audio_transcription.completed":
            return events
    raise AssertionError(f"the socket closed before a transcript: {[e.type for e in events]}")


def test_the_ga_client_transcribes_with_only_the_base_url(clip):
    server = _Server(make_config(STARTER, default_model=STARTER_MODEL, http_host="127.0.0.1"))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        with client.realtime.connect() as connection:
            connection.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": RATE}, "transcription": {"model": "whisper-1"},
                "turn_detection": None}}})
            updated = next(e for e in connection if e.type == "session.updated")
            assert updated.session.type == "transcription"
            for offset in range(0, len(clip), RATE // 10):
                connection.input_audio_buffer.append(audio=base64.b64encode(_pcm(clip[offset:offset + RATE // 10]))
                                                     .decode())
            connection.input_audio_buffer.commit()
            events = _events_until_completed(connection)
        completed = events[-1]
        assert completed.transcript == _rest_text(server.url, clip) and completed.transcript
        assert "input_audio_buffer.committed" in [e.type for e in events]
    finally:
        server.close()


def test_the_beta_client_transcribes_over_tls_with_only_the_base_url(clip, monkeypatch, self_signed_certificate):
    cert, key = self_signed_certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the server as it would a real certificate
    server = _Server(make_config(STARTER, default_model=STARTER_MODEL, http_host="127.0.0.1", tls_cert_file=cert,
                                 tls_key_file=key), scheme="https", verify=str(cert))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        with client.beta.realtime.connect(model="whisper-1") as connection:
            connection.transcription_session.update(session={"input_audio_format": "pcm16",
                                                             "input_audio_transcription": {"model": "whisper-1"},
                                                             "turn_detection": None})
            connection.input_audio_buffer.append(audio=base64.b64encode(_pcm(clip)).decode())
            connection.input_audio_buffer.commit()
            completed = _events_until_completed(connection)[-1]
        assert completed.transcript == _rest_text(server.url, clip, verify=str(cert)) and completed.transcript
    finally:
        server.close()
