"""Every bad input gets a JSON error with the right status and a clear message, never a traceback."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tests.service.conftest import make_config, running_app

pytestmark = pytest.mark.anyio


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return buf.getvalue()


def assert_error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment.lower() in error["message"].lower(), error
    assert "Traceback" not in response.text


async def test_bad_inputs(registry_root, an4_paths) -> None:
    flac = an4_paths[0].read_bytes()
    async with running_app(make_config(registry_root, max_audio_duration_s=5.0)) as (client, engine):
        post = client.post
        assert_error(await post("/transcribe", files={"file": ("a.txt", b"hello, not audio" * 20)}), 400,
                     "not a readable audio file")
        assert_error(await post("/transcribe", files={"file": ("t.flac", flac[: len(flac) // 3])}), 400, "t.flac")
        assert_error(await post("/transcribe", content=b"", headers={"Content-Type": "audio/wav"}), 400, "empty")
        assert_error(await post("/transcribe", files={"file": ("e.wav", b"")}), 400, "empty")
        assert_error(await post("/transcribe", content=flac, headers={"Content-Type": "text/plain"}), 415,
                     "unsupported content type")
        assert_error(await post("/transcribe", data={"model": "tiny"}), 415, "unsupported content type")
        assert_error(await post("/transcribe", files={"other": ("a.flac", flac)}), 400, "missing multipart file")
        assert_error(await post("/transcribe?model=nosuch", files={"file": ("a.flac", flac)}), 404, "nosuch")
        assert_error(await post("/transcribe?model=tiny@9", files={"file": ("a.flac", flac)}), 404, "available versions")
        assert_error(await post("/transcribe?model=../etc", files={"file": ("a.flac", flac)}), 400, "invalid model")
        for query, fragment in [("beam_width=100000&decoder=beam", "beam_width"), ("lm_alpha=99&decoder=beam", "lm_alpha"),
                                ("decoder=viterbi", "decoder"), ("alternatives=0", "alternatives"),
                                ("beam_width=abc", "integer"), ("word_timestamps=maybe", "true or false"),
                                ("hotwords=yes:1e9", "boost")]:
            assert_error(await post(f"/transcribe?{query}", files={"file": ("a.flac", flac)}), 400, fragment)
        assert_error(await post("/transcribe", files={"file": ("long.wav", wav_bytes(6.0))}), 413, "limit is 5 s")
        oa = await post("/v1/audio/transcriptions", files={"file": ("a.txt", b"nope" * 10)})
        assert set(oa.json()["error"]) == {"message", "type", "param", "code"}
        assert_error(await client.get("/no/such/route"), 404, "not found")
        # The worker survived all of that.
        assert (await post("/transcribe", files={"file": ("a.flac", flac)})).status_code == 200
        errors = engine.metrics.errors
        assert errors.labels(reason="bad_audio")._value.get() >= 2
        assert errors.labels(reason="model_not_found")._value.get() >= 2


async def test_upload_limit_is_enforced_while_streaming(registry_root) -> None:
    sent = []

    async def body():
        for _ in range(100):  # 100 x 64 KiB = 6.4 MB, ten times the limit
            sent.append(1)
            yield b"\0" * 65536

    async with running_app(make_config(registry_root, max_audio_bytes=600_000)) as (client, _):
        r = await client.post("/transcribe", content=body(), headers={"Content-Type": "audio/wav"})
        assert_error(r, 413, "exceeds the limit")
        assert len(sent) < 20, "the body was read to the end before refusing it"
        big = wav_bytes(30.0)  # ~960 kB, declared up front by Content-Length
        assert_error(await client.post("/transcribe", files={"file": ("big.wav", big)}), 413, "exceeds the limit")
        assert_error(await client.post("/transcribe", content=big, headers={"Content-Type": "audio/wav"}), 413,
                     "exceeds the limit")
