"""CTC prefix beam search with optional KenLM shallow fusion and hotword boosting (pyctcdecode)."""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from model.text import display_labels
from model.vocabulary import Vocabulary

__all__ = ["BeamDecoder", "BeamHypothesis", "DEFAULT_ALPHA", "DEFAULT_BEAM_WIDTH", "DEFAULT_BETA", "DEFAULT_HOTWORD_WEIGHT"]

# Used where neither the request nor the model says otherwise (lm.model_lm has the rule).
DEFAULT_BEAM_WIDTH = 64
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 1.0
DEFAULT_HOTWORD_WEIGHT = 10.0
# Candidates each ensemble member contributes before the ensemble rescoring picks among them.
ENSEMBLE_CANDIDATES_PER_MEMBER = 4


@dataclass(frozen=True)
class BeamHypothesis:
    """One decoded hypothesis, best first in ``BeamDecoder.decode``'s result.

    Attributes:
        text: the transcript, words separated by single spaces.
        score: the ranking score: ``logit_score`` + ``lm_score``.
        logit_score: acoustic (CTC) log-probability of the beam's alignment path(s).
        lm_score: everything the language side added: ``alpha`` * LM log-prob (natural log)
            + ``beta`` per word + the unknown-word penalty + hotword bonuses. 0.0 without LM
            and hotwords.
        words: ``(word, start_frame, end_frame)`` per word; frames index ``log_probs`` rows,
            ``end_frame`` exclusive.
        lm_state: the language model's state after the text (None without an LM), to go on
            decoding the frames that follow (``decode``'s ``lm_start_state``).
    """

    text: str
    score: float
    logit_score: float
    lm_score: float
    words: tuple[tuple[str, int, int], ...]
    lm_state: object = field(default=None, compare=False, repr=False)


def _make_decoder_class():
    """Defines the pyctcdecode subclass on first use so that importing this module stays cheap."""
    from pyctcdecode import BeamSearchDecoderCTC

    class _Decoder(BeamSearchDecoderCTC):
        # pyctcdecode keeps language models in a class-level dict keyed per instance (for
        # multiprocessing) and only frees them on an explicit cleanup(), which would break a
        # decode running in another thread. Keeping the model on the instance lets an evicted
        # decoder be garbage-collected once its last decode returns.
        def __init__(self, alphabet, language_model) -> None:
            super().__init__(alphabet, None)
            BeamSearchDecoderCTC.model_container.pop(self._model_key, None)
            self._instance_lm = language_model

        @property
        def _language_model(self):
            return self._instance_lm

        def cleanup(self) -> None:
            self._instance_lm = None

    return _Decoder


