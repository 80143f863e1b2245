"""REST and OpenAI endpoints give the offline text of the same model, in every response format."""

from __future__ import annotations

import pytest

from model import Registry, greedy_decode, load_model
from service.config import ServiceConfig
from tests.service.conftest import make_config, running_app

pytestmark = pytest.mark.anyio


def offline_text(registry_root, spec, audio) -> str:
    model, _, _ = load_model(Registry(registry_root), spec)
    return greedy_decode(model.log_probs_batch([audio])[0], model.vocabulary.labels, model.frame_duration_s).text


async def test_rest_and_openai_match_offline_greedy(registry_root, an4_paths, an4_audio) -> None:
    async with running_app(make_config(registry_root)) as (client, engine):
        for path, audio in list(zip(an4_paths, an4_audio))[:3]:
            expected = offline_text(registry_root, "tiny@1", audio)
            data = path.read_bytes()
            r = await client.post("/transcribe", files={"file": (path.name, data)})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["text"] == expected
            assert body["model"] == {"name": "tiny", "version": 1}
            assert r.headers["x-asr-model"] == "tiny@1"
            assert body["decoder"] == "greedy"
            assert set(body["timings"]) == {"queue_s", "inference_s", "decode_s", "total_s", "precision"}
            assert body["timings"]["precision"] == engine.precision
            assert " ".join(w["word"] for w in body["words"]) == expected
            assert abs(body["duration"] - len(audio) / 16000) < 1e-3
            raw = await client.post("/transcribe", content=data, headers={"Content-Type": "audio/flac"})
            assert raw.json()["text"] == expected
            oa = await client.post("/v1/audio/transcriptions", files={"file": (path.name, data)},
                                   data={"model": "whisper-1"})
            assert oa.status_code == 200 and oa.json()["text"] == expected


async def test_explicit_version_and_beam_options(registry_root, an4_paths, an4_audio) -> None:
    async with running_app(make_config(registry_root)) as (client, _):
        data = an4_paths[0].read_bytes()
        r = await client.post("/transcribe?model=tiny@2", files={"file": ("a.flac", data)})
        assert r.status_code == 200 and r.json()["model"] == {"name": "tiny", "version": 2}
        assert r.json()["text"] == offline_text(registry_root, "tiny@2", an4_audio[0])
        r = await client.post("/transcribe", files={"file": ("a.flac", data)},
                              data={"decoder": "beam", "beam_width": "8", "alternatives": "3", "hotwords": "yes:5,two"})
        body = r.json()
        assert r.status_code == 200 and body["decoder"] == "beam"
        assert 1 <= len(body["alternatives"]) <= 3 and body["alternatives"][0]["text"] == body["text"]
        assert all(w["start"] <= w["end"] for w in body["words"])
        r = await client.post("/transcribe?word_timestamps=false", files={"file": ("a.flac", data)})
        assert r.json()["words"] == []


async def test_openai_response_formats(registry_root, an4_paths, an4_audio) -> None:
    async with running_app(make_config(registry_root)) as (client, _):
        expected = offline_text(registry_root, "tiny@1", an4_audio[0])
        files = {"file": ("a.flac", an4_paths[0].read_bytes())}
        post = lambda **form: client.post("/v1/audio/transcriptions", files=files, data=form)  # noqa: E731
        assert (await post(response_format="json")).json()["text"] == expected
        assert (await post(response_format="text")).text.strip() == expected
        srt = (await post(response_format="srt")).text
        assert srt.startswith("1\n00:00:") and " --> " in srt
        vtt = (await post(response_format="vtt")).text
        assert vtt.startswith("WEBVTT") and " --> " in vtt
        verbose = (await post(response_format="verbose_json", **{"timestamp_granularities[]": "word"})).json()
        assert verbose["text"] == expected and verbose["segments"] and verbose["task"] == "transcribe"
        assert " ".join(w["word"] for w in verbose["words"]) == expected
        assert "words" not in (await post(response_format="verbose_json")).json()
        bad = await post(response_format="yaml")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"
        lang = await post(language="de")
        assert lang.status_code == 400 and "English" in lang.json()["error"]["message"]
        assert (await post(language="en", prompt="ignored", temperature="0.2")).status_code == 200


async def test_models_and_health(registry_root) -> None:
    async with running_app(make_config(registry_root)) as (client, engine):
        assert (await client.get("/health/live")).json() == {"status": "ok"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["model"] == {"name": "tiny", "version": 1}
        ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        assert "tiny@1" in ids and "tiny" in ids
        assert (await client.get("/docs")).status_code == 200
        engine.begin_drain()
        assert (await client.get("/health/ready")).status_code == 503


async def test_an_ensemble_serves_like_its_offline_decode(tmp_path, an4_paths, an4_audio) -> None:
    from model import publish_model
    from model.ensemble import EnsembleRecognizer
    from tests.service.conftest import tiny_model
    from tests.tiny_model import agreeing_copy

    root = tmp_path / "registry"
    members = [tiny_model(0), agreeing_copy(tiny_model(0), 1)]
    publish_model(Registry(root), "duo", EnsembleRecognizer.of(members), source="ensemble")
    async with running_app(make_config(root, default_model="duo")) as (client, _):
        for path, audio in list(zip(an4_paths, an4_audio))[:2]:
            r = await client.post("/transcribe", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 200, r.text
            assert r.json()["text"] == offline_text(root, "duo@1", audio)
            assert r.json()["model"] == {"name": "duo", "version": 1}
        r = await client.post("/transcribe", files={"file": ("a.flac", an4_paths[0].read_bytes())},
                              data={"decoder": "beam", "beam_width": "8", "alternatives": "3"})
        body = r.json()
        assert r.status_code == 200 and body["decoder"] == "beam", body
        texts = [alt["text"] for alt in body["alternatives"]]
        assert texts[0] == body["text"] and len(set(texts)) == len(texts)
        assert all(0 <= w["confidence"] <= 1 and w["start"] <= w["end"] for w in body["words"])


async def test_the_default_precision_serves_and_is_reported(registry_root, an4_paths, an4_audio) -> None:
    """ASR_PRECISION=auto (the default): bf16 where the CPU has it, and the response says which."""
    from model.inference import for_inference
    from model.precision import resolve_precision

    config = make_config(registry_root, precision=ServiceConfig.model_fields["precision"].default)
    expected_precision = resolve_precision("auto", "cpu")
    fast = for_inference(load_model(Registry(registry_root), "tiny@1")[0], expected_precision)
    async with running_app(config) as (client, engine):
        assert engine.precision == expected_precision
        for path, audio in list(zip(an4_paths, an4_audio))[:2]:
            r = await client.post("/transcribe", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 200, r.text
            assert r.json()["timings"]["precision"] == expected_precision
            want = greedy_decode(fast.log_probs_batch([audio])[0], fast.vocabulary.labels, fast.frame_duration_s)
            assert r.json()["text"] == want.text
