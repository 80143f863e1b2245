"""The /v1/realtime transcription WebSocket on a real uvicorn: interims while streaming, finals equal
POST /transcribe, and every bad input ends as an error event plus a close code, never a traceback."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from model.audio import AudioError, decode_audio, resample
from service.app import create_app
from service.domain import (DeadlineExceededError, PayloadTooLargeError, QueueFullError, ServiceUnavailableError,
                            UnknownModelError)
from service.model_slot import ModelLoadError
from service.realtime_ws import error_for
from tests.conftest import REPO_ROOT
from tests.service.conftest import make_config
from tests.service.test_grpc_support import AN4_TEST_MANIFEST, an4_test_set, free_port

STARTER = REPO_ROOT / "starter" / "registry"
STARTER_MODEL = "an4-quartznet@6"  # one network: fast enough to stream several clips on 2 cores
RECEIVE_TIMEOUT_S = 60.0  # a window queued behind other tests' work on a busy 2-core machine
API_KEY = "ws-test-key"

pytestmark = pytest.mark.skipif(not AN4_TEST_MANIFEST.exists(), reason="shared AN4 data not found")


class _Server:
    """``create_app(config)`` under a real uvicorn on a free port, in a thread of its own."""

    def __init__(self, config, scheme: str = "http", verify: str | bool = True) -> None:
        self.port, self.scheme = free_port(), scheme
        self.app = create_app(config)
        tls = ({"ssl_certfile": str(config.tls_cert_file), "ssl_keyfile": str(config.tls_key_file)}
               if config.tls_cert_file is not None else {})
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None,
                                                     **tls))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120  # a cold model load on a busy machine
        while True:
            try:
                if httpx.get(self.url + "/health/ready", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def ws(self, query: str = "intent=transcription", **kw):
        return connect(f"ws://127.0.0.1:{self.port}/v1/realtime?{query}", open_timeout=30, **kw)

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def starter_server():
    if not (STARTER / "an4-quartznet" / "6").is_dir():
        pytest.skip("the starter registry is not in this checkout")
    server = _Server(make_config(STARTER, default_model=STARTER_MODEL, http_host="127.0.0.1"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def strict_server(registry_root):
    """The tiny random model behind an API key and small stream limits: 3 s of 16 kHz PCM16, 1 s of audio."""
    config = make_config(registry_root, http_host="127.0.0.1", api_keys=[API_KEY], max_audio_bytes=96_000,
                         max_audio_duration_s=1.0)
    server = _Server(config)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_server_errors(caplog):
    """Nothing the server logs at ERROR (an unhandled exception in uvicorn, an internal error here)."""
    caplog.set_level(logging.ERROR)
    yield
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _pcm(samples: np.ndarray) -> bytes:
    return (samples * 32768).round().clip(-32768, 32767).astype("<i2").tobytes()


def _append(ws, pcm: bytes, chunk_bytes: int = 3200) -> None:
    for offset in range(0, len(pcm), chunk_bytes):
        ws.send(json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(pcm[offset: offset + chunk_bytes]).decode()}))


def _receive_until(ws, event_type: str, until=lambda event: True) -> list[dict]:
    """Every event up to and including the first ``event_type`` for which ``until`` holds."""
    events = []
    while True:
        event = json.loads(ws.recv(timeout=RECEIVE_TIMEOUT_S))
        events.append(event)
        assert event["type"] != "error", event
        if event["type"] == event_type and until(event):
            return events


def _configure(ws, **session) -> dict:
    assert json.loads(ws.recv(timeout=RECEIVE_TIMEOUT_S))["type"] == "transcription_session.created"
    ws.send(json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": "pcm16",
                                                                            **session}}))
    return _receive_until(ws, "transcription_session.updated")[-1]["session"]


def _rest(server, data: bytes, name: str, model: str) -> dict:
    response = httpx.post(server.url + "/transcribe", files={"file": (name, data)},
                          data={"model": model, "decoder": "greedy"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _refused(ws) -> tuple[dict, int]:
    """The error event the server sends, and the close code that follows it."""
    while True:
        event = json.loads(ws.recv(timeout=RECEIVE_TIMEOUT_S))
        if event["type"] == "error":
            break
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=RECEIVE_TIMEOUT_S)
    return event["error"], ws.close_code


def test_deltas_while_streaming_and_completed_equals_rest(starter_server):
    for path, _ in an4_test_set(limit=3):
        want = _rest(starter_server, path.read_bytes(), path.name, STARTER_MODEL)
        pcm = _pcm(decode_audio(path, 16_000).samples)
        half = len(pcm) // 4 * 2
        with starter_server.ws(subprotocols=["realtime"]) as ws:
            assert ws.subprotocol == "realtime"
            session = _configure(ws, sample_rate=16_000, input_audio_transcription={"model": STARTER_MODEL})
            assert session["input_audio_transcription"]["model"] == STARTER_MODEL and session["turn_detection"] is None
            _append(ws, pcm[:half])
            # Half the clip is in and nothing is committed: words must already be arriving.
            interims = _receive_until(ws, "conversation.item.input_audio_transcription.delta",
                                      lambda e: e["transcript"].strip())
            _append(ws, pcm[half:])
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            events = interims + _receive_until(ws, "conversation.item.input_audio_transcription.completed")
        deltas = [e for e in events if e["type"].endswith(".delta")]
        committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
        completed = events[-1]
        assert completed["item_id"] == committed["item_id"] == deltas[0]["item_id"]
        assert completed["transcript"] == want["text"], path
        assert [w["word"] for w in completed["words"]] == [w["word"] for w in want["words"]]
        assert completed["model"] == want["model"]
        # Deltas are append-only: each one extends the settled words the event's whole guess starts with.
        sent = ""
        for delta in deltas:
            sent += delta["delta"]
            if delta["delta"]:
                assert delta["transcript"].startswith(sent.strip()), (sent, delta["transcript"])
        assert sent.strip(), deltas
        # They add up to the transcript, unless the final (a one-pass decode of the item) revised a word already
        # sent (about 1 run in 20 turned "b a l z" into "b a r z" on 2026-12-07): deltas cannot be taken back.
        settled_before_final = "".join(d["delta"] for d in deltas[:-1])
        assert sent == completed["transcript"] or not completed["transcript"].startswith(settled_before_final), (
            sent, completed["transcript"])
    metrics = httpx.get(starter_server.url + "/metrics").text
    assert 'asr_requests_total{api="realtime",status="1000"} 3.0' in metrics
    assert "asr_active_streams 0.0" in metrics


def test_default_24khz_is_resampled_like_an_upload(starter_server):
    path, _ = an4_test_set(limit=1)[0]
    audio = resample(decode_audio(path, 16_000).samples, 16_000, 24_000)
    wav = io.BytesIO()
    sf.write(wav, audio, 24_000, format="WAV", subtype="PCM_16")
    want = _rest(starter_server, wav.getvalue(), "clip-24k.wav", STARTER_MODEL)
    with starter_server.ws() as ws:
        assert _configure(ws)["sample_rate"] == 24_000  # OpenAI's pcm16 rate when the session names none
        _append(ws, _pcm(audio), chunk_bytes=4800)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        completed = _receive_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
    assert completed["transcript"] == want["text"]


def test_server_vad_completes_an_item_at_each_pause(starter_server):
    clips = [decode_audio(path, 16_000).samples for path, _ in an4_test_set(limit=2)]
    pause = np.zeros(24_000, dtype=np.float32)  # 1.5 s > the 500 ms of silence that ends an item
    with starter_server.ws() as ws:
        _configure(ws, sample_rate=16_000, turn_detection={"type": "server_vad", "silence_duration_ms": 500})
        _append(ws, _pcm(np.concatenate([clips[0], pause, clips[1]])))
        first = _receive_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # the last item ends by hand
        events = _receive_until(ws, "conversation.item.input_audio_transcription.completed")
    committed, second = [e for e in events if e["type"] == "input_audio_buffer.committed"][-1], events[-1]
    assert first["transcript"] and second["transcript"], (first, second)
    assert committed["previous_item_id"] == first["item_id"] != second["item_id"] == committed["item_id"]


def test_server_vad_items_time_their_words_from_their_own_start(starter_server):
    """Three copies of a clip, a pause, another clip: the last item's words count from that item's start, not from
    the stream's (which would put them after the three copies)."""
    clips = [decode_audio(path, 16_000).samples for path, _ in an4_test_set(limit=2)]
    pause = np.zeros(24_000, dtype=np.float32)
    lead_s = 3 * len(clips[0]) / 16_000 + len(pause) / 16_000
    with starter_server.ws() as ws:
        _configure(ws, sample_rate=16_000, turn_detection={"type": "server_vad", "silence_duration_ms": 500})
        _append(ws, _pcm(np.concatenate([clips[0], clips[0], clips[0], pause, clips[1]])))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))  # answered once the commit is done
        events = _receive_until(ws, "input_audio_buffer.cleared")
    items = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(items) >= 2 and items[-1]["words"], [e["transcript"] for e in items]
    last = items[-1]["words"]
    assert 0 <= last[0]["start"] and last[-1]["end"] <= len(pause) / 16_000 + len(clips[1]) / 16_000 + 0.1, last
    assert last[-1]["end"] < lead_s  # where the stream's own clock would put them


