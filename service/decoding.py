"""Turns log-probs into transcripts: greedy, or beam search with an optional KenLM LM and hotwords.

Request knobs are checked against the configured limits here (before any work is queued),
LM-backed beam decoders are cached per (labels, LM version), and beam search runs in its
own thread pool so a slow beam never holds an inference worker.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from model.decoding import WordTiming, greedy_decode
from model.registry import NotFoundError, Registry, RegistryError
from model.rescoring import mean_posteriors
from service.config import BeamConfig
from service.domain import Alternative, RequestError, TranscriptionRequest, UnknownModelError

DECODERS = ("greedy", "beam")


@dataclass(frozen=True)
class DecodingPlan:
    """A request's decoding settings with defaults filled in and limits checked.

    Attributes:
        use_beam: beam search (decoder="beam", or greedy with hotwords, which needs a beam).
        use_lm: fuse the LM (only for decoder="beam").
        lm_spec: LM registry spec, or None for no LM.
        hotword_boost: one weight for all hotwords (pyctcdecode scores them with one weight).
    """

    decoder: str
    use_beam: bool
    use_lm: bool
    lm_spec: str | None
    beam_width: int
    alpha: float
    beta: float
    hotwords: tuple[str, ...]
    hotword_boost: float
    num_alternatives: int
    word_timestamps: bool


def plan_decoding(req: TranscriptionRequest, limits: BeamConfig, default_lm: str | None) -> DecodingPlan:
    """Validates a request's decoding knobs.

    Raises:
        RequestError: unknown decoder, or a value outside the configured range (message names it).
    """
    if req.decoder not in DECODERS:
        raise RequestError(f"decoder must be one of {', '.join(DECODERS)}, got {req.decoder!r}")
    width = limits.width if req.beam_width is None else req.beam_width
    if not 1 <= width <= limits.width_max:
        raise RequestError(f"beam_width must be between 1 and {limits.width_max}, got {width}")
    alpha = limits.alpha if req.lm_alpha is None else float(req.lm_alpha)
    if not (limits.alpha_min <= alpha <= limits.alpha_max) or not np.isfinite(alpha):
        raise RequestError(f"lm_alpha must be between {limits.alpha_min} and {limits.alpha_max}, got {alpha}")
    beta = limits.beta if req.lm_beta is None else float(req.lm_beta)
    if not (limits.beta_min <= beta <= limits.beta_max) or not np.isfinite(beta):
        raise RequestError(f"lm_beta must be between {limits.beta_min} and {limits.beta_max}, got {beta}")
    if not 1 <= req.num_alternatives <= limits.max_alternatives:
        raise RequestError(f"alternatives must be between 1 and {limits.max_alternatives}, got {req.num_alternatives}")
    if len(req.hotwords) > limits.max_hotwords:
        raise RequestError(f"at most {limits.max_hotwords} hotwords are allowed, got {len(req.hotwords)}")
    phrases, boosts = [], []
    for phrase, boost in req.hotwords:
        phrase = " ".join(str(phrase).lower().split())
        if not phrase:
            continue
        if not np.isfinite(boost) or abs(boost) > limits.hotword_boost_max:
            raise RequestError(f"hotword boost must be within +-{limits.hotword_boost_max}, got {boost} for {phrase!r}")
        phrases.append(phrase)
        boosts.append(float(boost))
    use_lm = req.decoder == "beam"
    return DecodingPlan(
        decoder=req.decoder, use_beam=req.decoder == "beam" or bool(phrases), use_lm=use_lm,
        lm_spec=(req.lm or default_lm) if use_lm else None, beam_width=width, alpha=alpha, beta=beta,
        hotwords=tuple(phrases),
        # pyctcdecode applies a single hotword_weight; the largest boost asked for wins.
        hotword_boost=max(boosts) if boosts else limits.hotword_boost,
        num_alternatives=req.num_alternatives if req.decoder == "beam" else 1,
        word_timestamps=req.word_timestamps,
    )


class CTCDecoding:
    """Decodes log-probs per a DecodingPlan; holds the cache of beam decoders (thread-safe)."""

    def __init__(self, registry: Registry, *, max_cached_lms: int = 4) -> None:
        self.registry = registry
        self.max_cached_lms = max_cached_lms
        self._decoders: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def check_lm(self, spec: str | None) -> None:
        """Raises UnknownModelError up front if an LM spec cannot be found (before queueing)."""
        if spec is None:
            return
        try:
            ref = self.registry.resolve(spec)
        except NotFoundError as e:
            raise UnknownModelError(f"language model: {e}") from None
        except RegistryError as e:
            raise RequestError(f"invalid lm {spec!r}: {e}") from None
        if self.registry.metadata(ref).get("kind") != "lm":
            raise RequestError(f"{ref} is not a language model")

    def _beam_decoder(self, labels: tuple[str, ...], lm_spec: str | None):
        from lm.beam import BeamDecoder  # pyctcdecode/kenlm are imported only when beam search is used

        key = (labels, lm_spec)
        with self._lock:
            decoder = self._decoders.get(key)
            if decoder is not None:
                self._decoders.move_to_end(key)
                return decoder
        if lm_spec is None:
            decoder = BeamDecoder(labels)
        else:
            from lm.store import load_lm_files

            try:
                binary_path, unigrams, _ = load_lm_files(self.registry, lm_spec)
            except NotFoundError as e:
                raise UnknownModelError(f"language model: {e}") from None
            decoder = BeamDecoder(labels, binary_path, unigrams)
        with self._lock:
            decoder = self._decoders.setdefault(key, decoder)
            while len(self._decoders) > self.max_cached_lms + 1:  # +1: the LM-free decoder
                self._decoders.popitem(last=False)
        return decoder

    def decode(self, log_probs: np.ndarray, labels: tuple[str, ...], frame_duration_s: float,
               plan: DecodingPlan) -> tuple[Alternative, ...]:
        """Args: log_probs: (T, V+1) float32, or (T, K, V+1) for an ensemble. Returns: alternatives, best first."""
        if not plan.use_beam:
            transcript = greedy_decode(log_probs, labels, frame_duration_s)
            words = transcript.words if plan.word_timestamps else ()
            return (Alternative(transcript.text, _mean_confidence(transcript.words), words),)
        decoder = self._beam_decoder(labels, plan.lm_spec if plan.use_lm else None)
        hyps = decoder.decode(log_probs, beam_width=plan.beam_width, hotwords=plan.hotwords,
                              hotword_weight=plan.hotword_boost, num_best=plan.num_alternatives,
                              alpha=plan.alpha, beta=plan.beta)
        frame_probs = _frame_confidences(log_probs)
        alternatives = []
        for hyp in hyps:
            words = tuple(WordTiming(word, round(start * frame_duration_s, 3), round(end * frame_duration_s, 3),
                                     _span_confidence(frame_probs, start, end))
                          for word, start, end in hyp.words)
            alternatives.append(Alternative(" ".join(hyp.text.split()), _mean_confidence(words),
                                            words if plan.word_timestamps else ()))
        return tuple(alternatives)


def _mean_confidence(words: tuple[WordTiming, ...]) -> float:
    return round(float(np.mean([w.confidence for w in words])), 4) if words else 0.0


def _frame_confidences(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the top probability, and whether the top label is a character (not blank).

    An ensemble's (T, K, V+1) log-probs count through the views' mean posteriors.
    """
    log_probs = mean_posteriors(log_probs)
    best = log_probs.argmax(axis=1)
    return np.exp(log_probs.max(axis=1)), best != log_probs.shape[1] - 1


def _span_confidence(frame_probs: tuple[np.ndarray, np.ndarray], start: int, end: int) -> float:
    # Mean top probability over the frames where a character (not blank) won, as greedy does;
    # a word the beam found only through the LM has no such frame and falls back to all frames.
    probs, emits = frame_probs
    span, mask = probs[start:max(end, start + 1)], emits[start:max(end, start + 1)]
    if not len(span):
        return 0.0
    return round(float(span[mask].mean() if mask.any() else span.mean()), 4)
