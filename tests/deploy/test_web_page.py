"""The web page at GET /, in a real headless browser (Debian's chromium, driven by Playwright),
against a real `asr serve` process: upload, record (fake microphone; live words over the WebSocket, or
uploaded as WAV), decoder choice, errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.deploy.conftest import require_tool

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
VIEWPORT = {"width": 1280, "height": 860}


def _launch(playwright, extra_args=()):
    chromium = require_tool("/usr/bin/chromium", "Debian's chromium")
    profile = tempfile.mkdtemp(prefix="asr-chromium-")  # fresh --user-data-dir
    return playwright.chromium.launch_persistent_context(
        profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS + list(extra_args), viewport=VIEWPORT)


@pytest.fixture(scope="module")
def playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_tool("playwright-python-not-installed", "the playwright Python package (dev extra)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    context = _launch(playwright)
    yield context
    context.close()


@pytest.fixture
def page(browser, asr_server):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(asr_server.url + "/")
    page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _rest(asr_server, path: Path, **fields):
    with asr_server.client() as c, open(path, "rb") as f:
        return c.post("/transcribe", files={"file": (path.name, f)}, data=fields)


def _wait_done(page, timeout_ms: int = 60_000) -> str:
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=timeout_ms)
    return page.evaluate("document.body.dataset.state")


def test_page_and_assets_are_served(asr_server):
    with asr_server.client() as c:
        index = c.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        app_js = c.get("/static/app.js").text
        for src in ("/static/app.js", "/static/app.css", "/static/recorder-worklet.js", "/static/logo.svg"):
            # The page links its assets; the worklet is loaded by app.js (audioWorklet.addModule).
            linked_from = app_js if src == "/static/recorder-worklet.js" else index.text
            assert src in linked_from, src
            r = c.get(src)
            assert r.status_code == 200, src
        assert c.get("/static/app.js").headers["content-type"].startswith("text/javascript")
        missing = c.get("/static/..%2Fweb.py")
        assert missing.status_code == 404 and "error" in missing.json()
    # nothing may come from another origin (no CDN: the page must work offline)
    for name in ("index.html", "app.js", "app.css"):
        text = (Path(__file__).resolve().parents[2] / "service" / "static" / name).read_text()
        assert "http://" not in text and "https://" not in text, name


def test_upload_shows_the_rest_transcript_with_word_timings(page, asr_server, an4_clip, model_id, artifacts):
    expected = _rest(asr_server, an4_clip, model=model_id, decoder="greedy")
    assert expected.status_code == 200, expected.text
    want = expected.json()
    if asr_server.model.real:
        assert want["text"].strip(), "the starter model transcribed an AN4 test clip as nothing"

    options = page.eval_on_selector_all("#model-select option", "els => els.map(e => e.value)")
    assert model_id in options, options
    page.select_option("#model-select", model_id)
    page.click("label[for=decoder-greedy]")
    assert page.is_checked("#decoder-greedy")
    page.set_input_files("#file-input", str(an4_clip))
    assert _wait_done(page) == "done", page.text_content("#error")

    assert page.text_content("#transcript") == want["text"]
    chips = page.locator("#words .word .word-text")
    assert chips.all_text_contents() == [w["word"] for w in want["words"]]
    assert page.text_content("#stat-model") == f"{want['model']['name']}@{want['model']['version']}"
    assert page.text_content("#stat-decoder") == "greedy"
    assert page.text_content("#stat-latency").endswith(("ms", " s"))
    assert page.text_content("#clip-name") == an4_clip.name
    page.screenshot(path=str(artifacts / "web-page.png"), full_page=True)

    if want["words"]:  # clicking a word plays the audio from its start
        last = want["words"][-1]
        page.locator("#words .word").last.click()
        page.wait_for_function("document.getElementById('player').currentTime > 0", timeout=10_000)
        current = page.evaluate("document.getElementById('player').currentTime")
        assert last["start"] - 0.05 <= current <= last["start"] + 2.0, (current, last)


def test_beam_decoder_choice_matches_rest(page, asr_server, an4_clip, model_id):
    expected = _rest(asr_server, an4_clip, model=model_id, decoder="beam")
    page.select_option("#model-select", model_id)
    page.click("label[for=decoder-beam]")  # what a user clicks: the radio itself is visually hidden
    assert page.is_checked("#decoder-beam") and page.is_visible("#beam-options")
    page.set_input_files("#file-input", str(an4_clip))
    state = _wait_done(page)
    if expected.status_code == 200:
        assert state == "done", page.text_content("#error")
        assert page.text_content("#transcript") == expected.json()["text"]
        assert page.text_content("#stat-decoder") == "beam"
    else:  # e.g. a model without an LM: the page shows the server's own message
        assert state == "error"
        assert page.text_content("#error-message") == expected.json()["error"]["message"]


def test_server_error_is_shown_as_its_message(page, asr_server, tmp_path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio\n" * 20)
    expected = _rest(asr_server, bogus)
    assert expected.status_code == 400
    page.set_input_files("#file-input", str(bogus))
    assert _wait_done(page) == "error"
    assert page.is_visible("#error")
    assert page.text_content("#error-message") == expected.json()["error"]["message"]
    assert "400" in page.text_content("#error-title")
    assert page.is_hidden("#result")


def _fake_microphone(playwright, asr_server, an4_clip, tmp_path, trailing_s=0.3):
    """A browser whose microphone plays ``an4_clip`` once (Chromium's fake capture device), on the page.

    Returns (context, page, page errors, seconds the recorder must have heard for the clip to be over).
    """
    audio, rate = sf.read(an4_clip, dtype="float32")
    lead = np.zeros(int(rate * 0.3), dtype=np.float32)
    wav = tmp_path / "mic.wav"
    sf.write(wav, np.concatenate([lead, audio, np.zeros(int(rate * trailing_s), dtype=np.float32)]), rate,
             subtype="PCM_16")
    context = _launch(playwright, ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                   f"--use-file-for-fake-audio-capture={wav}%noloop"])
    context.grant_permissions(["microphone"], origin=asr_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(asr_server.url + "/")
    page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
    return context, page, errors, (len(lead) + len(audio)) / rate + trailing_s / 2


def _wait_recorded(page, seconds: float) -> None:
    """Waits until the page's recorder has taken in ``seconds`` of microphone audio."""
    page.wait_for_function(f"Number(document.getElementById('record-time').dataset.seconds || 0) >= {seconds}",
                           timeout=int(seconds * 1000) + 30_000)


def test_recording_from_a_microphone_is_sent_as_wav(playwright, asr_server, an4_clip, tmp_path, artifacts):
    # Chromium's fake microphone plays a WAV file: record it through the page's Web Audio recorder.
    context, page, errors, seconds = _fake_microphone(playwright, asr_server, an4_clip, tmp_path)
    try:
        page.uncheck("#live-toggle")  # live off: the recording is uploaded when it stops
        page.click("#record-btn")
        page.wait_for_function("document.getElementById('record-btn').classList.contains('recording')",
                               timeout=10_000)
        _wait_recorded(page, seconds)
        with page.expect_request(lambda r: r.url.endswith("/transcribe") and r.method == "POST"):
            page.click("#record-btn")
        assert _wait_done(page) == "done", page.text_content("#error")
        # the clip the page uploaded (and plays) is a WAV it encoded itself
        header = page.evaluate("""async () => {
            const blob = await (await fetch(document.getElementById('player').src)).blob();
            const bytes = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
            return [blob.type, String.fromCharCode(...bytes.slice(0, 4)), String.fromCharCode(...bytes.slice(8, 12))];
        }""")
        assert header == ["audio/wav", "RIFF", "WAVE"], header
        assert page.text_content("#clip-name").startswith("recording-")
        duration = float(page.text_content("#stat-duration").split()[0])
        assert duration >= (seconds - 0.45) * 0.8, duration
        if asr_server.model.real:
            assert page.text_content("#transcript").strip()
        page.screenshot(path=str(artifacts / "web-page-recording.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()


# The recording the page kept, posted to POST /transcribe from the page: the REST answer for the same samples.
_REST_OF_RECORDING = """async (model) => {
    const blob = await (await fetch(document.getElementById('player').src)).blob();
    const form = new FormData();
    form.append('file', blob, 'recording.wav');
    form.append('model', model);
    form.append('decoder', 'greedy');
    return await (await fetch('/transcribe', {method: 'POST', body: form})).json();
}"""


def test_live_words_appear_while_recording_and_the_final_equals_rest(playwright, asr_server, an4_clip, model_id,
                                                                      tmp_path, artifacts):
    context, page, errors, seconds = _fake_microphone(playwright, asr_server, an4_clip, tmp_path, trailing_s=1.0)
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if r.url.endswith("/transcribe") else None)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        page.select_option("#model-select", model_id)
        page.click("#record-btn")
        # Words while the microphone is still recording (a random model may hear nothing: then any update).
        page.wait_for_function("""(needText) => {
            const transcript = document.getElementById('transcript');
            return document.getElementById('record-btn').classList.contains('recording')
                && document.body.dataset.state === 'live' && Number(transcript.dataset.interims) > 0
                && (!needText || transcript.textContent.trim().length > 0);
        }""", arg=asr_server.model.real, timeout=60_000)
        assert page.evaluate("document.getElementById('transcript').classList.contains('interim')")
        page.screenshot(path=str(artifacts / "web-page-live.png"), full_page=True)
        _wait_recorded(page, seconds)
        page.click("#record-btn")
        assert _wait_done(page) == "done", page.text_content("#error")
        assert [u.split("?")[0].endswith("/v1/realtime") for u in sockets] == [True], sockets
        assert not uploads, uploads  # the final came over the socket, not from the upload fallback
        final = page.text_content("#transcript")
        words = page.locator("#words .word .word-text").all_text_contents()
        assert not page.evaluate("document.getElementById('transcript').classList.contains('interim')")
        want = page.evaluate(_REST_OF_RECORDING, model_id)
        assert final == want["text"], want
        assert words == [w["word"] for w in want["words"]]
        assert page.text_content("#stat-model") == f"{want['model']['name']}@{want['model']['version']}"
        if asr_server.model.real:
            assert final.strip()
        assert not errors, errors
    finally:
        context.close()
