"""File transcription for the CLI: decode audio, batch by length, greedy or beam decode."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import asdict

import numpy as np

from model.audio import AudioError, decode_audio
from model.checkpoint import read_config
from model.decoding import Transcript, greedy_decode
from model.recognizer import SpeechRecognizer


class BatchDecoder:
    """Turns valid log-probs into Transcripts with the decoder the CLI arguments ask for (lm.model_lm's rule)."""

    def __init__(self, model: SpeechRecognizer, args, registry, model_path=None) -> None:
        self.model, self.args = model, args
        self.beam = None
        if args.decoder == "beam":
            from lm.model_lm import BeamDecoders, choose_lm, recorded_lm

            recorded = recorded_lm(read_config(model_path)) if model_path is not None else {}
            self.lm = choose_lm(recorded, lm=args.lm, alpha=args.alpha, beta=args.beta)
            self.beam = BeamDecoders(registry).get(model.vocabulary.labels, self.lm.spec)

    def __call__(self, log_probs: np.ndarray) -> Transcript:
        frame_s = self.model.frame_duration_s
        if self.beam is None:
            return greedy_decode(log_probs, self.model.vocabulary.labels, frame_s)
        from lm.model_lm import beam_transcripts

        return beam_transcripts(self.beam, log_probs, frame_s, self.lm, beam_width=self.args.beam_width)[0]


@contextlib.contextmanager
def native_stderr_silenced():
    """Mutes what C libraries print straight to file descriptor 2 (libmpg123's notes on a bad MP3).

    The CLI's contract is one line per error, and its own line comes from the AudioError after
    this block; Python's ``sys.stderr`` is flushed first and restored after.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def decode_clip(path: str, sample_rate: int):
    """decode_audio for the CLI: C libraries' own stderr notes muted."""
    with native_stderr_silenced():
        return decode_audio(path, sample_rate)


def decode_files(model: SpeechRecognizer, paths: list[str], args, registry, model_path, *,
                 batch_size: int = 8) -> list[dict]:
    """Transcribes files; any undecodable file aborts with its AudioError before any compute."""
    audio = [decode_clip(path, model.sample_rate) for path in paths]
    shortest = math.ceil(model.frame_duration_s * model.sample_rate)  # one output frame
    for path, clip in zip(paths, audio):
        if len(clip.samples) < shortest:
            raise AudioError(f"{path}: audio is {1000 * clip.duration_s:.1f} ms long; the model needs at least "
                             f"{1000 * model.frame_duration_s:.0f} ms (one output frame)")
    decoder = BatchDecoder(model, args, registry, model_path)
    results = []
    for path, clip, lp in zip(paths, audio, model.log_probs_sorted([a.samples for a in audio], batch_size)):
        transcript = decoder(lp)
        results.append({"file": path, "text": transcript.text, "duration": round(clip.duration_s, 3),
                        "words": [_word_json(w) for w in transcript.words]})
    return results


def _word_json(word) -> dict:
    data = asdict(word)
    return {"word": data["word"], "start": data["start_s"], "end": data["end_s"], "confidence": data["confidence"]}

