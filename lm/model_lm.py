"""The one beam-search path for an acoustic model: which LM and weights, cached decoders, and transcripts.

The CLI (``asr transcribe --decoder beam``), the service and training's recipes all decode
through here, so the same model, audio and settings give the same words and confidences.

Where the LM and its weights come from, first match wins:

1. the request (``lm``, ``lm_alpha``, ``lm_beta``; CLI ``--lm``, ``--alpha``, ``--beta``);
2. the model's recorded LM (``default_lm`` in its config.json) and, for that LM only, the
   weights tuned for it (``default_lm_alpha`` / ``default_lm_beta``);
3. the caller's defaults (the service's ``ASR_BEAM__ALPHA`` / ``__BETA``; the CLI's are
   ``DEFAULT_ALPHA`` / ``DEFAULT_BETA``).

A word's confidence is the mean top-label probability over the frames of its span where a
character (not the blank) wins, as greedy decoding defines it; a word the beam found only
through the LM has no such frame and takes the mean over all of its frames.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lm.beam import DEFAULT_ALPHA, DEFAULT_BEAM_WIDTH, DEFAULT_BETA, DEFAULT_HOTWORD_WEIGHT, BeamDecoder
from lm.store import load_lm_files
from model.decoding import Transcript, WordTiming
from model.registry import Registry
from model.rescoring import mean_posteriors
from model.segments import Segment, SegmentLimits, Segmenter

# Config keys of an acoustic model's config.json that name its LM and the weights tuned for it.
DEFAULT_LM_KEY = "default_lm"
DEFAULT_ALPHA_KEY = "default_lm_alpha"
DEFAULT_BETA_KEY = "default_lm_beta"


@dataclass(frozen=True)
class LMChoice:
    """The LM a beam decode fuses (None: no LM) and its weights."""

    spec: str | None
    alpha: float
    beta: float


def recorded_lm(model_config: Mapping) -> dict:
    """The LM entries of a model's config.json (its LM and the weights tuned for it), for ``choose_lm``."""
    return {k: model_config[k] for k in (DEFAULT_LM_KEY, DEFAULT_ALPHA_KEY, DEFAULT_BETA_KEY) if k in model_config}


def choose_lm(recorded: Mapping, *, lm: str | None = None, alpha: float | None = None, beta: float | None = None,
              use_lm: bool = True, default_alpha: float = DEFAULT_ALPHA, default_beta: float = DEFAULT_BETA
              ) -> LMChoice:
    """Applies the module's rule: the request, then the model's recorded LM and weights, then the defaults."""
    model_lm = recorded.get(DEFAULT_LM_KEY)
    spec = (lm or model_lm) if use_lm else None
    tuned = spec is not None and spec == model_lm  # the recorded weights were tuned for that LM only
    if alpha is None:
        alpha = float(recorded.get(DEFAULT_ALPHA_KEY, default_alpha)) if tuned else default_alpha
    if beta is None:
        beta = float(recorded.get(DEFAULT_BETA_KEY, default_beta)) if tuned else default_beta
    return LMChoice(spec, float(alpha), float(beta))


class BeamDecoders:
    """Beam decoders per (labels, LM spec), the LM files loaded once; an LRU of ``max_cached_lms``. Thread-safe."""

    def __init__(self, registry: Registry, *, max_cached_lms: int = 4) -> None:
        self.registry = registry
        self.max_cached_lms = max_cached_lms
        self._decoders: OrderedDict[tuple, BeamDecoder] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, labels: Sequence[str], lm_spec: str | None) -> BeamDecoder:
        """The decoder for ``labels`` fusing ``lm_spec`` (None: no LM).

        Raises:
            model.registry.NotFoundError: no such LM in the registry.
        """
        key = (tuple(labels), lm_spec)
        with self._lock:
            decoder = self._decoders.get(key)
            if decoder is not None:
                self._decoders.move_to_end(key)
                return decoder
        if lm_spec is None:
            decoder = BeamDecoder(labels)
        else:
            binary_path, unigrams, _ = load_lm_files(self.registry, lm_spec)
            decoder = BeamDecoder(labels, binary_path, unigrams)
        with self._lock:
            decoder = self._decoders.setdefault(key, decoder)
            while len(self._decoders) > self.max_cached_lms + 1:  # +1: the LM-free decoder
                self._decoders.popitem(last=False)
        return decoder


