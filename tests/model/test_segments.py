"""model.segments and the incremental decoders: cuts at pauses, bounded memory, and the same text as one pass."""

from __future__ import annotations

import numpy as np
import pytest

import model.rescoring as rescoring
from model.decoding import GreedyDecoder, greedy_decode
from model.segments import Segmenter, SegmentLimits, blank_frames
from model.vocabulary import ENGLISH_LABELS

LABELS = ENGLISH_LABELS
BLANK = len(LABELS)
LIMITS = SegmentLimits(min_frames=20, max_frames=40)


def _path_frames(ids: list[int], peak: float = 0.9) -> np.ndarray:
    probs = np.full((len(ids), len(LABELS) + 1), (1.0 - peak) / len(LABELS), dtype=np.float64)
    probs[np.arange(len(ids)), ids] = peak
    return np.log(probs).astype(np.float32)


def _random_speech(frames: int, seed: int, pause_every: int = 0) -> np.ndarray:
    """A random best path: letters and spaces among blanks, with an all-blank pause every ``pause_every`` frames."""
    rng = np.random.default_rng(seed)
    ids = rng.choice([BLANK] * 3 + list(range(BLANK)), size=frames).tolist()
    if pause_every:
        for start in range(pause_every, frames, pause_every):
            ids[start:start + 3] = [BLANK] * 3
    return _path_frames(ids, peak=float(rng.uniform(0.5, 0.95)))


def _fed(decoder: GreedyDecoder, log_probs: np.ndarray, chunk: int):
    for i in range(0, len(log_probs), chunk):
        decoder.feed(log_probs[i:i + chunk])
    return decoder.finish()


def test_limits_of_a_frame_rate_are_the_window_and_its_second_half() -> None:
    assert SegmentLimits.of(0.08) == SegmentLimits(187, 375)  # 30 s of 80 ms frames
    assert SegmentLimits.of(0.02) == SegmentLimits(750, 1500)
    with pytest.raises(ValueError):
        SegmentLimits(10, 10)


def test_a_segment_ends_in_the_middle_of_the_longest_pause_between_min_and_max() -> None:
    ids = [1] * 60
    ids[22:25] = [BLANK] * 3   # a short pause
    ids[30:37] = [BLANK] * 7   # the longest pause in [20, 40): its middle is frame 33
    ids[44:54] = [BLANK] * 10  # longer, but past max_frames
    segmenter = Segmenter(LIMITS)
    segments = segmenter.feed(_path_frames(ids))
    assert [(s.first_frame, len(s.log_probs)) for s in segments] == [(0, 33)]
    assert blank_frames(segments[0].log_probs[-3:]).all() and segmenter.pending_frames == 27
    rest = segmenter.finish()
    assert [(s.first_frame, len(s.log_probs)) for s in rest] == [(33, 27)] and segmenter.finish() == []


def test_without_a_pause_the_cut_falls_at_max_frames() -> None:
    segments = Segmenter(LIMITS).feed(_path_frames([1, 2] * 50))
    assert [(s.first_frame, len(s.log_probs)) for s in segments] == [(0, 40), (40, 40)]


def test_memory_is_bounded_by_a_segment_and_one_chunk() -> None:
    segmenter = Segmenter(LIMITS)
    most = 0
    for i in range(0, 2000, 7):
        segmenter.feed(_random_speech(7, i))
        most = max(most, segmenter.pending_frames)
    assert most <= LIMITS.max_frames


@pytest.mark.parametrize("pause_every", [0, 25])  # 0: the cuts fall inside speech, and labels merge across them
@pytest.mark.parametrize("chunk", [1, 13, 500])
def test_one_network_decoded_a_segment_at_a_time_equals_one_pass(pause_every, chunk) -> None:
    log_probs = _random_speech(400, seed=chunk + pause_every, pause_every=pause_every)
    whole = greedy_decode(log_probs, LABELS, 0.02)  # 400 frames: ten segments of LIMITS, one of the default
    assert len(log_probs) <= SegmentLimits.of(0.02).max_frames
    pieces = _fed(GreedyDecoder(LABELS, 0.02, limits=LIMITS), log_probs, chunk)
    assert pieces.text == whole.text and len(whole.text) > 50
    assert pieces.words == whole.words
    assert pieces.score == pytest.approx(whole.score, rel=1e-5)


def test_a_label_that_spans_a_forced_cut_is_one_emission() -> None:
    log_probs = _path_frames([1] * 39 + [2] * 2 + [BLANK] * 10)  # "a" fills frames 0-38, "b" 39-40: cut at 40
    decoded = _fed(GreedyDecoder(LABELS, 0.02, limits=LIMITS), log_probs, 51)
    assert decoded.text == "ab"
    assert [(w.word, w.start_s, w.end_s) for w in decoded.words] == [("ab", 0.0, 0.82)]


def test_preview_shows_what_finish_would_and_changes_nothing() -> None:
    log_probs = _random_speech(150, seed=3, pause_every=25)
    decoder = GreedyDecoder(LABELS, 0.02, limits=LIMITS)
    decoder.feed(log_probs[:100])
    previewed = decoder.preview(log_probs[100:])
    assert decoder.preview(log_probs[100:]) == previewed
    decoder.feed(log_probs[100:])
    finished, whole = decoder.finish(), greedy_decode(log_probs, LABELS, 0.02)
    assert (finished.text, finished.words) == (previewed.text, previewed.words) == (whole.text, whole.words)
    assert finished.score == pytest.approx(previewed.score, rel=1e-6)  # float32 sums over other partitions


def test_an_ensemble_scores_candidates_one_segment_at_a_time(monkeypatch) -> None:
    """Each candidate is scored over one segment's frames, never over the whole recording: linear time."""
    views = np.stack([_random_speech(600, seed=k, pause_every=25) for k in range(3)], axis=1)
    scored_frames = []
    original = rescoring.views_log_likelihood

    def counting(log_probs, ids, blank):
        scored_frames.append(len(log_probs))
        return original(log_probs, ids, blank)

    monkeypatch.setattr(rescoring, "views_log_likelihood", counting)
    decoded = _fed(GreedyDecoder(LABELS, 0.02, limits=LIMITS), views, 37)
    # At most 3 candidates (one per view) per segment, each over at most max_frames frames.
    assert max(scored_frames) <= LIMITS.max_frames and sum(scored_frames) <= 3 * len(views)
    assert decoded.text and len(scored_frames) >= 600 // LIMITS.max_frames


def test_a_short_ensemble_clip_is_one_segment_as_before() -> None:
    views = np.stack([_random_speech(30, seed=k) for k in range(3)], axis=1)
    candidates = {greedy_decode(views[:, k], LABELS, 0.02).text for k in range(3)}
    best = greedy_decode(views, LABELS, 0.02)
    assert best.text in candidates
    from model.vocabulary import Vocabulary
    scores = {text: rescoring.ensemble_log_likelihood(views, text, Vocabulary(LABELS)) for text in candidates}
    assert scores[best.text] == max(scores.values())