@pytest.mark.parametrize("update", [
    {"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}},
    {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcma"}}}}},
], ids=["beta g711_ulaw", "GA audio/pcma"])
def test_telephony_g711_is_heard_as_the_pcm_it_carries(starter_server, update):
    """8 kHz G.711 bytes (libsndfile's encoder) give what REST gives for the 16-bit PCM libsndfile decodes them to."""
    subtype = "ULAW" if "g711_ulaw" in json.dumps(update) else "ALAW"
    audio = decode_audio(an4_test_set(limit=1)[0][0], 8_000).samples
    companded = io.BytesIO()
    sf.write(companded, audio, 8_000, format="RAW", subtype=subtype)
    pcm, _ = sf.read(io.BytesIO(companded.getvalue()), dtype="float32", format="RAW", subtype=subtype,
                     samplerate=8_000, channels=1)
    wav = io.BytesIO()
    sf.write(wav, pcm, 8_000, format="WAV", subtype="PCM_16")
    want = _rest(starter_server, wav.getvalue(), "g711.wav", STARTER_MODEL)
    with starter_server.ws() as ws:
        assert json.loads(ws.recv(timeout=RECEIVE_TIMEOUT_S))["type"] == "transcription_session.created"
        ws.send(json.dumps(update))
        updated = _receive_until(ws, update["type"].replace("update", "updated"))[-1]["session"]
        assert json.dumps(updated).count("8000") == 1  # G.711 is 8 kHz
        data = companded.getvalue()
        for offset in range(0, len(data), 801):  # odd sizes: one byte is one sample
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(data[offset:offset + 801]).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        completed = _receive_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
    assert completed["transcript"] == want["text"] and completed["transcript"]


def test_api_key_by_header_query_or_subprotocol(strict_server):
    for kw, query in (({"additional_headers": {"Authorization": f"Bearer {API_KEY}"}}, ""),
                      ({}, f"&api_key={API_KEY}"),
                      ({"subprotocols": ["realtime", f"openai-insecure-api-key.{API_KEY}"]}, "")):
        with strict_server.ws("intent=transcription" + query, **kw) as ws:
            assert _configure(ws, sample_rate=16_000)["sample_rate"] == 16_000


@pytest.mark.parametrize("send, code, close_code", [
    (lambda ws: ws.send("{not json"), "invalid_json", 1003),
    (lambda ws: ws.send(b"\x00\x01"), "unsupported_frame", 1003),
    (lambda ws: ws.send(json.dumps({"type": "response.create"})), "unknown_event", 1003),
    (lambda ws: ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"})), "invalid_audio", 1003),
    (lambda ws: ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}})),
     "unsupported_session_type", 1008),
    (lambda ws: ws.send(json.dumps({"type": "transcription_session.update", "session": {  # Riva's, malformed
        "input_audio_params": {}, "word_boosting": {"enable_word_boosting": True,
                                                    "word_boosting_list": [{"phrases": "g m", "boost": "high"}]}}})),
     "bad_request", 1008),
    (lambda ws: ws.send(json.dumps({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}}})),
     "unsupported_audio_format", 1003),
    (lambda ws: ws.send(json.dumps({"type": "input_audio_buffer.commit"})), "input_audio_buffer_commit_empty", 1008),
    (lambda ws: ws.send(json.dumps({"type": "transcription_session.update",
                                    "session": {"input_audio_format": "opus"}})), "unsupported_audio_format", 1003),
    (lambda ws: ws.send(json.dumps({"type": "transcription_session.update",
                                    "session": {"sample_rate": 4000}})), "invalid_sample_rate", 1008),
    (lambda ws: ws.send(json.dumps({"type": "transcription_session.update",
                                    "session": {"input_audio_transcription": {"model": "nope@1"}}})),
     "model_not_found", 1008),
])
def test_bad_events_get_an_error_event_and_a_close_code(strict_server, send, code, close_code):
    with strict_server.ws(f"intent=transcription&api_key={API_KEY}") as ws:
        assert json.loads(ws.recv(timeout=RECEIVE_TIMEOUT_S))["type"] == "transcription_session.created"
        send(ws)
        error, closed_with = _refused(ws)
    assert (error["code"], closed_with) == (code, close_code), error
    assert error["type"] == "invalid_request_error" and error["message"]


