"""One process-wide memory budget, counted in seconds of audio, that every request and stream draws from.

What a request holds grows with the audio it holds: decoded samples (4 bytes per sample at the
model's rate) and their log-probs (4 bytes per label per view per output frame). So the budget
is kept in seconds of audio at the model's rate, ``ASR_MAX_BUFFERED_AUDIO_S``, and what a second
costs in bytes is ``bytes_per_audio_second``: for the default model (16 kHz, 12 views of 113
labels every 80 ms) 64,000 + 67,800 bytes. Offline requests reserve what they will hold before
they decode anything (all of an in-memory clip; the windows in flight of a file read a window at
a time, plus the decoder's pending segment); streams reserve as their buffers grow. A
reservation that would go over the budget is refused with ``MemoryBudgetError`` (429 /
RESOURCE_EXHAUSTED), except the first one while nothing is held, so a single request within the
duration limit always runs.
"""

from __future__ import annotations

from service.errors import MemoryBudgetError

__all__ = ["AudioBudget", "Reservation", "bytes_per_audio_second"]


def bytes_per_audio_second(sample_rate: int, frame_duration_s: float, views: int, num_labels: int) -> float:
    """Bytes one budget second stands for: float32 samples plus the float32 log-probs they yield (blank included)."""
    return 4.0 * sample_rate + 4.0 * views * (num_labels + 1) / frame_duration_s


# Amounts are kept in whole microseconds: float deltas added and taken back in another order leave a residue
# (6e-15 s was seen) that reads as "something is held", which would end the first-reservation exemption below.
_US_PER_S = 1_000_000


class Reservation:
    """Seconds held from an ``AudioBudget``; ``resize`` as the holder's buffers change, ``release`` at the end."""

    def __init__(self, budget: "AudioBudget", what: str) -> None:
        self._budget = budget
        self.what = what
        self._us = 0

    @property
    def seconds(self) -> float:
        return self._us / _US_PER_S

    def resize(self, seconds: float) -> None:
        """Holds ``seconds`` in all from now on.

        Raises:
            MemoryBudgetError: growing by that much would go over the budget (nothing changes then).
        """
        self._budget._change(self, round(max(0.0, seconds) * _US_PER_S) - self._us)

    def release(self) -> None:
        self._budget._change(self, -self._us)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class AudioBudget:
    """Seconds of audio (at each model's rate) all requests and streams may hold at once.

    Not thread-safe: used from the event loop only.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = float(limit_s)
        self._held_us = 0

    @property
    def held_s(self) -> float:
        return self._held_us / _US_PER_S

    def reserve(self, seconds: float, what: str) -> Reservation:
        """A new reservation of ``seconds`` for ``what`` (a word for the refusal message: "request", "stream").

        Raises:
            MemoryBudgetError: it would go over the budget while something else is held.
        """
        reservation = Reservation(self, what)
        reservation.resize(seconds)
        return reservation

    def _change(self, reservation: Reservation, delta_us: int) -> None:
        if delta_us > 0 and self._held_us > 0 and self._held_us + delta_us > self.limit_s * _US_PER_S:
            raise MemoryBudgetError(f"the server holds {self.held_s:.0f} s of audio; this {reservation.what} needs "
                                    f"{delta_us / _US_PER_S:.0f} s more and the limit is {self.limit_s:.0f} s, so "
                                    "retry shortly")
        self._held_us += delta_us
        reservation._us += delta_us