def beam_transcripts(decoder: BeamDecoder, log_probs: np.ndarray, frame_duration_s: float, choice: LMChoice, *,
                     beam_width: int = DEFAULT_BEAM_WIDTH, hotwords: Sequence[str] = (),
                     hotword_weight: float = DEFAULT_HOTWORD_WEIGHT, num_best: int = 1,
                     time_offset_s: float = 0.0) -> list[Transcript]:
    """Beam search over one utterance: up to ``num_best`` transcripts, best first, with word times (s)
    and confidences (the module's definition).

    Args:
        log_probs: (T, V+1) log-probabilities, or (T, K, V+1) for an ensemble of K views.
    """
    search = BeamTranscriber(decoder, frame_duration_s, choice, beam_width=beam_width, hotwords=hotwords,
                             hotword_weight=hotword_weight, num_best=num_best, time_offset_s=time_offset_s)
    search.feed(log_probs)
    return search.finish()


class BeamTranscriber:
    """Beam search over log-probs fed in time order, a segment at a time (model.segments), in linear time.

    Each segment is searched alone, starting from the language-model state the best hypothesis
    of the segment before it ended in, so word history carries across the cuts (which fall in
    pauses); the N-best list is the ``num_best`` best combinations of the segments' hypotheses
    by total score. A clip of up to 30 s is one segment: exactly ``BeamDecoder.decode``.
    Arguments are ``beam_transcripts``'.
    """

    def __init__(self, decoder: BeamDecoder, frame_duration_s: float, choice: LMChoice, *,
                 beam_width: int = DEFAULT_BEAM_WIDTH, hotwords: Sequence[str] = (),
                 hotword_weight: float = DEFAULT_HOTWORD_WEIGHT, num_best: int = 1, time_offset_s: float = 0.0,
                 limits: SegmentLimits | None = None) -> None:
        self.decoder = decoder
        self.frame_duration_s = frame_duration_s
        self.num_best = num_best
        self.time_offset_s = time_offset_s
        self._options = dict(beam_width=beam_width, hotwords=hotwords, hotword_weight=hotword_weight,
                             num_best=num_best, alpha=choice.alpha, beta=choice.beta)
        self._segmenter = Segmenter(limits or SegmentLimits.of(frame_duration_s))
        self._best: list[Transcript] = [Transcript("")]  # the N best combinations of the segments so far
        self._lm_state = None
        self._segments = 0

    def feed(self, log_probs: np.ndarray) -> None:
        """Adds the next (t, V+1) or (t, K, V+1) frames."""
        for segment in self._segmenter.feed(np.asarray(log_probs)):
            self._search(segment)

    def finish(self) -> list[Transcript]:
        """Up to ``num_best`` transcripts of everything fed, best first."""
        for segment in self._segmenter.finish():
            self._search(segment)
        if not self._segments:  # nothing was fed: the decoder's answer to an empty input
            self._search(Segment(0, np.zeros((0, len(self.decoder.labels) + 1), dtype=np.float32)))
        return self._best

    def _search(self, segment: Segment) -> None:
        hyps = self.decoder.decode(segment.log_probs, lm_start_state=self._lm_state, **self._options)
        self._lm_state = hyps[0].lm_state
        self._segments += 1
        frame_probs = _frame_confidences(segment.log_probs)
        offset_s = self.time_offset_s + segment.first_frame * self.frame_duration_s
        found = [Transcript(" ".join(hyp.text.split()), self._words(hyp, frame_probs, offset_s), float(hyp.score))
                 for hyp in hyps]
        combined = [_concatenated(before, after) for before in self._best for after in found]
        combined.sort(key=lambda t: t.score, reverse=True)  # stable: ties keep the earlier hypotheses' order
        self._best = combined[: self.num_best]

    def _words(self, hyp, frame_probs, offset_s: float) -> tuple[WordTiming, ...]:
        frame_s = self.frame_duration_s
        return tuple(WordTiming(word, round(offset_s + start * frame_s, 3), round(offset_s + end * frame_s, 3),
                                _span_confidence(frame_probs, start, end))
                     for word, start, end in hyp.words)


def _concatenated(before: Transcript, after: Transcript) -> Transcript:
    text = f"{before.text} {after.text}".strip()
    return Transcript(text, before.words + after.words, before.score + after.score)


def _frame_confidences(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the top probability, and whether the top label is a character (not blank).

    An ensemble's (T, K, V+1) log-probs count through the views' mean posteriors.
    """
    if not len(log_probs):
        return np.zeros(0), np.zeros(0, dtype=bool)
    log_probs = mean_posteriors(log_probs)
    best = log_probs.argmax(axis=1)
    return np.exp(log_probs.max(axis=1)), best != log_probs.shape[1] - 1


def _span_confidence(frame_probs: tuple[np.ndarray, np.ndarray], start: int, end: int) -> float:
    probs, emits = frame_probs
    span, mask = probs[start:max(end, start + 1)], emits[start:max(end, start + 1)]
    if not len(span):
        return 0.0
    return round(float(span[mask].mean() if mask.any() else span.mean()), 4)