class BeamDecoder:
    """Beam-search decoder for one label set and (optionally) one KenLM model; thread-safe.

    The label convention is the acoustic model's: ``labels[i]`` is output column ``i``,
    ``" "`` separates words (or, for word pieces, a label starting with ``"▁"`` begins
    one), and the CTC blank is the extra last column ``len(labels)``.

    The KenLM model is loaded once, in the constructor. One pyctcdecode decoder is kept per
    ``(alpha, beta)`` pair (an LRU of ``max_cached_weights``); they share the KenLM model,
    the unigram set and its trie, so a new pair costs microseconds, not a model load.
    Decoders are never mutated after creation, so concurrent ``decode`` calls are safe.
    """

    def __init__(
        self,
        labels: Sequence[str],
        kenlm_path: str | Path | None = None,
        unigrams: Sequence[str] | None = None,
        *,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        unk_score_offset: float = -10.0,
        max_cached_weights: int = 16,
    ) -> None:
        """Args:
        labels: output labels without the blank; single characters or "▁" word pieces, no
            duplicates, no "".
        kenlm_path: KenLM binary (or ARPA) model; None decodes without a language model.
        unigrams: the LM's vocabulary (``unigrams.txt``); words outside it get
            ``unk_score_offset``. Strongly recommended with a binary model, which does not
            list its words.
        alpha: default LM weight; ``decode`` can override it per call.
        beta: default per-word bonus (counteracts the LM's preference for fewer words).
        unk_score_offset: log-score added for words outside the LM's vocabulary.
        max_cached_weights: how many ``(alpha, beta)`` decoders to keep.
        """
        from pyctcdecode import Alphabet, LanguageModel

        # pyctcdecode warns about small unigram lists on every load; domain LMs (AN4's 99 words) are small.
        logging.getLogger("pyctcdecode").setLevel(logging.ERROR)

        labels = list(labels)
        vocabulary = Vocabulary(tuple(labels))  # empty, duplicate, character / word-piece form
        word_pieces = vocabulary.is_word_piece
        if not word_pieces and " " not in labels:
            raise ValueError("labels must contain ' ', the word separator")
        self.labels: tuple[str, ...] = tuple(labels)
        self.blank_id = len(labels)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.kenlm_path = Path(kenlm_path) if kenlm_path is not None else None
        # Built directly instead of via build_ctcdecoder: its label heuristics would turn a
        # "_" or "|" label into the blank/space; here the blank is "" at its real index.
        # Word pieces use pyctcdecode's BPE mode, whose word-start marker is also "▁". A
        # SentencePiece vocabulary's "<unk>" becomes pyctcdecode's "▁⁇▁", a word of its own, as
        # greedy decoding shows it; its bare "▁" starts a word that the next pieces spell.
        self._alphabet = Alphabet(list(display_labels(labels)) + [""], is_bpe=word_pieces)
        self._decoder_cls = _make_decoder_class()
        self._lock = threading.Lock()
        self._decoders: OrderedDict[tuple[float, float], object] = OrderedDict()
        self._max_cached = max(1, int(max_cached_weights))

        self._base_lm = None
        if self.kenlm_path is not None:
            import kenlm

            if not self.kenlm_path.is_file():
                raise FileNotFoundError(f"KenLM model not found: {self.kenlm_path}")
            model = kenlm.Model(str(self.kenlm_path))
            self._base_lm = LanguageModel(
                model,
                list(unigrams) if unigrams is not None else None,
                alpha=self.alpha,
                beta=self.beta,
                unk_score_offset=float(unk_score_offset),
            )

    @property
    def has_lm(self) -> bool:
        return self._base_lm is not None

    def _decoder(self, alpha: float, beta: float):
        key = (alpha, beta) if self._base_lm is not None else (0.0, 0.0)
        with self._lock:
            decoder = self._decoders.get(key)
            if decoder is not None:
                self._decoders.move_to_end(key)
                return decoder
            language_model = None
            if self._base_lm is not None:
                # A shallow copy shares the kenlm.Model and unigram trie; only the weights differ.
                language_model = copy.copy(self._base_lm)
                language_model.alpha, language_model.beta = key
            decoder = self._decoder_cls(self._alphabet, language_model)
            self._decoders[key] = decoder
            while len(self._decoders) > self._max_cached:
                self._decoders.popitem(last=False)
            return decoder

    def decode(
        self,
        log_probs: np.ndarray,
        *,
        beam_width: int = DEFAULT_BEAM_WIDTH,
        hotwords: Sequence[str] = (),
        hotword_weight: float = DEFAULT_HOTWORD_WEIGHT,
        num_best: int = 1,
        alpha: float | None = None,
        beta: float | None = None,
        beam_prune_logp: float = -10.0,
        token_min_logp: float = -5.0,
        lm_start_state: object = None,
    ) -> list[BeamHypothesis]:
        """Decodes one utterance, or the next part of one (``lm_start_state``).

        An ensemble's ``[T, K, len(labels) + 1]`` log-probs are decoded view by view; the
        views' best hypotheses are then ranked by their mean CTC likelihood over all views
        (``logit_score``) plus their ``lm_score`` (model.rescoring).

        Args:
            log_probs: ``[T, len(labels) + 1]`` log-probabilities (log-softmax output; rows
                of plain probabilities or raw logits are also accepted and normalised), or
                ``[T, K, len(labels) + 1]`` for an ensemble of K views.
            beam_width: beams kept per frame.
            hotwords: words or phrases to favour; they may be outside the LM's vocabulary.
            hotword_weight: log-score bonus per hotword occurrence (scaled down for partial
                words while they are being spelled).
            num_best: how many hypotheses to return at most (fewer if the beam has fewer).
            alpha: LM weight for this call; None uses the constructor's value.
            beta: per-word bonus for this call; None uses the constructor's value.
            beam_prune_logp: beams scoring this much below the best are dropped.
            token_min_logp: per frame, labels below this log-prob are not expanded (the
                frame's best label always is).
            lm_start_state: the ``lm_state`` of the hypothesis decoded from the frames before
                these; None starts a new utterance.

        Returns:
            Up to ``num_best`` hypotheses, best first. An empty input yields one empty text.
        """
        arr = np.asarray(log_probs, dtype=np.float32)
        if arr.ndim not in (2, 3) or arr.shape[-1] != len(self.labels) + 1:
            raise ValueError(
                f"log_probs must have shape [T, {len(self.labels) + 1}] (labels + blank), or [T, views, "
                f"{len(self.labels) + 1}] for an ensemble, got {list(arr.shape)}"
            )
        if num_best < 1 or beam_width < 1:
            raise ValueError("num_best and beam_width must be at least 1")
        if arr.shape[0] == 0:
            return [BeamHypothesis("", 0.0, 0.0, 0.0, ())]
        if not np.isfinite(arr).all():
            # -inf is a legitimate log(0); clip it like pyctcdecode does, reject NaN / +inf.
            if np.isnan(arr).any() or np.isposinf(arr).any():
                raise ValueError("log_probs contains NaN or +inf")
            arr = np.maximum(arr, np.float32(-1e30))
        options = dict(beam_width=beam_width, hotwords=hotwords, hotword_weight=hotword_weight, alpha=alpha,
                       beta=beta, beam_prune_logp=beam_prune_logp, token_min_logp=token_min_logp,
                       lm_start_state=lm_start_state)
        if arr.ndim == 3:
            return self._decode_ensemble(arr, num_best, options)
        return self._decode_one(arr, num_best, **options)

    def _decode_ensemble(self, arr: np.ndarray, num_best: int, options: dict) -> list[BeamHypothesis]:
        from model.rescoring import ensemble_log_likelihood

        candidates: dict[str, BeamHypothesis] = {}
        for member in range(arr.shape[1]):
            for hyp in self._decode_one(arr[:, member], max(num_best, ENSEMBLE_CANDIDATES_PER_MEMBER), **options):
                # lm_score depends on the text only; the first member to find a text times its words.
                candidates.setdefault(" ".join(hyp.text.split()), hyp)
        vocabulary = Vocabulary(self.labels)
        rescored = []
        for text, hyp in candidates.items():
            logit_score = ensemble_log_likelihood(arr, text, vocabulary)
            rescored.append(replace(hyp, text=text, logit_score=logit_score, score=logit_score + hyp.lm_score))
        rescored.sort(key=lambda hyp: hyp.score, reverse=True)  # stable: ties keep member order
        return rescored[:num_best]

    def _decode_one(self, arr: np.ndarray, num_best: int, *, beam_width, hotwords, hotword_weight, alpha, beta,
                    beam_prune_logp, token_min_logp, lm_start_state) -> list[BeamHypothesis]:
        decoder = self._decoder(
            float(self.alpha if alpha is None else alpha), float(self.beta if beta is None else beta)
        )
        beams = decoder.decode_beams(
            arr,
            beam_width=int(beam_width),
            beam_prune_logp=float(beam_prune_logp),
            token_min_logp=float(token_min_logp),
            prune_history=num_best == 1,
            hotwords=[h for h in hotwords if h and h.strip()] or None,
            hotword_weight=float(hotword_weight),
            lm_start_state=lm_start_state,
        )
        results = []
        for text, lm_state, word_frames, logit_score, combined in beams[:num_best]:
            words = tuple((word, int(start), int(end)) for word, (start, end) in word_frames)
            results.append(
                BeamHypothesis(
                    text=text,
                    score=float(combined),
                    logit_score=float(logit_score),
                    lm_score=float(combined - logit_score),
                    words=words,
                    lm_state=lm_state,
                )
            )
        return results
