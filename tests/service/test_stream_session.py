"""StreamingSession on a fake, frame-local acoustic model: endpointing, interims, long segments, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from model.vocabulary import Vocabulary
from service.domain import LogProbsResult
from service.streaming import TAIL_STABILITY, StreamingOptions, StreamingSession, pcm16_to_float32
from tests.service.test_grpc_support import run

RATE = 16_000
LABELS = Vocabulary().labels  # " ", a-z, "'"; blank is index 28
SPF = 320  # 20 ms frames at 16 kHz


class FrameLevelEngine:
    """Frame t (samples [320t, 320t+320)) emits label ``round(100 * mean level) - 1``; level 0 is blank.

    Each frame depends on its own samples only, so buffered windows and one-pass decoding agree
    exactly, and a test can write the audio that spells a transcript.
    """

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.interim_calls: list[bool] = []

    async def log_probs(self, audio, model, *, deadline_s=None, api="grpc", interim=False):
        self.calls.append(len(audio))
        self.interim_calls.append(interim)
        num_frames = -(-(len(audio) // 160) // 2)
        out = np.full((num_frames, len(LABELS) + 1), -12.0, dtype=np.float32)
        for t in range(num_frames):
            level = float(np.mean(audio[t * SPF: (t + 1) * SPF])) if t * SPF < len(audio) else 0.0
            out[t, int(round(level * 100)) - 1 if level > 0.005 else len(LABELS)] = 0.0
        return LogProbsResult(out, SPF / RATE, LABELS, "fake", 1)


def spell(*pieces: tuple[str, float]) -> np.ndarray:
    """Audio for (text, seconds) pieces; text "" is silence. Letters get equal 40 ms-aligned shares."""
    parts = []
    for text, seconds in pieces:
        if not text:
            parts.append(np.zeros(int(seconds * RATE), np.float32))
            continue
        each = int(seconds * RATE / len(text)) // SPF * SPF
        for ch in text:
            level = (LABELS.index(ch) + 1) / 100
            parts += [np.full(each - SPF, level, np.float32), np.zeros(SPF, np.float32)]  # blank between letters
    return np.concatenate(parts)


def stream(audio, options, source_rate=RATE, message_s=0.1, engine=None):
    engine = engine or FrameLevelEngine()
    session = StreamingSession(engine, "fake@1", RATE, source_rate, options)

    async def main():
        results, step = [], int(message_s * source_rate)
        for offset in range(0, len(audio), step):
            session.add_audio(audio[offset: offset + step])
            while session.ready():
                results.extend(await session.step())
        return results + await session.finish()
    return run(main())


def test_silence_ends_a_segment_with_absolute_word_times():
    # Committed frames lag the audio by right_context_s + up to chunk_s, so the stream goes on
    # for a while after the silence; "stop" must not be glued to the first segment.
    audio = spell(("go on", 0.6), ("", 1.2), ("stop", 0.4), ("", 1.0))
    finals = [r for r in stream(audio, StreamingOptions(silence_ms=800)) if r.is_final]
    assert [f.text for f in finals] == ["go on", "stop"]
    assert finals[1].words[0].start_s == pytest.approx(1.8, abs=0.05)
    assert 0 < finals[0].confidence <= 1 and finals[0].stability == 0.0


class TwoMemberEngine(FrameLevelEngine):
    """An ensemble of the frame-level model and a copy that emits everything one frame later; its cheap
    path (``interim=True``), as the engine's, is the first member alone."""

    async def log_probs(self, audio, model, *, deadline_s=None, api="grpc", interim=False):
        own = (await super().log_probs(audio, model, interim=interim)).log_probs
        if interim:
            return LogProbsResult(own, SPF / RATE, LABELS, "fake", 1)
        late = np.concatenate([np.full((1, own.shape[1]), -12.0, np.float32), own[:-1]])
        late[0, -1] = 0.0  # the delayed member starts with a blank
        return LogProbsResult(np.stack([own, late], axis=1), SPF / RATE, LABELS, "fake", 1)


def test_an_ensemble_streams_like_its_members():
    audio = spell(("go on", 0.6), ("", 1.2), ("stop", 0.4), ("", 1.0))
    finals = [r for r in stream(audio, StreamingOptions(silence_ms=800), engine=TwoMemberEngine()) if r.is_final]
    assert [f.text for f in finals] == ["go on", "stop"]
    assert finals[1].words[0].start_s == pytest.approx(1.8, abs=0.05)