def test_audio_over_the_limits_is_refused_with_1009(strict_server):
    # 100 000 bytes > max_audio_bytes (96 000); then 1.25 s at 8 kHz > max_audio_duration_s (1 s).
    for rate, pcm in ((16_000, b"\x00\x00" * 50_000), (8_000, b"\x00\x00" * 10_000)):
        with strict_server.ws(f"intent=transcription&api_key={API_KEY}") as ws:
            _configure(ws, sample_rate=rate)
            _append(ws, pcm, chunk_bytes=len(pcm))
            error, closed_with = _refused(ws)
        assert (error["code"], closed_with) == ("too_large", 1009), error


def test_missing_or_wrong_key_and_wrong_intent_are_refused(strict_server):
    for query in ("intent=transcription", "intent=transcription&api_key=wrong"):
        with strict_server.ws(query) as ws:
            error, closed_with = _refused(ws)
        assert (error["code"], closed_with) == ("invalid_api_key", 1008), error
    with strict_server.ws(f"intent=conversation&api_key={API_KEY}") as ws:
        error, closed_with = _refused(ws)
    assert (error["code"], closed_with) == ("unsupported_intent", 1008), error
    metrics = httpx.get(strict_server.url + "/metrics").text
    assert 'asr_requests_total{api="realtime",status="1008"}' in metrics


