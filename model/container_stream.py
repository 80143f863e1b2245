"""A compressed file decoded while its bytes still arrive: FLAC, Ogg (Opus, Vorbis), WebM or MP3 sent as a stream.

FFmpeg (through PyAV, model.audio_container) reads a file object; here that object is a pipe the owner
writes the stream's bytes into as they come. A thread runs the demuxer and decoder over it and hands each
decoded block (mono float32 at the file's own rate) to a callback, so decoding keeps pace with the stream
instead of waiting for its end. The pipe holds only what the decoder has not read yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from model.audio import AudioError

# What a file's bytes start with, and the demuxer that reads them. Only unambiguous signatures: an MP3 without its
# ID3 tag starts with a sync word that raw PCM can start with too.
STREAM_DEMUXERS = ((b"fLaC", "flac"), (b"OggS", "ogg"), (b"\x1a\x45\xdf\xa3", "matroska"), (b"ID3", "mp3"))
# MP4's index (moov) usually comes after the samples: it cannot be decoded before the file ends.
UNSTREAMABLE = "mov"
HEAD_BYTES = 8


def stream_demuxer(head: bytes) -> str | None:
    """The demuxer for a stream starting with ``head`` (HEAD_BYTES), UNSTREAMABLE for MP4, None for anything else."""
    if head[4:8] == b"ftyp":
        return UNSTREAMABLE
    return next((demuxer for magic, demuxer in STREAM_DEMUXERS if head.startswith(magic)), None)


class _Pipe:
    """A file object whose ``read`` waits for bytes written by another thread; b"" once closed and drained."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._closed = False
        self._cond = threading.Condition()

    def write(self, data: bytes) -> None:
        with self._cond:
            self._buffer += data
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._buffer.clear()
            self._closed = True
            self._cond.notify()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._buffer and not self._closed:
                self._cond.wait()
            size = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data


class ContainerStream:
    """Decodes a stream's bytes, fed with ``feed`` and ended with ``end``, on its own thread.

    Args:
        demuxer: from ``stream_demuxer``.
        name: how errors name the stream.
        on_block: called on the decoding thread with each (mono float32 block, sample rate).
        on_end: called on the decoding thread once, with None at the stream's end or the AudioError that ended it.
    """

    def __init__(self, demuxer: str, name: str, on_block: Callable[[np.ndarray, int], None],
                 on_end: Callable[[AudioError | None], None]) -> None:
        self._pipe = _Pipe()
        self._thread = threading.Thread(target=self._run, args=(demuxer, name, on_block, on_end), daemon=True,
                                        name=f"decode {name}")
        self._thread.start()

    def feed(self, data: bytes) -> None:
        self._pipe.write(data)

    def end(self) -> None:
        """No more bytes: the decoder finishes what it has."""
        self._pipe.close()

    def cancel(self) -> None:
        """Drops what is not decoded yet and lets the thread end at once."""
        self._pipe.abort()

    def _run(self, demuxer, name, on_block, on_end) -> None:
        from model.audio_container import decoded_blocks

        try:
            for block, rate, _ in decoded_blocks(self._pipe, demuxer, name):
                on_block(block, rate)
        except AudioError as exc:
            on_end(exc)
        except Exception as exc:  # noqa: BLE001 - anything the decoder raises ends this stream, not the server
            on_end(AudioError(f"{name}: not a readable audio stream ({type(exc).__name__}: {exc})"))
        else:
            on_end(None)
