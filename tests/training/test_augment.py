"""Speed perturbation and SpecAugment/SpecCutout: determinism, lengths and padding."""

import numpy as np
import pytest
import torch

from training.augment import (AugmentConfig, band_limit, choose_speed_rate, spec_augment, speed_perturb,
                              warp_frequency)

CFG = AugmentConfig(freq_masks=2, freq_width=8, time_masks=2, time_width=0.1,
                    cutout_rects=3, cutout_time=20, cutout_freq=10)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([100, 60, 30])
    features = torch.randn(3, 64, 100, generator=torch.Generator().manual_seed(0)) + 5.0
    valid = torch.arange(100)[None, :] < lengths[:, None]
    return features * valid[:, None, :], lengths


def _masked(seed: int) -> torch.Tensor:
    features, lengths = _batch()
    return spec_augment(features, lengths, CFG, torch.Generator().manual_seed(seed))


def test_same_seed_same_masks_and_different_seed_different():
    assert torch.equal(_masked(1), _masked(1))
    assert not torch.equal(_masked(1), _masked(2))


def test_masks_something_leaves_inputs_and_padding_alone():
    features, lengths = _batch()
    before, lengths_before = features.clone(), lengths.clone()
    out = spec_augment(features, lengths, CFG, torch.Generator().manual_seed(3))
    assert torch.equal(features, before) and torch.equal(lengths, lengths_before)
    assert out.shape == features.shape
    valid = torch.arange(100)[None, :] < lengths[:, None]
    assert (out[~valid[:, None, :].expand_as(out)] == 0).all()
    # Features are ~N(5, 1), so zeros in valid frames come from masking only.
    zeroed = (out == 0) & valid[:, None, :]
    assert zeroed.any()
    # Unmasked values pass through unchanged.
    kept = out != 0
    assert torch.equal(out[kept], features[kept])


def test_time_masks_stay_inside_valid_length():
    cfg = AugmentConfig(time_masks=10, time_width=25, cutout_rects=0)
    features = torch.ones(4, 8, 50)
    lengths = torch.tensor([50, 20, 5, 1])
    for seed in range(20):
        out = spec_augment(features, lengths, cfg, torch.Generator().manual_seed(seed))
        for b, length in enumerate(lengths.tolist()):
            assert (out[b, :, length:] == 1).all()


def test_all_masks_off_is_identity():
    cfg = AugmentConfig(cutout_rects=0)
    features, lengths = _batch()
    assert torch.equal(spec_augment(features, lengths, cfg, torch.Generator().manual_seed(0)), features)


@pytest.mark.parametrize("rate", [0.9, 0.95, 1.1])
def test_speed_perturb_length_scales_inversely_with_rate(rate):
    sample_rate = 16_000
    t = np.arange(sample_rate) / sample_rate
    samples = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = speed_perturb(samples, rate, sample_rate)
    assert out.dtype == np.float32
    assert abs(len(out) - sample_rate / rate) <= 0.002 * sample_rate
    # Faster playback raises pitch: count zero crossings per output sample.
    crossings = np.count_nonzero(np.diff(np.signbit(out[100:-100]))) / (len(out) - 200)
    base = np.count_nonzero(np.diff(np.signbit(samples[100:-100]))) / (len(samples) - 200)
    assert crossings / base == pytest.approx(rate, rel=0.01)


def test_speed_rate_one_is_a_no_op_and_choice_is_seeded():
    samples = np.zeros(100, dtype=np.float32)
    assert speed_perturb(samples, 1.0, 16_000) is samples
    cfg = AugmentConfig(speed_prob=1.0)
    draws = [choose_speed_rate(cfg, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1 and draws[0] in cfg.speed_rates
    assert choose_speed_rate(AugmentConfig(speed_prob=0.0), np.random.default_rng(0)) == 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="speed_rates"):
        AugmentConfig(speed_rates=(0.75,))
    with pytest.raises(ValueError, match="time_width"):
        AugmentConfig(time_width=1.5)
    with pytest.raises(ValueError, match="narrowband_prob"):
        AugmentConfig(narrowband_prob=1.5)
    with pytest.raises(ValueError, match="narrowband_rate_hz"):
        AugmentConfig(narrowband_rate_hz=0)
    with pytest.raises(ValueError, match="freq_warp"):
        AugmentConfig(freq_warp=0.5)


def _band_energy(samples: np.ndarray, low_hz: float, high_hz: float, sample_rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / sample_rate)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum())


def test_band_limit_removes_the_upper_band_and_keeps_length_and_the_lower_band():
    t = np.arange(16_000) / 16_000
    # A 1 kHz tone (kept) plus a 6 kHz tone (above an 8 kHz recording's 4 kHz Nyquist limit).
    samples = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    out = band_limit(samples, 16_000, 8_000)
    assert out.shape == samples.shape and out.dtype == np.float32
    assert _band_energy(out, 4200, 8000) < 1e-4 * _band_energy(samples, 4200, 8000)
    assert _band_energy(out, 900, 1100) == pytest.approx(_band_energy(samples, 900, 1100), rel=0.02)
    assert band_limit(samples, 16_000, 16_000) is samples  # nothing to cut


def test_warp_moves_a_spectral_peak_by_the_factor_and_factor_one_is_identity():
    features = torch.zeros(3, 64, 5)
    features[:, 20, :] = 1.0  # one "formant" at bin 20
    out = warp_frequency(features, torch.tensor([1.0, 1.25, 0.8]))
    assert torch.equal(out[0], features[0])
    assert out[1, :, 0].argmax() == 25 and out[2, :, 0].argmax() == 16
    # Linear interpolation: bin 22 of the 1.25 warp reads source 17.6, between zeros.
    assert out[1, 22, 0] == 0.0 and torch.isclose(out[1, 24, 0], torch.tensor(0.2 * 1.0), atol=1e-6)


def test_freq_warp_is_seeded_keeps_padding_and_lengths():
    cfg = AugmentConfig(freq_warp=0.15, cutout_rects=0)
    features, lengths = _batch()
    before = features.clone()
    out = spec_augment(features, lengths, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(out, spec_augment(features, lengths, cfg, torch.Generator().manual_seed(4)))
    assert not torch.equal(out, spec_augment(features, lengths, cfg, torch.Generator().manual_seed(5)))
    assert torch.equal(features, before) and out.shape == features.shape
    valid = torch.arange(100)[None, :] < lengths[:, None]
    assert (out[~valid[:, None, :].expand_as(out)] == 0).all()
    assert not torch.equal(out, features)