@pytest.mark.parametrize("exc, close_code, type_, code", [
    (QueueFullError("busy"), 1013, "server_busy", "queue_full"),
    (ServiceUnavailableError("draining"), 1013, "unavailable", "unavailable"),
    (ModelLoadError("bad file"), 1013, "unavailable", "model_load_failed"),
    (DeadlineExceededError("late"), 1011, "timeout", "deadline_exceeded"),
    (PayloadTooLargeError("big"), 1009, "invalid_request_error", "too_large"),
    (UnknownModelError("no such model"), 1008, "invalid_request_error", "model_not_found"),
    (AudioError("not audio"), 1008, "invalid_request_error", "bad_audio"),
    (RuntimeError("a bug"), 1011, "server_error", "internal"),
])
def test_each_failure_closes_with_the_code_and_error_rest_gives_it(exc, close_code, type_, code):
    """The error type and code are REST's (one table); the close code follows REST's status."""
    got_code, error = error_for(exc)
    assert (got_code, error["type"], error["code"]) == (close_code, type_, code)
    assert error["message"] == ("internal server error" if code == "internal" else str(exc))


def test_a_commit_under_100_ms_is_refused_as_openai_does(strict_server):
    with strict_server.ws(f"intent=transcription&api_key={API_KEY}") as ws:
        _configure(ws, sample_rate=16_000)
        _append(ws, b"\x01\x00" * 800)  # 50 ms
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        error, closed_with = _refused(ws)
    assert (error["code"], closed_with) == ("input_audio_buffer_commit_empty", 1008), error
    assert error["message"] == "buffer too small: 50 ms of audio; commit at least 100 ms"


