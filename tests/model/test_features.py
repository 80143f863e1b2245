"""Tests for model.features: NeMo parity, frame counts, masking, dither, Slaney filterbank, STFT padding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from interop.nemo import _read_archive
from model.audio import decode_audio
from model.features import MelFeaturizer, MelFeaturizerConfig, frames_for_seconds, slaney_mel_filterbank

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nemo"
# Measured: 0.0 (bit-identical) against NeMo 3.0.0 on CPU; the bound leaves room for other BLAS builds.
FEATURE_ATOL = 1e-4


def _featurize(config: MelFeaturizerConfig, audio: torch.Tensor, lengths: list[int], train: bool = False):
    featurizer = MelFeaturizer(config).train(train)
    with torch.no_grad():
        return featurizer(audio, torch.tensor(lengths))


# ---- parity with NeMo ----


@pytest.mark.parametrize("filterbank", ["computed", "from_nemo_file"])
def test_matches_nemo_feature_fixture(speech_root, filterbank):
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    entry = manifest["features"][0]
    expected = np.load(FIXTURES / entry["npy"])  # (64, T_valid), NeMo's preprocessor in eval mode
    audio = decode_audio(speech_root / entry["clip"], 16_000).samples
    featurizer = MelFeaturizer(MelFeaturizerConfig(pad_to=16)).eval()
    if filterbank == "from_nemo_file":
        _, state = _read_archive(FIXTURES / "quartznet_small.nemo")
        featurizer.fb.copy_(state["preprocessor.featurizer.fb"])
        featurizer.window.copy_(state["preprocessor.featurizer.window"])
    with torch.no_grad():
        feats, lengths = featurizer(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
    assert lengths.tolist() == [entry["feature_len"]] == [expected.shape[1]]
    assert feats.shape == (1, 64, entry["padded_frames_returned"])  # T rounded up to pad_to=16, as NeMo
    diff = np.abs(feats[0, :, : lengths[0]].numpy() - expected).max()
    assert diff <= FEATURE_ATOL, f"max |features - NeMo| = {diff:.3g}"
    assert (feats[0, :, lengths[0]:] == 0).all()


# ---- frame counts and masking ----


@pytest.mark.parametrize("num_samples", [1, 159, 160, 161, 16_000, 33_360, 16_159])
def test_feature_lengths_per_frontend(num_samples):
    lengths = torch.tensor([num_samples])
    new = MelFeaturizer(MelFeaturizerConfig(frontend="nemo25"))
    old = MelFeaturizer(MelFeaturizerConfig(frontend="nemo24"))
    assert new.feature_lengths(lengths).item() == num_samples // 160
    assert old.feature_lengths(lengths).item() == num_samples // 160 + 1


@pytest.mark.parametrize("frontend, frames", [("nemo25", 100), ("nemo24", 101)])
def test_one_second_of_audio(frontend, frames):
    audio = 0.1 * torch.randn(1, 16_000, generator=torch.Generator().manual_seed(0))
    feats, lengths = _featurize(MelFeaturizerConfig(frontend=frontend), audio, [16_000])
    assert lengths.tolist() == [frames]
    assert feats.shape == (1, 64, 101)  # the STFT always yields L//hop + 1 columns
    assert lengths.dtype == torch.int64 and feats.dtype == torch.float32
    assert frames_for_seconds(1.0, MelFeaturizerConfig()) == 100


@pytest.mark.parametrize("frontend", ["nemo25", "nemo24"])
@pytest.mark.parametrize("pad_to", [0, 16])
def test_frames_past_the_length_are_zero(frontend, pad_to):
    audio = 0.1 * torch.randn(3, 16_000, generator=torch.Generator().manual_seed(1))
    audio[1, 8_000:] = 0
    audio[2, 3_210:] = 0
    config = MelFeaturizerConfig(frontend=frontend, pad_to=pad_to)
    feats, lengths = _featurize(config, audio, [16_000, 8_000, 3_210])
    extra = 1 if frontend == "nemo24" else 0
    assert lengths.tolist() == [100 + extra, 50 + extra, 20 + extra]
    if pad_to:
        assert feats.shape[-1] % pad_to == 0
    for i, n in enumerate(lengths.tolist()):
        assert (feats[i, :, n:] == 0).all()
        assert (feats[i, :, :n] != 0).any(dim=0).all()  # every valid frame carries signal
        # per-feature normalisation over the valid frames only: zero mean, unit (unbiased) std
        valid = feats[i, :, :n].double()
        torch.testing.assert_close(valid.mean(dim=1), torch.zeros(64, dtype=torch.float64), atol=1e-4, rtol=0)
        torch.testing.assert_close(valid.std(dim=1), torch.ones(64, dtype=torch.float64), atol=1e-3, rtol=0)


# ---- dither ----


def test_dither_only_in_train_mode():
    config = MelFeaturizerConfig(dither=1e-5)
    audio = 0.1 * torch.randn(2, 8_000, generator=torch.Generator().manual_seed(2))
    featurizer = MelFeaturizer(config)
    with torch.no_grad():
        featurizer.eval()
        first, _ = featurizer(audio, torch.tensor([8_000, 6_000]))
        second, _ = featurizer(audio, torch.tensor([8_000, 6_000]))
        featurizer.train()
        noisy_a, _ = featurizer(audio, torch.tensor([8_000, 6_000]))
        noisy_b, _ = featurizer(audio, torch.tensor([8_000, 6_000]))
    assert torch.equal(first, second)
    assert not torch.equal(noisy_a, noisy_b)
    assert not torch.equal(first, noisy_a)
    assert (noisy_a - first).abs().max() < 0.5  # dither is a tiny perturbation, not a different signal


def test_zero_dither_train_mode_is_deterministic():
    audio = 0.1 * torch.randn(1, 8_000, generator=torch.Generator().manual_seed(3))
    eval_feats, _ = _featurize(MelFeaturizerConfig(dither=0.0), audio, [8_000], train=False)
    train_feats, _ = _featurize(MelFeaturizerConfig(dither=0.0), audio, [8_000], train=True)
    assert torch.equal(eval_feats, train_feats)


# ---- filterbank ----


def test_filterbank_is_slaney_normalised_like_nemo():
    _, state = _read_archive(FIXTURES / "quartznet_small.nemo")
    stored = state["preprocessor.featurizer.fb"].float()  # librosa.filters.mel(norm="slaney") in NeMo
    computed = slaney_mel_filterbank(MelFeaturizerConfig())
    assert computed.shape == stored.shape == (1, 64, 257)
    torch.testing.assert_close(computed, stored, atol=1e-6, rtol=0)
    # a few hand-picked values, including the peak of the first and the last triangle
    for mel, freq in [(0, 1), (0, int(stored[0, 0].argmax())), (10, 12), (40, 60), (63, int(stored[0, 63].argmax()))]:
        assert abs(float(computed[0, mel, freq]) - float(stored[0, mel, freq])) <= 1e-6
    # Not the un-normalised triangles (peak 1.0) nor the HTK mel scale.
    plain = AF.melscale_fbanks(257, 0.0, 8000.0, 64, 16_000, norm=None, mel_scale="slaney").T
    htk = AF.melscale_fbanks(257, 0.0, 8000.0, 64, 16_000, norm="slaney", mel_scale="htk").T
    assert (plain - stored[0]).abs().max() > 0.5
    assert (htk - stored[0]).abs().max() > 1e-3
    # Slaney area normalisation: each triangle has height 2 / (its bandwidth in Hz).
    assert stored[0].max(dim=1).values[-1] < stored[0].max(dim=1).values[0]


def test_imported_model_carries_the_stored_filterbank_bit_for_bit():
    from interop.nemo import import_nemo

    model, _ = import_nemo(FIXTURES / "quartznet_small.nemo")
    _, state = _read_archive(FIXTURES / "quartznet_small.nemo")
    assert torch.equal(model.featurizer.fb, state["preprocessor.featurizer.fb"].float())
    torch.testing.assert_close(model.featurizer.fb, slaney_mel_filterbank(model.config.features), atol=1e-6, rtol=0)


# ---- STFT padding: a hand computation of the first frame ----


def _first_frame_by_hand(signal: np.ndarray, pad_mode: str) -> np.ndarray:
    """Log-mel of frame 0 from numpy: pre-emphasis, centre padding, Hann(320) in a 512 FFT."""
    config = MelFeaturizerConfig()
    x = np.concatenate([signal[:1], signal[1:] - 0.97 * signal[:-1]]).astype(np.float64)
    padded = np.pad(x, 256, mode=pad_mode)
    window = np.zeros(512)
    window[96:416] = torch.hann_window(320, periodic=False, dtype=torch.float64).numpy()
    power = np.abs(np.fft.rfft(padded[:512] * window)) ** 2
    mel = slaney_mel_filterbank(config)[0].double().numpy() @ power
    return np.log(mel + 2.0**-24)


def test_nemo24_reflect_pads_and_nemo25_zero_pads():
    rng = np.random.default_rng(4)
    signal = (0.1 * rng.standard_normal(4_000) + np.linspace(-0.5, 0.5, 4_000)).astype(np.float32)
    audio = torch.from_numpy(signal)[None]
    first = {}
    for frontend, pad_mode in (("nemo25", "constant"), ("nemo24", "reflect")):
        feats, _ = _featurize(MelFeaturizerConfig(frontend=frontend, normalize="none"), audio, [4_000])
        first[frontend] = feats[0, :, 0].double().numpy()
        np.testing.assert_allclose(first[frontend], _first_frame_by_hand(signal, pad_mode), atol=1e-3, rtol=0)
    assert np.abs(first["nemo25"] - first["nemo24"]).max() > 0.1
    # Frames whose window lies fully inside the signal do not depend on the padding mode.
    inner = {fe: _featurize(MelFeaturizerConfig(frontend=fe, normalize="none"), audio, [4_000])[0][0, :, 5]
             for fe in ("nemo25", "nemo24")}
    torch.testing.assert_close(inner["nemo25"], inner["nemo24"], atol=1e-4, rtol=0)


# ---- config ----


def test_config_round_trip_and_validation():
    config = MelFeaturizerConfig(frontend="nemo24", pad_to=16, dither=0.0, highfreq_hz=7600.0)
    assert MelFeaturizerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.win_length, config.hop_length) == (320, 160)
    for bad in (dict(frontend="nemo99"), dict(normalize="all_features"), dict(n_fft=256), dict(pad_to=-1),
                dict(num_mels=0)):
        with pytest.raises(ValueError):
            MelFeaturizerConfig(**bad)


@pytest.mark.parametrize("slice_samples", [16_000, 48_000], ids=["one row", "three rows"])
def test_slices_of_rows_give_the_whole_batchs_features_bit_for_bit(monkeypatch, slice_samples):
    import model.features as features_module

    featurizer = MelFeaturizer(MelFeaturizerConfig()).eval()
    lengths = torch.tensor([16_000, 9_000, 16_000, 4_000, 12_345])
    audio = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (len(lengths), 16_000)).astype(np.float32))
    audio[torch.arange(16_000)[None, :] >= lengths[:, None]] = 0.0
    with torch.no_grad():
        monkeypatch.setattr(features_module, "_ROWS_SAMPLES", 10**9)
        whole, whole_lengths = featurizer(audio, lengths)
        monkeypatch.setattr(features_module, "_ROWS_SAMPLES", slice_samples)
        sliced, sliced_lengths = featurizer(audio, lengths)
    assert torch.equal(sliced_lengths, whole_lengths) and torch.equal(sliced, whole)
