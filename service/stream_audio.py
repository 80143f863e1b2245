"""A stream's audio: 16-bit PCM to float, and the segment buffer kept at the source rate, read at the model's."""

from __future__ import annotations

import math

import numpy as np

from model.audio import resample
from service.domain import RequestError

# Source samples kept on either side of a resampled read, so the filter sees real signal at the edges.
_RESAMPLE_MARGIN = 64


def pcm16_to_float32(data: bytes, channels: int = 1) -> np.ndarray:
    """Signed 16-bit little-endian interleaved PCM to mono float32 in [-1, 1), shape (L,).

    Raises:
        RequestError: the byte count is not a whole number of frames.
    """
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        raise RequestError(f"LINEAR_PCM audio must be whole 16-bit frames of {channels} channel(s) "
                           f"({frame_bytes} bytes each); got {len(data)} bytes")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples


class StreamAudio:
    """Audio of the current segment, kept at the source rate and read at the model rate.

    Positions are absolute model-rate sample indices counted from the start of the stream.
    Keeping the source samples (rather than resampling each message on arrival) lets a
    segment's one-pass final resample the whole segment at once, as offline decoding does.
    """

    def __init__(self, source_rate: int, model_rate: int) -> None:
        self.source_rate = source_rate
        self.model_rate = model_rate
        g = math.gcd(source_rate, model_rate)
        self._src_step, self._model_step = source_rate // g, model_rate // g
        self._data = np.zeros(16_384, dtype=np.float32)
        self._size = 0  # valid source samples in _data
        self._first = 0  # absolute source index of _data[0]

    @property
    def end(self) -> int:
        """Model-rate samples received so far."""
        return (self._first + self._size) * self.model_rate // self.source_rate

    @property
    def held_samples(self) -> int:
        """Source-rate samples held (4 bytes each), spare room of the buffer included."""
        return len(self._data)

    @property
    def start(self) -> int:
        """First model-rate sample still held."""
        return -(-self._first * self.model_rate // self.source_rate)

    def append(self, samples: np.ndarray) -> None:
        need = self._size + len(samples)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size: need] = samples
        self._size = need

    def read(self, start: int, end: int) -> np.ndarray:
        """Model-rate samples [start, end) (both absolute), shape (end - start,)."""
        if self.source_rate == self.model_rate:
            return self._data[start - self._first: end - self._first].copy()
        # Resample from a source sample that maps onto a whole model sample (a "block"
        # boundary), a little before ``start`` so the kernel sees real signal at the left edge.
        first_block = -(-self._first // self._src_step)
        lo_block = min(start // self._model_step,
                       max(first_block, start // self._model_step - -(-_RESAMPLE_MARGIN // self._src_step)))
        src_lo = lo_block * self._src_step
        src_hi = min(self._first + self._size, -(-end * self.source_rate // self.model_rate) + _RESAMPLE_MARGIN)
        out = resample(self._data[src_lo - self._first: src_hi - self._first], self.source_rate, self.model_rate)
        offset = start - lo_block * self._model_step
        piece = out[offset: offset + (end - start)]
        return np.pad(piece, (0, end - start - len(piece))) if len(piece) < end - start else piece

    def drop_before(self, position: int) -> None:
        """Frees audio before model-rate sample ``position`` (keeping a resampling margin)."""
        src = position * self.source_rate // self.model_rate - _RESAMPLE_MARGIN - self._src_step
        cut = min(max(0, src - self._first), self._size)
        if cut:
            self._data[: self._size - cut] = self._data[cut: self._size]
            self._size -= cut
            self._first += cut
