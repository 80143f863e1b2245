"""Transport-neutral request/result records and the error types every transport maps to a status."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.decoding import WordTiming
from model.errors import ASRError
from service.errors import (DeadlineExceededError, IdleTimeoutError, PayloadTooLargeError, QueueFullError, RequestError,
                            ServiceUnavailableError, UnauthenticatedError, UnknownModelError, WrongModelKindError)

__all__ = [
    "TranscriptionRequest", "Alternative", "TranscriptionResult", "LogProbsResult",
    "RequestError", "UnknownModelError", "QueueFullError", "DeadlineExceededError",
    "PayloadTooLargeError", "ServiceUnavailableError", "IdleTimeoutError", "UnauthenticatedError", "WrongModelKindError",
    "error_reason", "WordTiming",
]


@dataclass(frozen=True)
class TranscriptionRequest:
    """One transcription job, built by REST or gRPC from their own wire formats.

    Attributes:
        audio: (L,) float32 mono samples at the model's sample rate.
        model: NAME[@VERSION]; None or "default" means the active default model.
        decoder: "greedy" or "beam".
        word_timestamps: include per-word times and confidences.
        hotwords: (phrase, boost) pairs; with the greedy decoder they switch to a beam without LM.
        beam_width, lm_alpha, lm_beta: beam knobs; None takes the configured defaults.
        lm: LM registry spec; None uses the model's ``default_lm`` (no LM if it has none).
        num_alternatives: N-best size (beam only; greedy always returns one).
        deadline_s: absolute ``time.monotonic()`` deadline; None uses ``request_timeout_s``.
        api: transport label for metrics (rest|openai|grpc|grpc_stream).
    """

    audio: np.ndarray
    model: str | None = None
    decoder: str = "greedy"
    word_timestamps: bool = True
    hotwords: tuple[tuple[str, float], ...] = ()
    beam_width: int | None = None
    lm_alpha: float | None = None
    lm_beta: float | None = None
    lm: str | None = None
    num_alternatives: int = 1
    deadline_s: float | None = None
    api: str = "rest"


@dataclass(frozen=True)
class Alternative:
    """One N-best hypothesis; ``confidence`` is the mean of its word confidences, in [0, 1]."""

    text: str
    confidence: float
    words: tuple[WordTiming, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class TranscriptionResult:
    """What every transport returns; ``model_name``/``model_version`` name the version that ran it.

    Attributes:
        timings: seconds spent in "queue_s", "inference_s", "decode_s" and "total_s", and the
            "precision" the acoustic model ran at.
    """

    text: str
    words: tuple[WordTiming, ...]
    alternatives: tuple[Alternative, ...]
    duration_s: float
    model_name: str
    model_version: int
    decoder: str
    timings: dict[str, float | str]


@dataclass(frozen=True)
class LogProbsResult:
    """Acoustic-model output of one clip: (T, V+1) float32 log-probs (an ensemble's (T, K, V+1)), blank last."""

    log_probs: np.ndarray
    frame_duration_s: float
    labels: tuple[str, ...]
    model_name: str
    model_version: int


def error_reason(exc: BaseException) -> str:
    """The ``asr_errors_total{reason}`` label for an exception raised while serving a request: its code, or
    "internal" for anything outside the taxonomy (model.errors)."""
    return exc.code if isinstance(exc, ASRError) else "internal"
