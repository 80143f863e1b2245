"""File transcription for the CLI: read audio in the service's windows, batch by length, greedy or beam decode."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict

import numpy as np

from cli.windowed import decoder_factory, read_file, transcribe_files
from model.audio import decode_audio
from model.checkpoint import read_config
from model.decoding import Transcript
from model.recognizer import SpeechRecognizer


class BatchDecoder:
    """Turns valid log-probs into Transcripts with the decoder the CLI arguments ask for (lm.model_lm's rule)."""

    def __init__(self, model: SpeechRecognizer, args, registry, model_path=None) -> None:
        self.model, self.args = model, args
        self.beam = self.lm = None
        if args.decoder == "beam":
            from lm.model_lm import BeamDecoders, choose_lm, recorded_lm

            recorded = recorded_lm(read_config(model_path)) if model_path is not None else {}
            self.lm = choose_lm(recorded, lm=args.lm, alpha=args.alpha, beta=args.beta)
            self.beam = BeamDecoders(registry).get(model.vocabulary.labels, self.lm.spec)
        self.new_decoder = decoder_factory(model, args.decoder, beam=self.beam, lm=self.lm,
                                           beam_width=getattr(args, "beam_width", None))

    def __call__(self, log_probs: np.ndarray) -> Transcript:
        decoder = self.new_decoder()
        decoder.feed(log_probs)
        found = decoder.finish()
        return found if isinstance(found, Transcript) else found[0]


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
    """Transcribes files a window at a time (cli.windowed); any unreadable file aborts with its AudioError
    before any compute."""
    with native_stderr_silenced():
        audio = [read_file(path, model.sample_rate, model.frame_duration_s) for path in paths]
    decoder = BatchDecoder(model, args, registry, model_path)
    transcripts = transcribe_files(model, audio, decoder.new_decoder, batch_size)
    return [file_result(clip.path, clip.duration_s, transcript) for clip, transcript in zip(audio, transcripts)]


def file_result(path: str, duration_s: float, transcript: Transcript) -> dict:
    """A file's transcript as `asr transcribe --json` prints it."""
    return {"file": path, "text": transcript.text, "duration": round(duration_s, 3),
            "words": [_word_json(w) for w in transcript.words]}


def _word_json(word) -> dict:
    data = asdict(word)
    return {"word": data["word"], "start": data["start_s"], "end": data["end_s"], "confidence": data["confidence"]}