@pytest.fixture()
def impatient_server(registry_root):
    server = _Server(make_config(registry_root, http_host="127.0.0.1", stream_idle_timeout_s=0.5))
    yield server
    server.close()


def test_an_idle_socket_is_closed_going_away(impatient_server):
    with impatient_server.ws() as ws:
        _configure(ws, sample_rate=16_000)
        _append(ws, b"\x01\x00" * 3200)
        error, closed_with = _refused(ws)  # then nothing, for longer than the idle timeout
    assert (error["type"], error["code"], closed_with) == ("timeout", "idle_timeout", 1001), error
    assert error["message"].startswith("no event for 0.5 s; the socket was closed")
    metrics = httpx.get(impatient_server.url + "/metrics").text
    assert 'asr_errors_total{reason="idle_timeout"} 1.0' in metrics


def _riva_session(**overrides) -> dict:
    """What Riva's client sends: the server's defaults (POST /v1/realtime/transcription_sessions) with its changes."""
    from service.riva_realtime import default_session

    return {**default_session("sess_x", STARTER_MODEL, 16_000), **overrides}


def test_rivas_session_endpoint_gives_the_defaults_behind_the_api_key(strict_server):
    assert httpx.post(strict_server.url + "/v1/realtime/transcription_sessions", json={}).status_code == 401
    session = httpx.post(strict_server.url + "/v1/realtime/transcription_sessions", json={},
                         headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert session["input_audio_params"] == {"sample_rate_hz": 16_000, "num_channels": 1}
    assert session["input_audio_transcription"]["model"] == "tiny@1"


def test_a_riva_file_session_commits_every_chunk_and_ends_with_the_last_result(starter_server):
    """Riva's client streams a .wav file's bytes (input_audio_format "none"), commits after every chunk, and sends
    input_audio_buffer.done: one item, marked the last result, with REST's words and times in ms."""
    path, _ = an4_test_set(limit=1)[0]
    wav = io.BytesIO()
    sf.write(wav, decode_audio(path, 16_000).samples, 16_000, format="WAV", subtype="PCM_16")
    want = _rest(starter_server, wav.getvalue(), "clip.wav", STARTER_MODEL)
    with starter_server.ws() as ws:
        assert json.loads(ws.recv(timeout=RECEIVE_TIMEOUT_S))["type"] == "transcription_session.created"
        update = {"type": "transcription_session.update", "session": _riva_session(input_audio_format="none")}
        ws.send(json.dumps(update))
        _receive_until(ws, "transcription_session.updated")
        data = wav.getvalue()
        for offset in range(0, len(data), 3_200):  # the header arrives split, the way the file is read
            _append(ws, data[offset:offset + 3_200], chunk_bytes=3_200)
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "input_audio_buffer.done"}))
        events = _receive_until(ws, "conversation.item.input_audio_transcription.completed")
    completed = [e for e in events if e["type"].endswith(".completed")]
    assert len(completed) == 1 and completed[0]["is_last_result"] is True
    assert completed[0]["transcript"] == want["text"]
    assert [(w["word"], w["start_time"]) for w in completed[0]["words_info"]["words"]] == [
        (w["word"], round(1000 * w["start"])) for w in want["words"]]


def test_riva_force_eou_ends_an_item_and_done_ends_the_last(starter_server):
    clips = [decode_audio(path, 16_000).samples for path, _ in an4_test_set(limit=2)]
    with starter_server.ws() as ws:
        assert json.loads(ws.recv(timeout=RECEIVE_TIMEOUT_S))["type"] == "transcription_session.created"
        ws.send(json.dumps({"type": "transcription_session.update", "session": _riva_session()}))
        _receive_until(ws, "transcription_session.updated")
        _append(ws, _pcm(clips[0]))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "", "runtime_config": {"force_eou": "true"}}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        first = _receive_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
        _append(ws, _pcm(clips[1]))
        ws.send(json.dumps({"type": "input_audio_buffer.done"}))
        last = _receive_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
    assert first["is_last_result"] is False and last["is_last_result"] is True
    assert first["transcript"] and last["transcript"] and first["item_id"] != last["item_id"]
