"""Beam decoding for a loaded acoustic model: picks its recorded LM and weights, returns word timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lm.beam import BeamDecoder, BeamHypothesis
from lm.store import load_lm_files
from model.decoding import Transcript, WordTiming
from model.rescoring import mean_posteriors
from model.registry import Registry

# Config keys of an acoustic model's config.json that name its LM and the weights tuned for it.
DEFAULT_LM_KEY = "default_lm"
DEFAULT_ALPHA_KEY = "default_lm_alpha"
DEFAULT_BETA_KEY = "default_lm_beta"


def beam_decoder_for(registry: Registry, labels, model_config: dict, lm_spec: str | None = None,
                     *, use_lm: bool = True) -> tuple[BeamDecoder, str | None]:
    """Builds a BeamDecoder with the requested LM, else the model's recorded one, else none."""
    spec = lm_spec or (model_config.get(DEFAULT_LM_KEY) if use_lm else None)
    if not spec:
        return BeamDecoder(labels), None
    binary, unigrams, metadata = load_lm_files(registry, spec)
    decoder = BeamDecoder(labels, binary, unigrams, alpha=float(model_config.get(DEFAULT_ALPHA_KEY, 0.5)),
                          beta=float(model_config.get(DEFAULT_BETA_KEY, 1.0)))
    return decoder, f"{metadata.get('name', spec)}@{metadata.get('version', '?')}"


def hypothesis_to_transcript(hyp: BeamHypothesis, log_probs: np.ndarray, frame_duration_s: float,
                             time_offset_s: float = 0.0) -> Transcript:
    """Converts a beam hypothesis to a Transcript with word times (s) and confidences from the frames."""
    probs = np.exp(mean_posteriors(log_probs).max(axis=1)) if len(log_probs) else np.zeros(0)
    words = []
    for word, start, end in hyp.words:
        end = max(end, start + 1)
        span = probs[start:end]
        confidence = float(span.mean()) if len(span) else 0.0
        words.append(WordTiming(word, round(time_offset_s + start * frame_duration_s, 3),
                                round(time_offset_s + end * frame_duration_s, 3), round(confidence, 4)))
    return Transcript(text=" ".join(hyp.text.split()), words=tuple(words), score=float(hyp.score))
