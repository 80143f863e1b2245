"""Files transcribed a window at a time, as the service transcribes them.

A file is read through model.audio_stream (down-mixed and resampled a span at a time), cut into the
service's overlapping windows (model.long_audio: 30 s, 2 s overlap, the defaults of
``ASR_LONG_AUDIO_WINDOW_S`` and ``ASR_LONG_AUDIO_OVERLAP_S``), and the windows of many files run through
the network in length-sorted batches. Each file's decoder is fed its windows' kept frames in time order
and decodes a segment at a time (model.segments), so decoding an hour costs an hour's time, not its
square. `asr transcribe` and `asr transcribe-batch` both go through here, so they give the same
transcripts; a file of up to 30 s is one window, decoded exactly as before windows existed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model.audio import AudioError
from model.audio_stream import AudioStream
from model.decoding import GreedyDecoder, Transcript
from model.long_audio import DEFAULT_OVERLAP_S, DEFAULT_WINDOW_S, AudioWindow, plan_windows
# Windows handed to the network at once (then length-sorted into batches): what bounds memory
# besides each file's own audio.
WINDOWS_PER_PASS_PER_BATCH = 4


@dataclass(frozen=True)
class FileAudio:
    """One file's audio at the model's rate, cut into windows; ``samples[i]`` is ``windows[i]``'s span."""

    path: str
    duration_s: float
    windows: tuple[AudioWindow, ...]
    samples: tuple[np.ndarray, ...]


def read_file(path: str, sample_rate: int, frame_duration_s: float) -> FileAudio:
    """Reads ``path`` as the windows the service would cut it into.

    Raises:
        AudioError: unreadable, or shorter than one output frame (the message names the file).
    """
    if not os.path.isfile(path):
        raise AudioError(f"{path}: {'is a directory, not an audio file' if os.path.isdir(path) else 'file not found'}")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    with AudioStream(path, sample_rate, name=path) as stream:
        shortest = math.ceil(frame_duration_s * sample_rate)  # one output frame
        if stream.num_samples < shortest:
            raise AudioError(f"{path}: audio is {1000 * stream.duration_s:.1f} ms long; the model needs at least "
                             f"{1000 * frame_duration_s:.0f} ms (one output frame)")
        windows = plan_windows(stream.num_samples, sample_rate, frame_duration_s, window_s=DEFAULT_WINDOW_S,
                               overlap_s=DEFAULT_OVERLAP_S)
        samples = tuple(stream.read(w.start_sample, w.end_sample) for w in windows)
        return FileAudio(path, stream.duration_s, windows, samples)


def _pass_order(files: Sequence[FileAudio]) -> list[tuple[int, int]]:
    """(file, window) pairs: every file's windows in time order (its decoder needs them so), long files first
    and one-window files after them sorted by length, so that batches pad little."""
    long = [(i, j) for i, f in enumerate(files) if len(f.windows) > 1 for j in range(len(f.windows))]
    short = sorted((i for i, f in enumerate(files) if len(f.windows) == 1), key=lambda i: len(files[i].samples[0]))
    return long + [(i, 0) for i in short]


def transcribe_files(model, files: Sequence[FileAudio], new_decoder: Callable[[], object], batch_size: int
                     ) -> list[Transcript]:
    """Each file's best transcript; ``new_decoder()`` gives a GreedyDecoder or lm.model_lm.BeamTranscriber."""
    decoders = [new_decoder() for _ in files]
    order = _pass_order(files)
    step = max(1, batch_size) * WINDOWS_PER_PASS_PER_BATCH
    for start in range(0, len(order), step):
        chunk = order[start:start + step]
        log_probs = model.log_probs_sorted([files[i].samples[j] for i, j in chunk], batch_size)
        for (i, j), lp in zip(chunk, log_probs):
            decoders[i].feed(files[i].windows[j].kept(lp))
    found = [decoder.finish() for decoder in decoders]
    return [f if isinstance(f, Transcript) else f[0] for f in found]


def decoder_factory(model, decoder: str, *, beam=None, lm=None, beam_width: int | None = None
                    ) -> Callable[[], object]:
    """A new decoder per file: greedy, or beam search with ``beam`` (lm.beam.BeamDecoder) and its LMChoice."""
    labels, frame_s = model.vocabulary.labels, model.frame_duration_s
    if decoder == "greedy":
        return lambda: GreedyDecoder(labels, frame_s)
    from lm.model_lm import BeamTranscriber

    width = {} if beam_width is None else {"beam_width": beam_width}
    return lambda: BeamTranscriber(beam, frame_s, lm, **width)
