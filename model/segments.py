"""Cuts CTC log-probs arriving in time order into segments that decode on their own, in bounded memory.

Decoding a long recording in one piece holds all of its log-probs (an hour of a 12-view
ensemble is 240 MB) and, for an ensemble, costs time in proportion to its square: candidate
transcripts are scored by their CTC likelihood over the whole recording (model.rescoring). A
frame where every view's likeliest label is the blank separates the greedy paths of every view:
nothing emitted before it merges with anything emitted after it. So the frames are cut at such
frames, and each segment is decoded alone, at a cost bounded by the segment's length.

A segment ends at the middle of the longest run of all-blank frames between ``min_frames`` and
``max_frames`` of its start: usually a pause between words. Only audio with no all-blank frame
in that whole span (a continuous stretch of ``max_frames - min_frames`` frames, 15 s by
default, without a single pause) is cut where the span ends; decoders then merge a label that
continues across the cut, as one greedy path would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_SEGMENT_S", "Segment", "SegmentLimits", "Segmenter", "blank_frames"]

# The longest stretch decoded as one: the service's long-audio window, so clips up to it decode
# exactly as they always did, in one piece.
DEFAULT_SEGMENT_S = 30.0


@dataclass(frozen=True)
class SegmentLimits:
    """Where a segment may end, in frames from its start.

    Attributes:
        min_frames: the earliest frame a cut is looked for at.
        max_frames: the longest segment; a cut is always made by then.
    """

    min_frames: int
    max_frames: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_frames < self.max_frames:
            raise ValueError(f"segment limits need 1 <= min_frames < max_frames, got {self}")

    @classmethod
    def of(cls, frame_duration_s: float, max_segment_s: float = DEFAULT_SEGMENT_S) -> "SegmentLimits":
        """Segments of at most ``max_segment_s``, cut in their second half."""
        max_frames = max(2, math.ceil(max_segment_s / frame_duration_s - 1e-9))
        return cls(max(1, max_frames // 2), max_frames)


@dataclass(frozen=True)
class Segment:
    """A segment's (T, V+1) or (T, K, V+1) log-probs and the global index of its first frame."""

    first_frame: int
    log_probs: np.ndarray


def blank_frames(log_probs: np.ndarray) -> np.ndarray:
    """(T,) bool: the blank (the last column) wins the frame; for an ensemble's (T, K, V+1), in every view.

    Endpointing counts these as silence, so a frame where any view hears speech is speech.
    """
    log_probs = np.asarray(log_probs)
    best_is_blank = log_probs.argmax(axis=-1) == log_probs.shape[-1] - 1
    return best_is_blank if log_probs.ndim == 2 else best_is_blank.all(axis=1)


class Segmenter:
    """Takes log-probs in time order (``feed``) and hands back whole segments; ``finish`` returns the rest.

    Holds at most ``max_frames`` plus one fed chunk.
    """

    def __init__(self, limits: SegmentLimits) -> None:
        self.limits = limits
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._first_frame = 0

    @property
    def first_frame(self) -> int:
        """Global index of the first frame not yet handed back in a segment."""
        return self._first_frame

    @property
    def pending_frames(self) -> int:
        return self._pending_frames

    @property
    def pending(self) -> Segment | None:
        """The frames fed but not yet handed back, as the segment they would end as now (None if none)."""
        if not self._pending_frames:
            return None
        return Segment(self._first_frame, self._joined())

    def feed(self, log_probs: np.ndarray) -> list[Segment]:
        """Appends (t, ...) frames; returns the segments they completed, in order."""
        if len(log_probs):
            self._pending.append(log_probs)
            self._pending_frames += len(log_probs)
        segments = []
        while self._pending_frames > self.limits.max_frames:
            frames = self._joined()
            cut = self._cut(frames)
            segments.append(Segment(self._first_frame, frames[:cut]))
            rest = frames[cut:]
            self._pending, self._pending_frames = [rest], len(rest)
            self._first_frame += cut
        return segments

    def finish(self) -> list[Segment]:
        """The frames still held, as the last segment ([] if none)."""
        last = self.pending
        self._pending, self._pending_frames = [], 0
        if last is None:
            return []
        self._first_frame += len(last.log_probs)
        return [last]

    def _joined(self) -> np.ndarray:
        if len(self._pending) > 1:
            self._pending = [np.concatenate(self._pending, axis=0)]
        return self._pending[0]

    def _cut(self, frames: np.ndarray) -> int:
        """The middle of the longest all-blank run in [min_frames, max_frames); max_frames if there is none."""
        lo, hi = self.limits.min_frames, self.limits.max_frames
        blank = blank_frames(frames[lo:hi])
        if not blank.any():
            return hi
        edges = np.diff(np.concatenate(([0], blank.astype(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        longest = int(np.argmax(ends - starts))
        return lo + int(starts[longest] + ends[longest]) // 2
