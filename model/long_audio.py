"""Pure functions that cut long audio into overlapping windows and stitch their CTC log-probs back.

Each window is run as its own batch item and decoded as it comes (service.engine, cli.windowed), so memory
stays bounded for hour-long files.
Frames near a window's edges see zero padding instead of real context, so at every seam
only the central frames are kept: the overlap is split at its midpoint, and each side
keeps the half nearer its own centre. Window starts are multiples of the model's frame
stride, so window frame ``t`` is global frame ``start // samples_per_frame + t`` and word
times computed on the stitched frames are absolute (no per-chunk drift, NeMo#1979).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_OVERLAP_S", "DEFAULT_WINDOW_S", "AudioWindow", "plan_windows", "stitch_log_probs"]

# The service's defaults (ASR_LONG_AUDIO_WINDOW_S / _OVERLAP_S), which `asr transcribe` and `transcribe-batch` use too.
DEFAULT_WINDOW_S = 30.0
DEFAULT_OVERLAP_S = 2.0


@dataclass(frozen=True)
class AudioWindow:
    """One window of a longer clip.

    Attributes:
        start_sample: first sample (inclusive); a multiple of ``samples_per_frame``.
        end_sample: last sample (exclusive).
        keep_from_frame: first global frame this window contributes.
        keep_to_frame: global frame where its contribution ends (exclusive); None = to its end.
        samples_per_frame: the model's frame stride in samples.
    """

    start_sample: int
    end_sample: int
    keep_from_frame: int
    keep_to_frame: int | None
    samples_per_frame: int

    @property
    def first_frame(self) -> int:
        """Global index of this window's frame 0."""
        return self.start_sample // self.samples_per_frame

    def kept(self, log_probs: np.ndarray) -> np.ndarray:
        """The frames of this window's (T, ...) log-probs that it contributes (see ``plan_windows``)."""
        lo = max(0, self.keep_from_frame - self.first_frame)
        hi = len(log_probs) if self.keep_to_frame is None else self.keep_to_frame - self.first_frame
        return log_probs[lo:max(lo, min(len(log_probs), hi))]


def plan_windows(num_samples: int, sample_rate: int, frame_duration_s: float, *,
                 window_s: float, overlap_s: float) -> tuple[AudioWindow, ...]:
    """Plans overlapping windows over a clip.

    Args:
        num_samples: clip length in samples.
        sample_rate: samples per second.
        frame_duration_s: seconds per model output frame (0.02 for QuartzNet).
        window_s: longest window in seconds; a clip no longer than this is one window.
        overlap_s: overlap between neighbours in seconds (less than ``window_s / 2``).

    Returns:
        Windows in time order; consecutive ``keep`` ranges tile the global frames exactly.
    """
    spf = max(1, round(frame_duration_s * sample_rate))
    window = max(spf, int(window_s * sample_rate) // spf * spf)
    overlap = int(round(overlap_s * sample_rate / spf)) * spf
    if overlap * 2 >= window:
        raise ValueError(f"overlap {overlap_s} s must be under half the window {window_s} s")
    if num_samples <= window:
        return (AudioWindow(0, num_samples, 0, None, spf),)
    step = window - overlap
    starts = [0]
    while starts[-1] + window < num_samples:
        starts.append(starts[-1] + step)
    ends = [min(s + window, num_samples) for s in starts]
    # The seam between windows i and i+1 is the middle of their overlap [starts[i+1], ends[i]).
    cuts = [((starts[i + 1] + ends[i]) // 2) // spf for i in range(len(starts) - 1)]
    windows = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        keep_from = cuts[i - 1] if i > 0 else 0
        keep_to = cuts[i] if i < len(cuts) else None
        windows.append(AudioWindow(start, end, keep_from, keep_to, spf))
    return tuple(windows)


def stitch_log_probs(windows: Sequence[AudioWindow], log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenates the kept frames of each window's (T_i, ...) log-probs into one (T, ...) array.

    ``...`` is (V+1,) for one network and (K, V+1) for an ensemble of K views.
    """
    if len(windows) != len(log_probs):
        raise ValueError(f"{len(windows)} windows but {len(log_probs)} log-prob arrays")
    if len(windows) == 1:
        return log_probs[0]
    return np.concatenate([window.kept(lp) for window, lp in zip(windows, log_probs)], axis=0)

