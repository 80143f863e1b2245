"""Greedy CTC decoding with per-word times and confidences, and the shared result records."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.segments import Segment, SegmentLimits, Segmenter
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
    one with the highest mean CTC likelihood over the views wins (model.rescoring), segment by
    segment (model.segments): a clip of up to 30 s is one segment.

    Args:
        log_probs: float array of shape (T, V+1) holding only the valid frames, or (T, K, V+1)
            for an ensemble of K views (members, each at each input speed).
        labels: the V labels; " " separates words, or, for word pieces, a label starting
            with "▁" begins one (a SentencePiece vocabulary's "<unk>" is the word "⁇").
        frame_duration_s: seconds per output frame (0.02 for the stock models).
        time_offset_s: added to every time, for chunks of a longer stream.

    Returns:
        The Transcript; ``score`` is the sum of the emitted frames' log-probs (for an ensemble:
        the sum over segments of the winners' mean CTC log-likelihoods).
    """
    decoder = GreedyDecoder(labels, frame_duration_s, time_offset_s=time_offset_s)
    decoder.feed(log_probs)
    return decoder.finish()


# (label id, first frame, last frame, top probability): one emitted label, frames global.
_Token = tuple[int, int, int, float]


class GreedyDecoder:
    """Greedy CTC decoding of log-probs fed in time order, in memory and time linear in their length.

    Frames are decoded a segment at a time (model.segments); only the emitted labels are kept.
    ``greedy_decode`` is ``feed`` of everything, then ``finish``.

    Args:
        labels, frame_duration_s, time_offset_s: as ``greedy_decode``'s.
        limits: segment bounds (default: 30 s segments).
    """

    def __init__(self, labels, frame_duration_s: float, *, time_offset_s: float = 0.0,
                 limits: SegmentLimits | None = None) -> None:
        self.labels = tuple(labels)
        self.frame_duration_s = frame_duration_s
        self.time_offset_s = time_offset_s
        self._segmenter = Segmenter(limits or SegmentLimits.of(frame_duration_s))
        self._tokens: list[_Token] = []
        self._score = 0.0

    @property
    def pending_frames(self) -> int:
        """Frames fed and held, not yet decoded (at most a segment and one fed chunk)."""
        return self._segmenter.pending_frames

    def feed(self, log_probs: np.ndarray) -> None:
        """Adds the next (t, V+1) or (t, K, V+1) frames."""
        log_probs = np.asarray(log_probs, dtype=np.float32)
        if log_probs.ndim not in (2, 3) or log_probs.shape[-1] != len(self.labels) + 1:
            raise ValueError(f"log_probs must be (T, {len(self.labels) + 1}) or (T, K, {len(self.labels) + 1}), "
                             f"got {log_probs.shape}")
        for segment in self._segmenter.feed(log_probs):
            tokens, score = self._decode(segment)
            self._append(tokens)
            self._score += score

    def preview(self, tail: np.ndarray | None = None) -> Transcript:
        """The transcript of everything fed, plus ``tail`` frames after it, without changing the state."""
        tokens, score = list(self._tokens), self._score
        pending = self._segmenter.pending
        frames = [] if pending is None else [pending.log_probs]
        if tail is not None and len(tail):
            frames.append(np.asarray(tail, dtype=np.float32))
        if frames:
            more, more_score = self._decode(Segment(self._segmenter.first_frame, np.concatenate(frames, axis=0)))
            _join(tokens, more)
            score += more_score
        return self._transcript(tokens, score)

    def finish(self) -> Transcript:
        """The transcript of every frame fed; the decoder is then empty, ready for frames after them."""
        for segment in self._segmenter.finish():
            tokens, score = self._decode(segment)
            self._append(tokens)
            self._score += score
        return self._transcript(self._tokens, self._score)

    def _append(self, tokens: list[_Token]) -> None:
        _join(self._tokens, tokens)

    def _decode(self, segment: Segment) -> tuple[list[_Token], float]:
        if segment.log_probs.ndim == 3:
            return self._ensemble_segment(segment)
        return _best_path(segment.log_probs, segment.first_frame)

    def _ensemble_segment(self, segment: Segment) -> tuple[list[_Token], float]:
        from model.rescoring import views_log_likelihood  # torch; single models never need it

        views = segment.log_probs
        candidates: dict[tuple[int, ...], list[_Token]] = {}
        for k in range(views.shape[1]):
            tokens, _ = _best_path(views[:, k], segment.first_frame)
            candidates.setdefault(tuple(t[0] for t in tokens), tokens)  # the first view to find a text times it
        blank = len(self.labels)
        scored = [(views_log_likelihood(views, ids, blank), ids) for ids in candidates]
        score, ids = max(scored, key=lambda pair: pair[0])
        return candidates[ids], score

    def _transcript(self, tokens: list[_Token], score: float) -> Transcript:
        shown = display_labels(self.labels)
        text = "".join(shown[tok[0]] for tok in tokens).replace(WORD_START, " ")
        words = _group_words(tokens, shown, self.frame_duration_s, self.time_offset_s)
        return Transcript(text=" ".join(text.split()), words=words, score=score)


def _best_path(log_probs: np.ndarray, first_frame: int) -> tuple[list[_Token], float]:
    """One network's greedy path over (T, V+1) frames: its tokens and the sum of the emitted frames' log-probs."""
    if not len(log_probs):
        return [], 0.0
    blank = log_probs.shape[1] - 1
    best = log_probs.argmax(axis=1)
    best_lp = log_probs[np.arange(len(best)), best]
    # Runs of one label are one emission; a blank between two equal labels separates them.
    starts = np.concatenate(([0], np.flatnonzero(np.diff(best)) + 1))
    ends = np.concatenate((starts[1:], [len(best)]))
    peaks = np.exp(np.maximum.reduceat(best_lp, starts))
    tokens = [(int(best[s]), first_frame + int(s), first_frame + int(e) - 1, float(p))
              for s, e, p in zip(starts, ends, peaks) if best[s] != blank]
    return tokens, float(best_lp[best != blank].sum())


def _join(tokens: list[_Token], after: list[_Token]) -> None:
    """Appends ``after`` to ``tokens``, merging a label that runs on across the seam (only after a cut with no blank)."""
    if tokens and after and tokens[-1][0] == after[0][0] and tokens[-1][2] + 1 == after[0][1]:
        label, first, _, p = tokens[-1]
        tokens[-1] = (label, first, after[0][2], max(p, after[0][3]))
        after = after[1:]
    tokens.extend(after)


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
