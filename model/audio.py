"""Audio decoding: a file or byte string (libsndfile's formats, and PyAV's: model.audio_container) to mono float32
at the model's rate."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torchaudio.functional as AF

from model.errors import ASRError

# Below 8 kHz the 0-4 kHz band that carries most speech cues is already cut off, so the
# model's 0-8 kHz mel bank would see mostly silence; refuse instead of guessing.
MIN_SAMPLE_RATE = 8_000
# Studio and high-resolution recorders write 96 and 192 kHz; they are resampled like any other rate.
MAX_SAMPLE_RATE = 192_000
# Speed changes resample by a ratio of small integers: torchaudio's sinc kernel has one row per
# output phase, so 16000 -> 17777 Hz (gcd 1) would build a ~1 GB kernel, whereas 9 -> 10 gives
# the same 1/0.9 ratio with a 10-row kernel. A denominator of at most 100 keeps the ratio within
# 1e-4 of the requested one.
_MAX_SPEED_RATIO_DENOMINATOR = 100


class AudioError(ASRError, ValueError):
    """Audio that cannot be decoded or used; the message is one line naming the problem."""

    code = "bad_audio"


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 samples in [-1, 1] with their rate.

    Attributes:
        samples: shape (L,), float32.
        sample_rate: samples per second of ``samples``.
        source_sample_rate: the file's own rate before resampling.
        source_channels: channel count before down-mixing.
    """

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def _read(source: str | os.PathLike | bytes, name: str) -> tuple[np.ndarray, int, int]:
    """(mono float32 samples, rate, channels) of a whole file: libsndfile's formats, else PyAV's."""
    import soundfile as sf  # soundfile loads libsndfile at import; keep it off the model import path

    from model.audio_container import decoded_blocks, read_head, sniff_container

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(f"{name}: empty audio data (0 bytes)")
        handle: object = io.BytesIO(bytes(source))
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise AudioError(f"{name}: file not found")
        if os.path.isdir(path):
            raise AudioError(f"{name}: is a directory, not an audio file")
        if os.path.getsize(path) == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        handle = path
    demuxer = sniff_container(read_head(handle))
    if demuxer is not None:
        blocks = list(decoded_blocks(handle, demuxer, name))
        if not blocks:
            raise AudioError(f"{name}: audio has zero length (no samples)")
        return np.concatenate([b for b, _, _ in blocks]), blocks[0][1], blocks[0][2]
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise unreadable(name, exc) from None
    return (data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]), int(rate), data.shape[1]


def unreadable(name: str, exc: BaseException) -> AudioError:
    """The one-line AudioError for what libsndfile could not read."""
    import soundfile as sf

    detail = (str(exc).split(":")[-1].strip() if isinstance(exc, sf.LibsndfileError) else str(exc)) or "unknown format"
    # libsndfile says "File does not exist or is not a regular file" for any content it does not
    # recognise, which misleads for a file that is there.
    if "does not exist" in detail:
        detail = "unrecognised or corrupt data"
    return AudioError(f"{name}: not a readable audio file ({detail})")


def decode_audio(
    source: str | os.PathLike | bytes,
    target_sample_rate: int = 16_000,
    *,
    name: str | None = None,
) -> DecodedAudio:
    """Decodes wav/flac/ogg (anything libsndfile reads), and webm, mp4/m4a, aac and mp3 through PyAV
    (model.audio_container); down-mixes and resamples.

    Args:
        source: a file path or the encoded bytes of a file.
        target_sample_rate: the model's rate in Hz.
        name: how to call the input in error messages (defaults to the path or "audio").

    Returns:
        DecodedAudio at ``target_sample_rate``.

    Raises:
        AudioError: missing/empty/undecodable file, zero-length audio, non-finite samples,
            or a sample rate outside [8 kHz, 192 kHz].
    """
    label = name or (os.fspath(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "audio")
    mono, rate, channels = _read(source, label)
    if rate < MIN_SAMPLE_RATE or rate > MAX_SAMPLE_RATE:
        raise AudioError(
            f"{label}: sample rate {rate} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )
    if mono.shape[0] == 0:
        raise AudioError(f"{label}: audio has zero length (no samples)")
    if not np.isfinite(mono).all():
        raise AudioError(f"{label}: audio contains NaN or infinite samples")
    samples = resample(np.ascontiguousarray(mono, dtype=np.float32), rate, target_sample_rate)
    return DecodedAudio(samples, target_sample_rate, rate, channels)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio's Kaiser-windowed kernel) of a mono signal."""
    if from_rate == to_rate:
        return samples
    return resample_tensor(torch.from_numpy(samples), from_rate, to_rate).numpy().astype(np.float32, copy=False)


def resample_tensor(audio: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """:func:`resample` on a tensor whose last axis is time (a batch of clips, on any device)."""
    if from_rate == to_rate:
        return audio
    return AF.resample(audio, from_rate, to_rate, lowpass_filter_width=16, rolloff=0.945,
                       resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


def speed_resampling_rates(rate: float, sample_rate: int) -> tuple[int, int]:
    """(from, to) rates whose resampling plays audio ``rate`` times faster when read back at ``sample_rate``.

    rate > 1 is faster and shorter: about ``len / rate`` samples. (NeMo's SpeedPerturbation
    resamples to ``sr * rate`` instead, so there rate > 1 is slower; sets of rates symmetric
    around 1 make the two conventions equivalent.)

    Raises:
        ValueError: a rate outside [0.5, 2] or a non-positive sample rate.
    """
    if not 0.5 <= rate <= 2.0:
        raise ValueError(f"speed rate must lie in [0.5, 2], got {rate}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    ratio = Fraction(int(sample_rate / rate), sample_rate).limit_denominator(_MAX_SPEED_RATIO_DENOMINATOR)
    return ratio.denominator, ratio.numerator


def change_speed(samples: np.ndarray, rate: float, sample_rate: int) -> np.ndarray:
    """Changes playback speed (tempo and pitch together) by resampling; rate 1.0 returns ``samples``.

    Args:
        samples: mono audio, shape (L,), float32.
        rate: speed factor in [0.5, 2]; > 1 is faster, see :func:`speed_resampling_rates`.
        sample_rate: rate of ``samples`` in Hz.

    Returns:
        The changed audio, shape (about L / rate,), float32.
    """
    from_rate, to_rate = speed_resampling_rates(rate, sample_rate)
    if rate == 1.0:
        return samples
    return resample(np.ascontiguousarray(samples, dtype=np.float32), from_rate, to_rate)
