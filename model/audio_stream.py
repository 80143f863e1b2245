"""Long audio a window at a time: a file's header first (admission), then mono spans at the model's rate.

``decode_audio`` holds a whole file in memory, which for an hour of 48 kHz stereo is several GB
once down-mixed and resampled. ``probe_audio`` reads only the header, so a service can refuse
audio over its duration limit before decoding anything, and ``AudioStream`` reads, down-mixes
and resamples one span at a time: memory follows the span, not the file.

A span is resampled with some context on both sides and then cut, at a start that falls on the
rates' common grid, so that spans match the same samples of a whole-file decode (to float32
rounding of the resampler's edges, which the context keeps out of the span).

A stream is read from worker threads while its owner (a request) may end at any moment: a
client that disconnects, a deadline. libsndfile must never touch a closed handle (that is a
crash, not an exception), so the handle is used only under one lock, ``close`` takes that lock,
and a read in progress stops at its next block once ``close`` has been called.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from model.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioError, resample, unreadable

# Resampler context on each side of a span, in target-rate samples (torchaudio's sinc kernel at
# lowpass_filter_width 16 reaches 16 input samples: 1 ms at 16 kHz; this keeps 20 ms).
_CONTEXT_SAMPLES = 320
# Frames read from the file at a time: what stays in memory besides the span, at the file's rate.
_BLOCK_FRAMES = 65_536


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: frames and rate at its own rate, and its channel count."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _open(source: str | os.PathLike | BinaryIO, name: str):
    import soundfile as sf  # soundfile loads libsndfile at import; keep it off the model import path

    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise unreadable(name, exc) from None


def probe_audio(source: str | os.PathLike | BinaryIO, name: str = "audio") -> AudioInfo:
    """Reads the header only.

    Raises:
        AudioError: unreadable, zero-length, or a sample rate outside [8 kHz, 192 kHz].
    """
    with _open(source, name) as handle:
        info = AudioInfo(int(handle.frames), int(handle.samplerate), int(handle.channels))
    if hasattr(source, "seek"):
        source.seek(0)
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {info.sample_rate} Hz is outside the supported range "
                         f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if info.frames <= 0:
        raise AudioError(f"{name}: audio has zero length (no samples)")
    return info


def _transcode(source: str | os.PathLike | BinaryIO, demuxer: str, name: str, max_duration_s: float | None) -> str:
    """Decodes a container PyAV reads into a temporary mono float WAV at its own rate; returns its path."""
    import soundfile as sf

    from model.audio_container import decoded_blocks

    fd, path = tempfile.mkstemp(prefix="asr-audio-", suffix=".wav")
    os.close(fd)
    writer = None
    try:
        for block, rate, _ in decoded_blocks(source, demuxer, name, max_duration_s=max_duration_s):
            if writer is None:
                if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                    raise AudioError(f"{name}: sample rate {rate} Hz is outside the supported range "
                                     f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
                writer = sf.SoundFile(path, "w", rate, 1, subtype="FLOAT", format="WAV")
            writer.write(block)
        if writer is None:
            raise AudioError(f"{name}: audio has zero length (no samples)")
        writer.close()
        return path
    except BaseException:
        if writer is not None:
            writer.close()
        os.unlink(path)
        raise


class AudioStreamClosed(Exception):
    """A read after ``AudioStream.close``: the request that owned the stream has ended."""


class AudioStream:
    """An open audio file read as mono float32 spans at ``sample_rate``; use as a context manager.

    Args:
        source: a path or a binary file object (a spooled upload), read through libsndfile.
        sample_rate: the model's rate.
        name: how errors name the input.
    """

    def __init__(self, source: str | os.PathLike | BinaryIO, sample_rate: int, name: str = "audio", *,
                 max_duration_s: float | None = None) -> None:
        from model.audio_container import read_head, sniff_container

        self._transcoded: str | None = None
        demuxer = sniff_container(read_head(source))
        if demuxer is not None:
            # What libsndfile cannot read is decoded once, in order, into a temporary float WAV (4 bytes a
            # sample at the file's rate, mono) that is then read like any file; past ``max_duration_s`` it stops,
            # and the caller's duration check refuses it.
            self._transcoded = _transcode(source, demuxer, name, max_duration_s)
            source = self._transcoded
        try:
            self.info = probe_audio(source, name)
            self._handle = _open(source, name)
        except BaseException:
            self._remove_transcoded()
            raise
        self.sample_rate = sample_rate
        self.name = name
        self._lock = threading.Lock()  # held while the handle is used: reads seek, and close must wait
        self._closed = False
        gcd = math.gcd(self.info.sample_rate, sample_rate)
        self._grid_target, self._grid_source = sample_rate // gcd, self.info.sample_rate // gcd

    @property
    def num_samples(self) -> int:
        """Length at ``sample_rate``: what ``decode_audio`` would return."""
        return math.ceil(self.info.frames * self.sample_rate / self.info.sample_rate)

    @property
    def duration_s(self) -> float:
        return self.info.duration_s

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` at ``sample_rate``, mono float32.

        Raises:
            AudioError: the span holds NaN or infinite samples, or the file breaks off early.
            AudioStreamClosed: ``close`` was called before or during the read.
        """
        end = min(end, self.num_samples)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        # Start on the common grid of both rates, with context before and after the span.
        first = max(0, start - _CONTEXT_SAMPLES) // self._grid_target * self._grid_target
        last = min(self.num_samples, end + _CONTEXT_SAMPLES)
        src_first = first // self._grid_target * self._grid_source
        src_last = min(self.info.frames, math.ceil(last * self.info.sample_rate / self.sample_rate))
        mono = self._read_mono(src_first, src_last - src_first)
        samples = resample(mono, self.info.sample_rate, self.sample_rate)
        return np.ascontiguousarray(samples[start - first:end - first])

    def _read_mono(self, offset: int, frames: int) -> np.ndarray:
        """``frames`` frames from ``offset`` at the file's rate, down-mixed as they are read in small blocks."""
        import soundfile as sf

        mono = np.empty(frames, dtype=np.float32)
        with self._lock:
            try:
                self._check_open()
                self._handle.seek(offset)
                done = 0
                while done < frames:
                    self._check_open()  # a closing owner waits for one block at most
                    block = self._handle.read(min(_BLOCK_FRAMES, frames - done), dtype="float32", always_2d=True)
                    if len(block) == 0:
                        raise AudioError(f"{self.name}: the file ends before its header says it does")
                    mono[done:done + len(block)] = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                    done += len(block)
            except (sf.LibsndfileError, RuntimeError) as exc:  # e.g. a FLAC cut short: "decoder lost sync"
                raise unreadable(self.name, exc) from None
        if not np.isfinite(mono).all():
            raise AudioError(f"{self.name}: audio contains NaN or infinite samples")
        return mono

    def _check_open(self) -> None:
        if self._closed:
            raise AudioStreamClosed(f"{self.name}: the audio was closed while it was being read")

    def close(self) -> None:
        """Closes the file once no read uses it (a read in progress stops after its current block)."""
        self._closed = True
        with self._lock:
            self._handle.close()
            self._remove_transcoded()

    def _remove_transcoded(self) -> None:
        if self._transcoded is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._transcoded)
            self._transcoded = None

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
