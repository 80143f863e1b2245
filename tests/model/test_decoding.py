"""Tests for model.decoding.greedy_decode: CTC collapse, word times, confidences, shapes."""

from __future__ import annotations

import numpy as np
import pytest

from model.decoding import Transcript, WordTiming, greedy_decode
from model.vocabulary import ENGLISH_LABELS

LABELS = ENGLISH_LABELS  # " ", a..z, "'"; the blank is index 28
BLANK = len(LABELS)
_INDEX = {c: i for i, c in enumerate(LABELS)}


def _frames(path: str, peak: float = 0.9) -> np.ndarray:
    """Log-probs whose argmax per frame spells ``path``; "_" is the blank. Each frame's top prob is ``peak``."""
    ids = [BLANK if c == "_" else _INDEX[c] for c in path]
    probs = np.full((len(ids), len(LABELS) + 1), (1.0 - peak) / len(LABELS), dtype=np.float64)
    probs[np.arange(len(ids)), ids] = peak
    return np.log(probs).astype(np.float32)


@pytest.mark.parametrize("path, text", [
    ("hheel_llloo", "hello"),          # repeats collapse; the blank separates the double l
    ("hheelllloo", "helo"),           # without a blank the double l collapses
    ("a_a", "aa"),
    ("aa", "a"),
    ("a a", "a a"),
    ("_a__b_", "ab"),
    ("__  c  at", "c at"),            # leading/repeated spaces collapse, none at the ends
    ("cat  ", "cat"),
    ("don't", "don't"),
])
def test_collapse_repeats_then_drop_blanks(path, text):
    assert greedy_decode(_frames(path), LABELS, 0.02).text == text


def test_blank_is_the_last_index():
    # Index V (= len(labels)) is the blank; index V - 1 is a real label ("'").
    assert greedy_decode(_frames("_a_"), LABELS, 0.02).text == "a"
    only_blank = np.full((3, BLANK + 1), -10.0, dtype=np.float32)
    only_blank[:, BLANK] = -0.01
    assert greedy_decode(only_blank, LABELS, 0.02).text == ""
    last_label = np.full((3, BLANK + 1), -10.0, dtype=np.float32)
    last_label[:, BLANK - 1] = -0.01
    assert greedy_decode(last_label, LABELS, 0.02).text == "'"


@pytest.mark.parametrize("frame_s", [0.02, 0.04])
def test_word_times_in_seconds(frame_s):
    #            0123456789012
    path = "__hi___ _yo__"
    result = greedy_decode(_frames(path), LABELS, frame_s)
    assert result.text == "hi yo"
    assert [w.word for w in result.words] == ["hi", "yo"]
    hi, yo = result.words
    assert hi.start_s == pytest.approx(2 * frame_s) and hi.end_s == pytest.approx(4 * frame_s)
    assert yo.start_s == pytest.approx(9 * frame_s) and yo.end_s == pytest.approx(11 * frame_s)
    assert all(isinstance(w, WordTiming) for w in result.words)


def test_repeated_frames_extend_a_character_and_time_offset_shifts_words():
    result = greedy_decode(_frames("_ooo_k"), LABELS, 0.04, time_offset_s=10.0)
    (word,) = result.words
    assert word.word == "ok"
    assert word.start_s == pytest.approx(10.04) and word.end_s == pytest.approx(10.24)


def test_confidence_is_a_probability():
    confident = greedy_decode(_frames("go", peak=0.99), LABELS, 0.02).words[0].confidence
    unsure = greedy_decode(_frames("go", peak=0.3), LABELS, 0.02).words[0].confidence
    assert 0.0 <= unsure < confident <= 1.0
    assert confident == pytest.approx(0.99, abs=1e-3)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((200, BLANK + 1)) * 4
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    result = greedy_decode(log_probs, LABELS, 0.02)
    assert result.words and all(0.0 <= w.confidence <= 1.0 for w in result.words)
    assert all(w.start_s < w.end_s for w in result.words)
    assert result.score <= 0.0


def test_empty_output():
    for log_probs in (_frames("____"), np.zeros((0, BLANK + 1), dtype=np.float32)):
        result = greedy_decode(log_probs, LABELS, 0.02)
        assert result == Transcript(text="", words=(), score=0.0)
    assert greedy_decode(_frames("   "), LABELS, 0.02).text == ""
    assert greedy_decode(_frames("   "), LABELS, 0.02).words == ()


@pytest.mark.parametrize("shape", [(10,), (10, BLANK), (10, BLANK + 2), (2, 3, BLANK), (2, 3, 4, BLANK + 1)])
def test_wrong_shape_raises_value_error(shape):
    with pytest.raises(ValueError, match="log_probs"):
        greedy_decode(np.zeros(shape, dtype=np.float32), LABELS, 0.02)


def test_score_is_sum_of_emitted_log_probs():
    log_probs = _frames("_a_b", peak=0.5)
    assert greedy_decode(log_probs, LABELS, 0.02).score == pytest.approx(2 * np.log(0.5), rel=1e-5)


def test_word_pieces_start_words_at_the_marker():
    labels = ("\u2581one", "\u2581t", "w", "o", "\u2581e")
    blank = len(labels)
    path = [0, 0, blank, 1, 2, blank, 3, 4, 4, blank, 4]  # one, t w o, e, e (a blank separates the repeat)
    probs = np.full((len(path), blank + 1), 0.02, dtype=np.float64)
    probs[np.arange(len(path)), path] = 0.9
    t = greedy_decode(np.log(probs).astype(np.float32), labels, 0.08)
    assert t.text == "one two e e"
    assert [w.word for w in t.words] == ["one", "two", "e", "e"]
    assert (t.words[0].start_s, t.words[0].end_s) == (0.0, 0.16)
    assert (t.words[1].start_s, t.words[1].end_s) == (0.24, 0.56)
    assert t.words[2].end_s == 0.72 and t.words[3].start_s == 0.8


def test_sentencepiece_pieces_collapse_on_ids_and_time_words_from_the_marker():
    labels = ("<unk>", "\u2581se", "ven", "\u2581", "x", "\u2581two")  # a NeMo BPE vocabulary's shape
    blank = len(labels)
    # se ven | ▁ x (a bare marker starts "x") | two two (a blank separates the repeat) | <unk>
    path = [1, 1, 2, blank, 3, 4, 4, blank, 5, blank, 5, 0, blank]
    probs = np.full((len(path), blank + 1), 0.02, dtype=np.float64)
    probs[np.arange(len(path)), path] = 0.88
    t = greedy_decode(np.log(probs).astype(np.float32), labels, 0.08)
    assert t.text == "seven x two two \u2047"
    assert [w.word for w in t.words] == ["seven", "x", "two", "two", "\u2047"]
    assert (t.words[0].start_s, t.words[0].end_s) == (0.0, 0.24)  # frames 0-2
    assert (t.words[1].start_s, t.words[1].end_s) == (0.40, 0.56)  # from "x": the bare marker spells nothing
    assert t.words[4].start_s == 0.88 and t.words[4].end_s == 0.96