def test_an_ensemble_runs_its_windows_on_the_cheap_path_and_its_finals_on_the_whole_model():
    engine = TwoMemberEngine()
    audio = spell(("go on", 0.6), ("", 1.2), ("stop", 0.4), ("", 1.0))
    results = stream(audio, StreamingOptions(silence_ms=800), engine=engine)
    finals = [r for r in results if r.is_final]
    assert [f.text for f in finals] == ["go on", "stop"]
    full_passes, windows = engine.interim_calls.count(False), engine.interim_calls.count(True)
    # Whole-model passes only for finals: each final's, plus at most one candidate per final the whole model
    # did not confirm (its late member still speaks a frame after the cheap path's silence); every window,
    # one per chunk of audio, is a cheap-path run.
    assert len(finals) <= full_passes <= 2 * len(finals)
    assert windows >= len(audio) / RATE / StreamingOptions().chunk_s - 2
    assert [r.text for r in results if not r.is_final and r.text]  # interims from the cheap path still come


def test_no_endpointing_gives_one_final_and_interims_split_by_stability():
    audio = spell(("go on", 0.6), ("", 1.2), (" stop", 0.4))
    results = stream(audio, StreamingOptions(silence_ms=None))
    finals = [r for r in results if r.is_final]
    assert [f.text for f in finals] == ["go on stop"]
    interims = [r for r in results if not r.is_final]
    assert {r.stability for r in interims} <= {0.9, TAIL_STABILITY}
    assert any(r.stability == 0.9 for r in interims) and any(r.stability == TAIL_STABILITY for r in interims)
    assert all(not r.words for r in interims)


def test_long_segment_final_from_committed_frames_equals_one_pass():
    audio = spell(("abc def", 1.4), ("", 0.3), (" ghi", 0.6))
    one_pass = stream(audio, StreamingOptions(silence_ms=None))[-1]
    engine = FrameLevelEngine()
    options = StreamingOptions(silence_ms=None, max_redecode_s=0.5, left_context_s=0.32)
    buffered = stream(audio, options, engine=engine)[-1]
    assert buffered.text == one_pass.text == "abc def ghi"
    assert [w.start_s for w in buffered.words] == [w.start_s for w in one_pass.words]
    # No window spans the whole stream: the last model call is a flush window, not a re-decode.
    assert engine.calls[-1] < len(audio)


def test_leading_silence_is_dropped_but_times_stay_absolute():
    audio = spell(("", 4.0), ("yes", 0.3), ("", 0.2))
    options = StreamingOptions(max_leading_silence_s=2.0, final_left_context_s=0.0)
    engine = FrameLevelEngine()
    [final] = [r for r in stream(audio, options, engine=engine) if r.is_final]
    assert final.text == "yes"
    assert final.words[0].start_s == pytest.approx(4.0, abs=0.03)
    assert engine.calls[-1] < len(audio)  # the final re-decoded the trimmed segment only


def test_endpoint_final_carries_left_context_from_earlier_segments():
    audio = spell(("go", 0.4), ("", 1.2), ("up", 0.4), ("", 1.0))
    engine = FrameLevelEngine()
    finals = [r for r in stream(audio, StreamingOptions(silence_ms=800), engine=engine) if r.is_final]
    assert [f.text for f in finals] == ["go", "up"]
    assert engine.calls[-1] == len(audio)  # the last final re-read the stream from its start


def test_8khz_source_is_resampled_per_window():
    audio = spell(("ok", 0.4), ("", 0.2))
    downsampled = audio[::2].copy()  # piecewise-constant signal: plain decimation is enough here
    [final] = [r for r in stream(downsampled, StreamingOptions(), source_rate=8_000) if r.is_final]
    assert final.text == "ok"


def test_empty_stream_has_one_empty_final():
    [final] = stream(np.zeros(0, np.float32), StreamingOptions())
    assert final.is_final and final.text == ""


def test_pcm16_decoding():
    pcm = np.array([[0, 16384], [-32768, 32767]], dtype="<i2").tobytes()
    np.testing.assert_allclose(pcm16_to_float32(pcm, channels=2), [0.25, -0.5 + 32767 / 65536], atol=1e-6)
    with pytest.raises(ValueError, match="whole 16-bit frames"):
        pcm16_to_float32(b"\0\0\0", channels=1)


def test_a_segment_that_decodes_to_nothing_gives_no_empty_final():
    """Non-blank frames that spell no word (a lone space, a noise's stray frame) end no utterance."""
    audio = spell(("go", 0.4), ("", 1.2), (" ", 0.4), ("", 1.2), ("on", 0.4), ("", 1.0))
    finals = [r for r in stream(audio, StreamingOptions(silence_ms=800)) if r.is_final]
    assert [f.text for f in finals] == ["go", "on"]
    assert finals[1].words[0].start_s == pytest.approx(3.2, abs=0.05)  # 0.4 + 1.2 + 0.4 + 1.2 s before it
