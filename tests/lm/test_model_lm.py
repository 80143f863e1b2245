"""lm.model_lm: where a beam decode's LM and weights come from, and what a word's confidence is."""

from __future__ import annotations

import numpy as np
import pytest

from lm.beam import BeamDecoder
from lm.model_lm import LMChoice, beam_transcripts, choose_lm
from tests.lm.helpers import LABELS, make_log_probs

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
