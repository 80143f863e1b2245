"""lm.model_lm: where a beam decode's LM and weights come from, and what a word's confidence is."""

from __future__ import annotations

import numpy as np
import pytest

from lm.beam import BeamDecoder
from lm.model_lm import BeamTranscriber, LMChoice, beam_transcripts, choose_lm
from tests.lm.helpers import LABELS, make_log_probs, spell

RECORDED = {"default_lm": "an4-lm@6", "default_lm_alpha": 0.1, "default_lm_beta": 3.0}


@pytest.mark.parametrize("request_kwargs, expected", [
    ({}, LMChoice("an4-lm@6", 0.1, 3.0)),                                  # the model's LM, tuned for it
    ({"alpha": 0.7}, LMChoice("an4-lm@6", 0.7, 3.0)),                      # the request first, field by field
    ({"lm": "other@1"}, LMChoice("other@1", 0.5, 1.0)),                    # another LM: not its tuned weights
    ({"lm": "an4-lm@6", "beta": 0.0}, LMChoice("an4-lm@6", 0.1, 0.0)),    # naming the model's LM is the same
    ({"use_lm": False}, LMChoice(None, 0.5, 1.0)),
    ({"default_alpha": 2.0, "lm": "x"}, LMChoice("x", 2.0, 1.0)),          # the caller's default last
])
def test_the_request_wins_then_the_models_recorded_lm_then_the_default(request_kwargs, expected) -> None:
    assert choose_lm(RECORDED, **request_kwargs) == expected


def test_without_a_recorded_lm_the_defaults_apply() -> None:
    assert choose_lm({}) == LMChoice(None, 0.5, 1.0)
    assert choose_lm({}, lm="x", beta=2.0) == LMChoice("x", 0.5, 2.0)


def test_confidence_is_the_mean_top_probability_where_a_character_wins() -> None:
    # "ab" with a blank frame inside the word: that frame does not count.
    frames = [{"": 0.9}, {"a": 0.9}, {"a": 0.8}, {"": 0.6, "a": 0.3}, {"b": 0.7}, {"b": 0.75}, {"": 0.9}]
    log_probs = make_log_probs(frames)
    top, emits = np.exp(log_probs.max(axis=1)), log_probs.argmax(axis=1) != len(LABELS)
    [transcript] = beam_transcripts(BeamDecoder(LABELS), log_probs, 0.02, LMChoice(None, 0.5, 1.0), beam_width=8)
    assert transcript.text == "ab"
    [word] = transcript.words
    start, end = round(word.start_s / 0.02), round(word.end_s / 0.02)
    span = slice(start, end)
    assert (~emits[span]).any() and emits[span].any()  # the span holds a blank frame and character frames
    assert word.confidence == round(float(top[span][emits[span]].mean()), 4)
    assert word.confidence != round(float(top[span].mean()), 4)  # the all-frames mean would differ


def _utterance(words: list[str]) -> list[dict[str, float]]:
    """Frames that spell ``words``, each followed by a space and a pause of blank frames."""
    frames: list[dict[str, float]] = []
    for word in words:
        frames += spell([{c: 0.9} for c in word + " "]) + [{"": 0.95}] * 6
    return frames


def test_a_long_recording_is_searched_a_segment_at_a_time_with_the_lm_state_carried(tiny_lm, monkeypatch) -> None:
    """Three segments: each search starts from the state the previous one ended in; texts and times join."""
    from model.segments import SegmentLimits

    log_probs = make_log_probs(_utterance(["yes", "two", "cats", "say", "yes", "two", "dogs"] * 2))
    decoder = BeamDecoder(LABELS, tiny_lm.binary_path, tiny_lm.unigrams)
    calls = []
    original = decoder.decode

    def recording(frames, **kwargs):
        calls.append((len(frames), kwargs["lm_start_state"]))
        hyps = original(frames, **kwargs)
        calls[-1] += (hyps[0].lm_state,)
        return hyps

    monkeypatch.setattr(decoder, "decode", recording)
    limits = SegmentLimits(min_frames=40, max_frames=80)
    search = BeamTranscriber(decoder, 0.02, LMChoice("lm", 0.5, 1.0), beam_width=16, limits=limits)
    for i in range(0, len(log_probs), 25):
        search.feed(log_probs[i:i + 25])
    [best] = search.finish()
    assert best.text == "yes two cats say yes two dogs yes two cats say yes two dogs"
    assert len(calls) >= 3 and all(frames <= limits.max_frames for frames, _, _ in calls)
    assert calls[0][1] is None and all(calls[i][1] is calls[i - 1][2] for i in range(1, len(calls)))
    starts = [w.start_s for w in best.words]
    assert starts == sorted(starts) and starts[-1] > (len(log_probs) - 20) * 0.02  # times are global


def test_the_n_best_of_a_segmented_search_are_the_best_sums_of_the_segments() -> None:
    """Two segments with two hypotheses each: the best two of the four combinations, by total score."""
    from model.decoding import Transcript

    class Fixed:
        labels = LABELS

        def __init__(self) -> None:
            self.results = [[("a", -1.0), ("b", -1.5)], [("c", -0.2), ("d", -3.0)]]

        def decode(self, frames, **kwargs):
            from lm.beam import BeamHypothesis
            return [BeamHypothesis(text, score, score, 0.0, ()) for text, score in self.results.pop(0)]

    from model.segments import SegmentLimits
    search = BeamTranscriber(Fixed(), 0.02, LMChoice(None, 0.5, 1.0), num_best=2,
                             limits=SegmentLimits(min_frames=1, max_frames=2))
    search.feed(make_log_probs([{"a": 0.9}] * 3))
    best = search.finish()
    assert [(t.text, round(t.score, 3)) for t in best] == [("a c", -1.2), ("b c", -1.7)]
    assert isinstance(best[0], Transcript)


def test_a_clip_of_one_segment_is_decoded_exactly_as_one_call(tiny_lm) -> None:
    log_probs = make_log_probs(_utterance(["yes", "two", "cats"]))
    decoder = BeamDecoder(LABELS, tiny_lm.binary_path, tiny_lm.unigrams)
    choice = LMChoice("lm", 0.5, 1.0)
    hyps = decoder.decode(log_probs, beam_width=16, num_best=3, alpha=0.5, beta=1.0)
    found = beam_transcripts(decoder, log_probs, 0.02, choice, beam_width=16, num_best=3)
    assert [(t.text, t.score) for t in found] == [(" ".join(h.text.split()), h.score) for h in hyps]
