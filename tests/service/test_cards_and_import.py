"""Model cards on every listing, POST /admin/models/import of a .nemo file, and OpenAI's stream and translations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model import Registry, publish_model
from model.card import model_card, vocabulary_summary
from model.checkpoint import read_config
from tests.service.conftest import make_config, running_app, tiny_model

pytestmark = pytest.mark.anyio
TOKEN = "s3cret-token"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "nemo" / "quartznet_small.nemo"
STARTER = Path(__file__).resolve().parents[2] / "starter" / "registry"


def test_cards_describe_characters_and_word_pieces():
    chars = vocabulary_summary([" ", *"abc", "'"])
    assert chars["kind"] == "characters" and "open vocabulary" in chars["description"]
    pieces = vocabulary_summary(["\u2581a", "\u2581seven", "\u2581rubout", "e", "'"])
    assert pieces["kind"] == "word pieces" and pieces["words"] == ["seven", "rubout"]
    assert pieces["description"].startswith("2 whole words (seven, rubout)")


def test_the_starter_card_says_what_it_recognises_and_where_to_go_for_english():
    registry = Registry(STARTER)
    ref = registry.resolve("an4-quartznet")
    card = model_card(registry.metadata(ref), read_config(ref.path))
    assert card["general_english"] is False and "spelled letters" in card["recognises"]
    assert "import-nemo" in card["not_for"] and "103.2 % WER" in card["not_for"]  # asr eval on samples.json, once
    assert card["vocabulary"]["kind"] == "word pieces" and "rubout" in card["vocabulary"]["words"]
    assert card["measured_wer"]["an4_test_greedy_wer"] == pytest.approx(0.0673, abs=1e-4)


async def test_cards_reach_v1_models(registry_root):
    async with running_app(make_config(registry_root)) as (client, _):
        data = (await client.get("/v1/models")).json()["data"]
    card = data[0]["card"]
    assert card["vocabulary"]["kind"] == "characters" and card["summary"].startswith("tiny@1")


# ---- POST /admin/models/import ----


async def test_import_publishes_a_nemo_upload_that_then_serves(tmp_path, an4_paths):
    publish_model(Registry(tmp_path), "tiny", tiny_model(0), source="trained")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_app(make_config(tmp_path, admin_token=TOKEN)) as (client, _):
        files = {"file": ("qn.nemo", FIXTURE.read_bytes())}
        assert (await client.post("/admin/models/import", files=files, data={"name": "qn"})).status_code == 401
        r = await client.post("/admin/models/import", files=files, data={"name": "qn"}, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json() == {"published": "qn@1", "name": "qn", "version": 1}
        ok = await client.post("/transcribe?model=qn", files={"file": ("a.flac", an4_paths[0].read_bytes())})
        assert ok.status_code == 200 and ok.json()["model"] == {"name": "qn", "version": 1}
    assert Registry(tmp_path).metadata(Registry(tmp_path).resolve("qn"))["source"] == "imported"


@pytest.mark.parametrize("case", ["garbage", "too_large", "bad_name", "no_name"])
async def test_bad_imports_are_4xx_and_publish_nothing(case, tmp_path):
    publish_model(Registry(tmp_path), "tiny", tiny_model(0), source="trained")
    data = {"garbage": b"not a tar archive", "too_large": FIXTURE.read_bytes()}.get(case, FIXTURE.read_bytes())
    form = {"bad_name": {"name": "../escape"}, "no_name": {}}.get(case, {"name": "qn"})
    config = make_config(tmp_path, admin_token=TOKEN, **({"max_import_bytes": 1000} if case == "too_large" else {}))
    async with running_app(config) as (client, _):
        r = await client.post("/admin/models/import", files={"file": ("x.nemo", data)}, data=form,
                              headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == (413 if case == "too_large" else 400), r.text
    assert str(tmp_path) not in r.text
    assert Registry(tmp_path).names() == ["tiny"]


# ---- OpenAI: stream=true and translations ----


def _sse(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        events.append(json.loads(block[len("data: "):]))
    return events


async def test_stream_true_sends_deltas_then_done_with_the_plain_text(registry_root, an4_paths):
    files = {"file": ("a.flac", an4_paths[0].read_bytes())}
    async with running_app(make_config(registry_root)) as (client, _):
        plain = (await client.post("/v1/audio/transcriptions", files=files)).json()["text"]
        r = await client.post("/v1/audio/transcriptions", files=files, data={"stream": "true"})
        refused = await client.post("/v1/audio/transcriptions", files=files,
                                    data={"stream": "true", "response_format": "srt"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert [e["type"] for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1] == {"type": "transcript.text.done", "text": plain}
    assert "".join(e["delta"] for e in events[:-1]) == plain
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"


async def test_translations_answer_a_clear_error(registry_root):
    async with running_app(make_config(registry_root)) as (client, _):
        r = await client.post("/v1/audio/translations", files={"file": ("a.wav", b"RIFF")}, data={"model": "whisper-1"})
    assert r.status_code == 400
    assert "transcribe English speech, they do not translate" in r.json()["error"]["message"]
