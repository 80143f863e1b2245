"""Containers libsndfile cannot read, through PyAV (FFmpeg inside its wheels): what phones and browsers record.

WebM/Matroska (Opus, Vorbis: Chrome's MediaRecorder), MP4/M4A/MOV/3GP (AAC: iPhone voice memos), raw AAC (ADTS),
MPEG program streams, and MP3. libsndfile reads MP3 too, but takes a VBR file's length from its first frame and
then finds the file "ends before its header says" (Common Voice's clips), so MP3 comes here as well.

The container is recognised from its first bytes and only then opened, with that one demuxer: FFmpeg never
guesses among all its formats for untrusted input (a playlist demuxer would open other files or URLs).

``decoded_blocks`` yields mono float32 blocks at the file's own rate, a decoded frame at a time, so a caller can
keep them (``decode_audio``) or write them out (``AudioStream`` transcodes to a temporary WAV): memory follows a
block, not the file. PyAV is imported only when such a file arrives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from model.audio import AudioError

_EBML, _MPEG_PS = b"\x1aE\xdf\xa3", b"\x00\x00\x01\xba"


def sniff_container(head: bytes) -> str | None:
    """The FFmpeg demuxer for a file starting with ``head`` (16 bytes suffice), or None: libsndfile's to read."""
    if head[:4] == _EBML:
        return "matroska"  # and WebM
    if head[4:8] == b"ftyp":
        return "mov"  # MP4, M4A, MOV, 3GP
    if head[:4] == _MPEG_PS:
        return "mpeg"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame's sync word
        layer = (head[1] >> 1) & 0b11
        return "aac" if layer == 0 else "mp3"  # ADTS AAC has layer bits 00; MPEG audio layers I-III do not
    return None


def read_head(source: str | os.PathLike | bytes | BinaryIO, size: int = 16) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:size])
    if hasattr(source, "read"):
        position = source.tell()
        head = source.read(size)
        source.seek(position)
        return head
    with open(source, "rb") as f:
        return f.read(size)


def decoded_blocks(source: str | os.PathLike | BinaryIO, demuxer: str, name: str, *,
                   max_duration_s: float | None = None) -> Iterator[tuple[np.ndarray, int, int]]:
    """(mono float32 block, sample rate, channels) for each decoded frame of the first audio track.

    Stops once more than ``max_duration_s`` is decoded (a caller refusing longer audio sees it is longer
    without decoding the rest).

    Raises:
        AudioError: no audio track, undecodable data, or a rate that changes mid-file.
    """
    import av  # FFmpeg loads at import; keep it off the model import path

    try:
        container = av.open(source, mode="r", format=demuxer)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioError(f"{name}: not a readable audio file ({_said(exc)})") from None
    with container:
        if not container.streams.audio:
            raise AudioError(f"{name}: the {demuxer} file has no audio track")
        stream = container.streams.audio[0]
        planar = av.AudioResampler(format="fltp")  # the decoder's own layout and rate, float planes
        rate, decoded = None, 0
        try:
            for frame in container.decode(stream):
                for plane_frame in planar.resample(frame):
                    planes = plane_frame.to_ndarray()  # (channels, samples)
                    if rate is None:
                        rate = plane_frame.sample_rate
                    elif plane_frame.sample_rate != rate:
                        raise AudioError(f"{name}: the sample rate changes mid-file ({rate} -> "
                                             f"{plane_frame.sample_rate} Hz)")
                    mono = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
                    yield np.ascontiguousarray(mono, dtype=np.float32), rate, planes.shape[0]
                    decoded += planes.shape[1]
                    if max_duration_s is not None and decoded > max_duration_s * rate:
                        return
        except av.FFmpegError as exc:
            raise AudioError(f"{name}: not a readable audio file ({_said(exc)})") from None


def _said(exc: BaseException) -> str:
    """FFmpeg's reason in libsndfile's words where they mean the same, without its error number."""
    import av

    if isinstance(exc, av.error.InvalidDataError):
        return "unrecognised or corrupt data"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
