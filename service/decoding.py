"""Turns log-probs into transcripts: greedy, or beam search with an optional KenLM LM and hotwords.

Request knobs are checked against the configured limits here (before any work is queued);
the LM, its weights, the beam decoders and word confidences come from lm.model_lm, the one
beam path the CLI uses too. A request's decoding is fed its log-probs a window at a time and
decodes them a segment at a time (model.segments), so it holds a segment, not the recording,
and its time grows with the audio, not its square. Decoding runs in the engine's own thread
pools, so a slow beam never holds an inference worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lm.model_lm import BeamDecoders, BeamTranscriber, LMChoice, choose_lm
from model.decoding import GreedyDecoder, Transcript, WordTiming
from model.registry import NotFoundError, Registry, RegistryError
from service.config import BeamConfig
from service.domain import Alternative, RequestError, TranscriptionRequest, UnknownModelError

DECODERS = ("greedy", "beam")


@dataclass(frozen=True)
class DecodingPlan:
    """A request's decoding settings with defaults filled in and limits checked.

    Attributes:
        use_beam: beam search (decoder="beam", or greedy with hotwords, which needs a beam).
        lm: the LM (None: none; only decoder="beam" fuses one) and its weights (lm.model_lm's rule).
        hotword_boost: one weight for all hotwords (pyctcdecode scores them with one weight).
    """

    decoder: str
    use_beam: bool
    lm: LMChoice
    beam_width: int
    hotwords: tuple[str, ...]
    hotword_boost: float
    num_alternatives: int
    word_timestamps: bool


def plan_decoding(req: TranscriptionRequest, limits: BeamConfig, recorded_lm: Mapping) -> DecodingPlan:
    """Validates a request's decoding knobs; ``recorded_lm`` is the model's (lm.model_lm.recorded_lm).

    Raises:
        RequestError: unknown decoder, or a value outside the configured range (message names it).
    """
    if req.decoder not in DECODERS:
        raise RequestError(f"decoder must be one of {', '.join(DECODERS)}, got {req.decoder!r}")
    width = limits.width if req.beam_width is None else req.beam_width
    if not 1 <= width <= limits.width_max:
        raise RequestError(f"beam_width must be between 1 and {limits.width_max}, got {width}")
    alpha = None if req.lm_alpha is None else float(req.lm_alpha)
    if alpha is not None and (not (limits.alpha_min <= alpha <= limits.alpha_max) or not np.isfinite(alpha)):
        raise RequestError(f"lm_alpha must be between {limits.alpha_min} and {limits.alpha_max}, got {alpha}")
    beta = None if req.lm_beta is None else float(req.lm_beta)
    if beta is not None and (not (limits.beta_min <= beta <= limits.beta_max) or not np.isfinite(beta)):
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
    lm = choose_lm(recorded_lm, lm=req.lm, alpha=alpha, beta=beta, use_lm=req.decoder == "beam",
                   default_alpha=limits.alpha, default_beta=limits.beta)
    return DecodingPlan(
        decoder=req.decoder, use_beam=req.decoder == "beam" or bool(phrases), lm=lm, beam_width=width,
        hotwords=tuple(phrases),
        # pyctcdecode applies a single hotword_weight; the largest boost asked for wins.
        hotword_boost=max(boosts) if boosts else limits.hotword_boost,
        num_alternatives=req.num_alternatives if req.decoder == "beam" else 1,
        word_timestamps=req.word_timestamps,
    )


class CTCDecoding:
    """Decodes log-probs per a DecodingPlan over a cache of beam decoders (thread-safe)."""

    def __init__(self, registry: Registry, *, max_cached_lms: int = 4) -> None:
        self.registry = registry
        self._decoders = BeamDecoders(registry, max_cached_lms=max_cached_lms)

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

    def start(self, labels: tuple[str, ...], frame_duration_s: float, plan: DecodingPlan) -> "Decode":
        """A decoding to feed one recording's (t, V+1) or (t, K, V+1) log-probs, in time order."""
        if not plan.use_beam:
            return Decode(GreedyDecoder(labels, frame_duration_s), plan)
        try:
            decoder = self._decoders.get(labels, plan.lm.spec)
        except NotFoundError as e:
            raise UnknownModelError(f"language model: {e}") from None
        return Decode(BeamTranscriber(decoder, frame_duration_s, plan.lm, beam_width=plan.beam_width,
                                      hotwords=plan.hotwords, hotword_weight=plan.hotword_boost,
                                      num_best=plan.num_alternatives), plan)


class Decode:
    """One recording's decoding: ``feed`` its frames as they come (from a worker thread), then ``finish``."""

    def __init__(self, search: GreedyDecoder | BeamTranscriber, plan: DecodingPlan) -> None:
        self._search = search
        self._plan = plan

    def feed(self, log_probs: np.ndarray) -> None:
        self._search.feed(log_probs)

    def finish(self) -> tuple[Alternative, ...]:
        """The alternatives, best first."""
        found = self._search.finish()
        transcripts: list[Transcript] = [found] if isinstance(found, Transcript) else found
        with_words = self._plan.word_timestamps
        return tuple(Alternative(t.text, mean_confidence(t.words), t.words if with_words else ()) for t in transcripts)


def mean_confidence(words: tuple[WordTiming, ...]) -> float:
    """An alternative's confidence: the mean of its words' (0 without words)."""
    return round(float(np.mean([w.confidence for w in words])), 4) if words else 0.0
