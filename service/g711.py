"""G.711 μ-law and A-law (telephony's 8-bit companded samples) to 16-bit PCM, for Riva's MULAW and ALAW encodings
and the realtime API's audio/pcmu and audio/pcma. One byte is one sample, so any message boundary is a sample's."""

from __future__ import annotations

import numpy as np


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype("<i2")


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype("<i2")


_TABLES = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}


def g711_to_pcm16(data: bytes, law: str) -> bytes:
    """``law`` ("mulaw" or "alaw") bytes as signed 16-bit little-endian PCM bytes, twice as many."""
    return _TABLES[law][np.frombuffer(data, dtype=np.uint8)].tobytes()
