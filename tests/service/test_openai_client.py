"""The official `openai` client against /v1/audio/*: every response format, timestamps, and stream=True."""

from __future__ import annotations

import asyncio

import httpx
import pytest

openai = pytest.importorskip("openai")

from service.app import create_app  # noqa: E402
from tests.service.conftest import make_config  # noqa: E402

pytestmark = pytest.mark.anyio


def _client(app) -> "openai.AsyncOpenAI":
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://asr.test/v1")
    return openai.AsyncOpenAI(api_key="unused", base_url="http://asr.test/v1", http_client=http)


@pytest.fixture
async def served(registry_root):
    app = create_app(make_config(registry_root))
    async with app.router.lifespan_context(app):
        for _ in range(500):  # the app loads its model in the background
            if app.state.engine.ready:
                break
            await asyncio.sleep(0.02)
        assert app.state.engine.ready, app.state.engine.startup_error
        yield _client(app)


async def test_every_response_format_and_word_timestamps(served, an4_paths):
    path = an4_paths[0]
    plain = await served.audio.transcriptions.create(model="whisper-1", file=path)
    assert isinstance(plain.text, str)
    text = await served.audio.transcriptions.create(model="whisper-1", file=path, response_format="text")
    assert text.strip() == plain.text
    for fmt in ("srt", "vtt"):
        body = await served.audio.transcriptions.create(model="whisper-1", file=path, response_format=fmt)
        assert (fmt != "vtt" or body.startswith("WEBVTT")) and (not plain.text or plain.text.split()[0] in body)
    verbose = await served.audio.transcriptions.create(model="whisper-1", file=path, response_format="verbose_json",
                                                       timestamp_granularities=["word", "segment"])
    assert verbose.text == plain.text and verbose.language == "english"
    assert [w.word for w in verbose.words] == plain.text.split()
    assert all(w.start <= w.end for w in verbose.words)


async def test_stream_true_yields_deltas_then_a_done_event_with_the_plain_text(served, an4_paths):
    path = an4_paths[1]
    plain = (await served.audio.transcriptions.create(model="gpt-4o-transcribe", file=path)).text
    stream = await served.audio.transcriptions.create(model="gpt-4o-transcribe", file=path, stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done" and events[-1].text == plain
    assert "".join(e.delta for e in events[:-1]) == plain


async def test_translations_raise_a_bad_request(served, an4_paths):
    with pytest.raises(openai.BadRequestError, match="do not translate"):
        await served.audio.translations.create(model="whisper-1", file=an4_paths[0])
