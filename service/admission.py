"""Deadlines that fit the work: a request's time budget from its length, and refusals before the work, not after.

A server-side deadline grows with the audio: ``request_timeout_s`` plus
``request_timeout_per_audio_s`` per second of it (60 s + 0.1 s/s: 414 s for an hour), so an
hour-long upload is never given a minute. What each model gets through is measured (audio
seconds per compute second of its long batches, a moving average seeded by a long window at
warm-up). A long request is then refused up front when it cannot finish in time: with 413 when
its audio alone needs more than its deadline leaves (a client's 2 s deadline on an hour), with
429 when the long work already admitted ahead of it would push it past (``AdmissionError``'s two
subclasses). Short requests (one window) go ahead of long ones in the batcher (service.batcher's
priorities), so only long work queues behind long work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from service.errors import PayloadTooLargeError, QueueFullError

__all__ = ["LongJob", "RateEstimate", "admit_long", "request_deadline"]

# Batches with less audio than this are overhead-bound and say little about long work's rate.
_MIN_MEASURED_AUDIO_S = 10.0
_WEIGHT = 0.2


class RateEstimate:
    """Audio seconds a model gets through per compute second, over its batches of long audio (thread-safe)."""

    def __init__(self) -> None:
        self._rate: float | None = None
        self._lock = threading.Lock()

    @property
    def audio_s_per_s(self) -> float | None:
        """The moving average; None before the first long batch."""
        return self._rate

    def observe(self, audio_s: float, compute_s: float) -> None:
        """Adds one batch (ignored when it held under 10 s of audio)."""
        if audio_s < _MIN_MEASURED_AUDIO_S or compute_s <= 0:
            return
        rate = audio_s / compute_s
        with self._lock:
            self._rate = rate if self._rate is None else (1 - _WEIGHT) * self._rate + _WEIGHT * rate


def request_deadline(started: float, duration_s: float, client_deadline: float | None, *, timeout_s: float,
                     timeout_per_audio_s: float) -> float:
    """The ``time.monotonic()`` deadline of a request: the server's budget for its length, or the client's if sooner."""
    budget = started + timeout_s + timeout_per_audio_s * duration_s
    return budget if client_deadline is None else min(client_deadline, budget)


@dataclass(eq=False)  # jobs are told apart by identity: two requests may have the same audio left
class LongJob:
    """A long request in flight: the audio it has still to get through, at its model's measured rate."""

    remaining_audio_s: float
    rate: RateEstimate

    @property
    def remaining_s(self) -> float:
        rate = self.rate.audio_s_per_s
        return 0.0 if not rate else self.remaining_audio_s / rate


def admit_long(duration_s: float, rate: RateEstimate, time_left_s: float, ahead: list[LongJob]) -> LongJob:
    """Admits a long request, or refuses it before any work.

    Args:
        duration_s: its audio.
        rate: its model's measured rate (an unmeasured model admits everything).
        time_left_s: seconds until its deadline.
        ahead: the long requests already in flight.

    Raises:
        PayloadTooLargeError: its audio alone needs more time than it has (413 / INVALID_ARGUMENT).
        QueueFullError: the long work ahead of it leaves too little (429 / RESOURCE_EXHAUSTED).
    """
    job = LongJob(duration_s, rate)
    speed = rate.audio_s_per_s
    if speed:
        own, queued = job.remaining_s, sum(other.remaining_s for other in ahead)
        if own > time_left_s:
            raise PayloadTooLargeError(
                f"{duration_s:.0f} s of audio needs about {own:.0f} s at this server's measured speed "
                f"({speed:.0f}x real time), and the request's deadline leaves {time_left_s:.0f} s")
        if own + queued > time_left_s:
            raise QueueFullError(
                f"the server is busy with {queued:.0f} s of long audio work; {duration_s:.0f} s more would end "
                f"after the request's deadline ({time_left_s:.0f} s), so retry later")
    return job
