"""Training-time augmentation: speed perturbation of waveforms and SpecAugment/SpecCutout masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.audio import change_speed, resample


@dataclass(frozen=True)
class AugmentConfig:
    """What the training pipeline perturbs, and how much.

    Attributes:
        speed_rates: playback-speed factors to pick from uniformly, each in [0.8, 1.25];
            rate > 1 is faster (shorter) audio, see :func:`speed_perturb`. Batches are planned
            from manifest durations, so a rate r < 1 lets one hold up to 1/r times
            ``max_batch_audio_s``.
        speed_prob: chance that an utterance is speed-perturbed at all, in [0, 1].
        freq_masks: SpecAugment frequency masks per utterance.
        freq_width: widest frequency mask, in mel bins (width drawn from 0..freq_width).
        time_masks: SpecAugment time masks per utterance.
        time_width: widest time mask: an int is frames, a float in (0, 1] is a fraction
            of the utterance's valid length.
        cutout_rects: SpecCutout rectangles per utterance (QuartzNet's recipe uses 5).
        cutout_time: widest rectangle in frames (width drawn from 0..cutout_time).
        cutout_freq: tallest rectangle in mel bins (height drawn from 0..cutout_freq).
        dither: std of Gaussian noise added to the waveform, in full-scale units
            (0 disables it; the featurizer may dither on its own as well).
        narrowband_prob: chance that an utterance is band-limited as if recorded at
            ``narrowband_rate_hz`` (telephone/8 kHz audio), in [0, 1].
        narrowband_rate_hz: the sample rate whose Nyquist band the audio is cut to.
        concat_prob: chance that a random other training utterance no longer than this one
            (and its transcript) is appended after a short silence, in [0, 1]. Why: most AN4
            speakers spell their own names and numbers, so a model can tie a whole utterance's
            sound to its text instead of learning the words; new pairings break that tie.
            Batches are planned from manifest durations, so with it on they can hold up to
            twice ``max_batch_audio_s`` (plus the gaps).
        freq_warp: largest relative stretch of the mel axis, in [0, 0.5): each utterance's
            spectrum is scaled by a factor drawn uniformly from [1 - freq_warp, 1 + freq_warp]
            (0 disables it). A rough vocal-tract-length perturbation, see :func:`warp_frequency`.
    """

    # Waveform level.
    speed_rates: tuple[float, ...] = (0.9, 1.0, 1.1)
    speed_prob: float = 0.0
    dither: float = 0.0
    narrowband_prob: float = 0.0
    narrowband_rate_hz: int = 8000
    concat_prob: float = 0.0
    # SpecAugment; QuartzNet's configs leave these off and rely on SpecCutout.
    freq_warp: float = 0.0
    freq_masks: int = 0
    freq_width: int = 10
    time_masks: int = 0
    time_width: int | float = 10
    # SpecCutout, QuartzNet's values.
    cutout_rects: int = 5
    cutout_time: int = 120
    cutout_freq: int = 50

    # Read by pydantic where the training config embeds this class: a misspelt key is an error.
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if not self.speed_rates or any(not 0.8 <= r <= 1.25 for r in self.speed_rates):
            raise ValueError(f"speed_rates must be a non-empty tuple within [0.8, 1.25], got {self.speed_rates}")
        if not 0.0 <= self.speed_prob <= 1.0:
            raise ValueError(f"speed_prob must lie in [0, 1], got {self.speed_prob}")
        if not 0.0 <= self.narrowband_prob <= 1.0:
            raise ValueError(f"narrowband_prob must lie in [0, 1], got {self.narrowband_prob}")
        if not isinstance(self.narrowband_rate_hz, int) or self.narrowband_rate_hz <= 0:
            raise ValueError(f"narrowband_rate_hz must be a positive int, got {self.narrowband_rate_hz!r}")
        if not 0.0 <= self.concat_prob <= 1.0:
            raise ValueError(f"concat_prob must lie in [0, 1], got {self.concat_prob}")
        if not 0.0 <= self.freq_warp < 0.5:
            raise ValueError(f"freq_warp must lie in [0, 0.5), got {self.freq_warp}")
        if self.dither < 0.0:
            raise ValueError(f"dither must be >= 0, got {self.dither}")
        for name in ("freq_masks", "freq_width", "time_masks", "cutout_rects", "cutout_time", "cutout_freq"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        width = self.time_width
        if isinstance(width, bool) or not isinstance(width, (int, float)):
            raise ValueError(f"time_width must be an int or float, got {width!r}")
        if isinstance(width, int) and width < 0:
            raise ValueError(f"time_width as frames must be >= 0, got {width}")
        if isinstance(width, float) and not 0.0 < width <= 1.0:
            raise ValueError(f"time_width as a fraction must lie in (0, 1], got {width}")


def band_limit(samples: np.ndarray, sample_rate: int, band_rate_hz: int) -> np.ndarray:
    """Removes content above ``band_rate_hz / 2`` by resampling down and back up; same length.

    Why: 8 kHz corpora (FSDD, telephone audio) reach a 16 kHz model with an empty upper band.
    Mixed into training unaugmented, that band becomes a cue for *which corpus* (and so which
    words) an utterance comes from; band-limiting some wideband audio removes the cue.
    """
    if band_rate_hz >= sample_rate:
        return samples
    narrow = resample(np.ascontiguousarray(samples, dtype=np.float32), sample_rate, band_rate_hz)
    wide = resample(narrow, band_rate_hz, sample_rate)
    out = np.zeros(len(samples), dtype=np.float32)
    out[: min(len(wide), len(samples))] = wide[: len(samples)]
    return out


def speed_perturb(samples: np.ndarray, rate: float, sample_rate: int) -> np.ndarray:
    """Changes playback speed (tempo and pitch together); rate > 1 is faster and shorter.

    The same resampling as test-time speed views of an ensemble (model.audio.change_speed).

    Raises:
        ValueError: a rate outside [0.5, 2] or a non-positive sample rate.
    """
    return change_speed(samples, rate, sample_rate)


def choose_speed_rate(cfg: AugmentConfig, rng: np.random.Generator) -> float:
    """Draws the speed factor for one utterance: 1.0 with chance 1 - speed_prob, else one of speed_rates."""
    if cfg.speed_prob == 0.0 or rng.random() >= cfg.speed_prob:
        return 1.0
    return float(cfg.speed_rates[rng.integers(len(cfg.speed_rates))])


def add_dither(samples: np.ndarray, dither: float, rng: np.random.Generator) -> np.ndarray:
    """Returns ``samples + dither * N(0, 1)`` as float32 (a copy), or ``samples`` when dither is 0."""
    if dither == 0.0:
        return samples
    noise = rng.standard_normal(samples.shape[0]).astype(np.float32)
    return (samples + dither * noise).astype(np.float32, copy=False)


def warp_frequency(features: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Stretches each item's mel axis by its factor, with linear interpolation between bins.

    Output bin ``f`` takes the value at source position ``f / factor``: a factor above 1
    moves spectral peaks (formants) up, as a shorter vocal tract would, and below 1 down.
    Source positions past the top bin repeat the top bin. Why: AN4 has ~45 training
    speakers, and a model that memorises their voices fails on new ones; warping is a cheap
    stand-in for more speakers (after Jaitly & Hinton's VTLP, here on mel bins, not Hz).

    Args:
        features: (B, F, T) log-mel features.
        factors: (B,) positive stretch factors.

    Returns:
        A new tensor shaped like ``features``; padded (all-zero) frames stay zero.
    """
    num_bins = features.shape[1]
    source = torch.arange(num_bins, dtype=torch.float64)[None, :] / factors.double()[:, None]
    source = source.clamp(0, num_bins - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=num_bins - 1)
    frac = (source - low).to(features.dtype)[:, :, None].to(features.device)
    frames = features.shape[2]
    below = features.gather(1, low.to(features.device)[:, :, None].expand(-1, -1, frames))
    above = features.gather(1, high.to(features.device)[:, :, None].expand(-1, -1, frames))
    return below * (1 - frac) + above * frac


def spec_augment(features: torch.Tensor, feature_lengths: torch.Tensor, cfg: AugmentConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """Warps the mel axis, then zeroes random frequency bands, time spans and rectangles of a feature batch.

    All masks stay within each item's valid frames, so padding is never chosen as a mask
    position (NeMo's SpecCutout ignores lengths and can waste rectangles on padding).
    Widths are drawn uniformly from 0..max inclusive and starts uniformly over the
    positions where the whole mask fits.

    Args:
        features: log-mel features, shape (B, F, T).
        feature_lengths: valid frames per item, shape (B,), int.
        cfg: mask counts and widths.
        generator: a CPU ``torch.Generator``; the only source of randomness.

    Returns:
        A new tensor shaped like ``features``; the input and the lengths are untouched.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (B, F, T), got shape {tuple(features.shape)}")
    batch, num_bins, num_frames = features.shape
    lengths = feature_lengths.detach().to("cpu", torch.long).clamp(0, num_frames)
    bins = torch.arange(num_bins)
    frames = torch.arange(num_frames)
    mask = torch.zeros(batch, num_bins, num_frames, dtype=torch.bool)
    if cfg.freq_warp > 0.0:  # no draw when off, so existing seeds keep their masks
        factors = 1.0 + cfg.freq_warp * (2.0 * torch.rand(batch, generator=generator, dtype=torch.float64) - 1.0)
        features = warp_frequency(features, factors)

    if cfg.freq_masks > 0:
        full = torch.full((batch,), num_bins, dtype=torch.long)
        bands = _spans(full, cfg.freq_masks, torch.full((batch,), cfg.freq_width), generator, bins)
        mask |= bands.any(dim=1)[:, :, None]
    if cfg.time_masks > 0:
        if isinstance(cfg.time_width, float):
            max_width = (lengths.double() * cfg.time_width).floor().long()
        else:
            max_width = torch.full((batch,), cfg.time_width, dtype=torch.long)
        spans = _spans(lengths, cfg.time_masks, max_width, generator, frames)
        mask |= spans.any(dim=1)[:, None, :]
    if cfg.cutout_rects > 0:
        full = torch.full((batch,), num_bins, dtype=torch.long)
        rect_bins = _spans(full, cfg.cutout_rects, torch.full((batch,), cfg.cutout_freq), generator, bins)
        rect_frames = _spans(lengths, cfg.cutout_rects, torch.full((batch,), cfg.cutout_time), generator, frames)
        # (B, R, F, 1) & (B, R, 1, T): each rectangle is a band crossed with a span.
        mask |= (rect_bins[:, :, :, None] & rect_frames[:, :, None, :]).any(dim=1)

    return features.masked_fill(mask.to(features.device), 0.0)


def _spans(extent: torch.Tensor, count: int, max_width: torch.Tensor, generator: torch.Generator,
           positions: torch.Tensor) -> torch.Tensor:
    """Boolean (B, count, len(positions)) masks of ``count`` random spans inside [0, extent) per item."""
    batch = extent.shape[0]
    widest = torch.minimum(max_width.long(), extent)[:, None]
    width = (torch.rand(batch, count, generator=generator, dtype=torch.float64) * (widest + 1)).floor().long()
    width = torch.minimum(width, widest)
    room = (extent[:, None] - width + 1).clamp(min=1)
    start = (torch.rand(batch, count, generator=generator, dtype=torch.float64) * room).floor().long()
    start = torch.minimum(start, room - 1)
    pos = positions[None, None, :]
    return (pos >= start[:, :, None]) & (pos < (start + width)[:, :, None])
