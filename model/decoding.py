"""Greedy CTC decoding with per-word times and confidences, and the shared result records."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.text import WORD_START, display_labels


@dataclass(frozen=True)
class WordTiming:
    """One recognised word.

    Attributes:
        word: the word's text.
        start_s: time of the first frame that emitted one of its characters, in seconds.
        end_s: end of the last such frame, in seconds.
        confidence: mean over its characters of the frame probability of the emitted character, in [0, 1].
    """

    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True)
class Transcript:
    """A decoded hypothesis: text plus word timings (may be empty when not requested)."""

    text: str
    words: tuple[WordTiming, ...] = field(default_factory=tuple)
    score: float = 0.0


def greedy_decode(
    log_probs: np.ndarray,
    labels: tuple[str, ...] | list[str],
    frame_duration_s: float,
    *,
    time_offset_s: float = 0.0,
) -> Transcript:
    """Best-path CTC decoding: argmax per frame, collapse repeats, drop blanks (the last index).

    For an ensemble's (T, K, V+1) log-probs, each view's best path is a candidate, and the
    one with the highest mean CTC likelihood over the views wins (model.rescoring).

    Args:
        log_probs: float array of shape (T, V+1) holding only the valid frames, or (T, K, V+1)
            for an ensemble of K views (members, each at each input speed).
        labels: the V labels; " " separates words, or, for word pieces, a label starting
            with "▁" begins one (a SentencePiece vocabulary's "<unk>" is the word "⁇").
        frame_duration_s: seconds per output frame (0.02 for the stock models).
        time_offset_s: added to every time, for chunks of a longer stream.

    Returns:
        The Transcript; ``score`` is the sum of the emitted frames' log-probs (for an ensemble:
        the winner's mean CTC log-likelihood).
    """
    log_probs = np.asarray(log_probs, dtype=np.float32)
    if log_probs.ndim == 3:
        return _ensemble_greedy(log_probs, labels, frame_duration_s, time_offset_s)
    if log_probs.ndim != 2 or log_probs.shape[1] != len(labels) + 1:
        raise ValueError(f"log_probs must be (T, {len(labels) + 1}), got {log_probs.shape}")
    blank = len(labels)
    best = log_probs.argmax(axis=1)
    best_lp = log_probs[np.arange(len(best)), best]
    tokens: list[tuple[int, int, int, float]] = []  # (label id, first frame, last frame, max prob)
    prev = blank
    for t, token in enumerate(best.tolist()):
        if token != blank:
            prob = float(np.exp(best_lp[t]))
            if token == prev and tokens:
                label, first, _, p = tokens[-1]
                tokens[-1] = (label, first, t, max(p, prob))
            else:
                tokens.append((token, t, t, prob))
        prev = token
    score = float(best_lp[best != blank].sum())
    shown = display_labels(labels)
    text = "".join(shown[tok[0]] for tok in tokens).replace(WORD_START, " ")
    words = _group_words(tokens, shown, frame_duration_s, time_offset_s)
    return Transcript(text=" ".join(text.split()), words=words, score=score)


def _ensemble_greedy(log_probs: np.ndarray, labels, frame_s: float, offset_s: float) -> Transcript:
    from model.rescoring import ensemble_log_likelihood  # torch; single models never need it
    from model.vocabulary import Vocabulary

    candidates: dict[str, Transcript] = {}
    for k in range(log_probs.shape[1]):
        transcript = greedy_decode(log_probs[:, k], labels, frame_s, time_offset_s=offset_s)
        candidates.setdefault(transcript.text, transcript)  # the first member to find a text times its words
    vocabulary = Vocabulary(tuple(labels))
    scored = [(ensemble_log_likelihood(log_probs, text, vocabulary), text) for text in candidates]
    score, text = max(scored, key=lambda pair: pair[0])
    return Transcript(text=text, words=candidates[text].words, score=score)


def _group_words(tokens, labels, frame_s: float, offset_s: float) -> tuple[WordTiming, ...]:
    words: list[WordTiming] = []
    current: list[tuple[int, int, int, float]] = []

    def flush() -> None:
        if current:
            word = "".join(labels[t[0]] for t in current).replace(WORD_START, "")
            words.append(WordTiming(word, round(offset_s + current[0][1] * frame_s, 3),
                                    round(offset_s + (current[-1][2] + 1) * frame_s, 3),
                                    round(float(np.mean([t[3] for t in current])), 4)))
            current.clear()

    for tok in tokens:
        label = labels[tok[0]]
        if label == " ":
            flush()
        elif label.startswith(WORD_START):
            flush()
            if len(label) > 1:
                current.append(tok)
            if len(label) > 1 and label.endswith(WORD_START):  # a piece that is a whole word by itself
                flush()
        else:
            current.append(tok)
    flush()
    return tuple(words)
