"""model.audio: decoding, down-mixing, resampling, speed changes and the one-line AudioError messages."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from model.audio import (MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioError, change_speed, decode_audio, resample,
                         resample_tensor, speed_resampling_rates, unreadable)

# A pure tone resampled with the Kaiser sinc kernel (width 16, rolloff 0.945) against the same tone
# generated at the target rate, away from the edges: measured 4e-7 to 6e-6 for 8-48 kHz sources, and no more
# for 96-192 kHz.
# 1e-4 leaves a margin of 16x; a wrong ratio or a missing low-pass moves samples by 1e-2 or more.
TONE_ATOL = 1e-4
EDGE = 800  # samples at each end where the kernel sees zero padding


def _tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# --- decode_audio ----------------------------------------------------------------------------------


def test_int16_wav_at_the_target_rate_decodes_to_exact_float_samples(tmp_path) -> None:
    pcm = (np.arange(-4000, 4000, 7, dtype=np.int32) * 8).astype(np.int16)
    path = tmp_path / "ramp.wav"
    sf.write(path, pcm, 16_000, subtype="PCM_16")
    decoded = decode_audio(path, 16_000)
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    np.testing.assert_array_equal(decoded.samples, pcm.astype(np.float32) / 32768)  # libsndfile's int16 scaling
    assert (decoded.sample_rate, decoded.source_sample_rate, decoded.source_channels) == (16_000, 16_000, 1)
    assert decoded.duration_s == pytest.approx(len(pcm) / 16_000)


def test_float_wav_keeps_its_samples_bit_for_bit(tmp_path) -> None:
    samples = np.random.default_rng(0).uniform(-0.9, 0.9, 12_345).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, samples, 16_000, subtype="FLOAT")
    np.testing.assert_array_equal(decode_audio(path, 16_000).samples, samples)


def test_stereo_is_downmixed_to_the_mean_of_its_channels(tmp_path) -> None:
    left, right = _tone(0.5, 16_000, 300.0, 0.6), _tone(0.5, 16_000, 1700.0, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    decoded = decode_audio(path, 16_000)
    assert decoded.source_channels == 2 and decoded.samples.shape == left.shape
    # (l + r) / 2 in float32 differs from numpy's float32 mean by at most one rounding: 1 ulp of 0.8 is 6e-8.
    np.testing.assert_allclose(decoded.samples, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("source_rate", [8_000, 22_050, 44_100, 48_000, 96_000, 176_400, 192_000])
def test_resampling_to_the_target_rate_keeps_duration_and_waveform(source_rate, tmp_path) -> None:
    seconds = 1.37
    path = tmp_path / f"tone_{source_rate}.flac"
    sf.write(path, _tone(seconds, source_rate), source_rate, subtype="PCM_24")
    decoded = decode_audio(path, 16_000)
    assert decoded.sample_rate == 16_000 and decoded.source_sample_rate == source_rate
    source_duration = round(seconds * source_rate) / source_rate
    assert abs(decoded.duration_s - source_duration) <= 1 / 16_000  # within one output sample
    reference = _tone(len(decoded.samples) / 16_000, 16_000)
    # PCM_24 quantisation adds at most 6e-8, far below TONE_ATOL.
    np.testing.assert_allclose(decoded.samples[EDGE:-EDGE], reference[EDGE:-EDGE], atol=TONE_ATOL)


def test_bytes_input_decodes_like_the_file(tmp_path) -> None:
    path = tmp_path / "tone.flac"
    sf.write(path, _tone(0.8, 22_050), 22_050, subtype="PCM_16")
    from_path = decode_audio(path, 16_000).samples
    data = path.read_bytes()
    for source in (data, bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_audio(source, 16_000).samples, from_path)


def test_garbage_bytes_raise_a_one_line_error_named_after_the_input() -> None:
    with pytest.raises(AudioError) as excinfo:
        decode_audio(b"definitely not audio" * 50)
    assert _one_line_error(excinfo).startswith("audio: not a readable audio file")
    with pytest.raises(AudioError) as excinfo:
        decode_audio(b"definitely not audio" * 50, name="upload.wav")
    assert _one_line_error(excinfo).startswith("upload.wav: ")


def test_empty_bytes_and_empty_files_are_refused(tmp_path) -> None:
    with pytest.raises(AudioError) as excinfo:
        decode_audio(b"")
    assert "empty" in _one_line_error(excinfo)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError) as excinfo:
        decode_audio(empty, name="empty.wav")
    assert _one_line_error(excinfo) == "empty.wav: empty file (0 bytes)"


def test_missing_file_and_directory_are_refused(tmp_path) -> None:
    with pytest.raises(AudioError) as excinfo:
        decode_audio(tmp_path / "absent.wav", name="absent.wav")
    assert _one_line_error(excinfo) == "absent.wav: file not found"
    with pytest.raises(AudioError) as excinfo:
        decode_audio(tmp_path, name="folder")
    assert "directory" in _one_line_error(excinfo)


def test_zero_length_audio_is_refused(tmp_path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16_000)
    assert path.stat().st_size > 0  # a header with no frames, not an empty file
    with pytest.raises(AudioError) as excinfo:
        decode_audio(path, name="silent.wav")
    assert "zero length" in _one_line_error(excinfo)


def test_non_finite_samples_are_refused(tmp_path) -> None:
    samples = np.zeros(1000, dtype=np.float32)
    samples[500] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError) as excinfo:
        decode_audio(path, name="nan.wav")
    assert "NaN" in _one_line_error(excinfo)


@pytest.mark.parametrize("rate", [MIN_SAMPLE_RATE - 2_000, MAX_SAMPLE_RATE * 2])
def test_sample_rates_outside_the_supported_range_are_refused(rate, tmp_path) -> None:
    path = tmp_path / "odd_rate.wav"
    sf.write(path, np.zeros(rate // 10, dtype=np.float32), rate)
    with pytest.raises(AudioError) as excinfo:
        decode_audio(path, name="odd_rate.wav")
    message = _one_line_error(excinfo)
    assert f"{rate} Hz" in message and f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE}" in message


def test_unreadable_file_error_does_not_contain_its_directory(tmp_path) -> None:
    folder = tmp_path / "private:folder"  # a colon, as libsndfile's own message uses one as separator
    folder.mkdir()
    for name, content in (("random.wav", bytes(range(256)) * 8), ("truncated.wav", b"RIFF\x10\x00\x00\x00WAVEfmt ")):
        path = folder / name
        path.write_bytes(content)
        with pytest.raises(AudioError) as excinfo:
            decode_audio(path, name=name)
        message = _one_line_error(excinfo)
        assert message.startswith(f"{name}: not a readable audio file (")
        assert str(folder) not in message and "private" not in message


def test_unreadable_strips_libsndfiles_path_prefix_and_rewords_its_misleading_message() -> None:
    error = sf.LibsndfileError(1, prefix="Error opening '/home/someone/private/c.wav': ")
    assert "/home/someone" in str(error)  # what libsndfile itself says
    message = str(unreadable("c.wav", error))
    assert message == "c.wav: not a readable audio file (Format not recognised.)"
    exists = RuntimeError("Error opening '/home/someone/private/c.wav': File does not exist or is not a regular file.")
    assert str(unreadable("c.wav", exists)) == "c.wav: not a readable audio file (unrecognised or corrupt data)"
    assert str(unreadable("c.wav", ValueError(""))) == "c.wav: not a readable audio file (unknown format)"


# --- resample / resample_tensor ----------------------------------------------------------------------


def test_resample_at_the_same_rate_returns_its_input() -> None:
    samples = _tone(0.1, 16_000)
    assert resample(samples, 16_000, 16_000) is samples
    tensor = torch.from_numpy(samples)
    assert resample_tensor(tensor, 16_000, 16_000) is tensor


@pytest.mark.parametrize("source_rate", [8_000, 22_050, 44_100])
def test_resample_and_resample_tensor_agree_on_each_row_of_a_batch(source_rate) -> None:
    clip = _tone(0.6, source_rate, 523.0)
    one = resample(clip, source_rate, 16_000)
    assert one.dtype == np.float32 and len(one) == math.ceil(len(clip) * 16_000 / source_rate)
    batch = resample_tensor(torch.from_numpy(np.stack([clip, 0.25 * clip])), source_rate, 16_000).numpy()
    assert batch.shape == (2, len(one))
    # The same kernel over the same samples, but a batched convolution may sum its ~70 taps in another
    # order: a few float32 ulps of values up to 0.5 (6e-8 each), measured 1.8e-7. A different kernel or
    # ratio would move samples by 1e-3 or more.
    np.testing.assert_allclose(batch[0], one, atol=1e-6)
    np.testing.assert_allclose(batch[1], 0.25 * one, atol=1e-6)


# --- speed changes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.95, 1.05, 1.1, 1.234, 2.0])
def test_speed_resampling_rates_are_small_coprime_integers_close_to_the_requested_ratio(rate) -> None:
    from_rate, to_rate = speed_resampling_rates(rate, 16_000)
    assert math.gcd(from_rate, to_rate) == 1 and from_rate <= 100
    # limit_denominator(100) keeps the ratio within 1e-4 (relative) of 1 / rate, as the module documents.
    assert to_rate / from_rate == pytest.approx(1 / rate, rel=1e-4)


def test_speed_resampling_rates_for_simple_rates() -> None:
    assert speed_resampling_rates(0.9, 16_000) == (9, 10)
    assert speed_resampling_rates(2.0, 16_000) == (2, 1)
    assert speed_resampling_rates(1.0, 16_000) == (1, 1)


@pytest.mark.parametrize("rate, sample_rate", [(0.49, 16_000), (2.01, 16_000), (0.0, 16_000), (1.1, 0), (1.1, -8)])
def test_speed_resampling_rates_refuse_out_of_range_arguments(rate, sample_rate) -> None:
    with pytest.raises(ValueError):
        speed_resampling_rates(rate, sample_rate)
    with pytest.raises(ValueError):
        change_speed(np.zeros(100, dtype=np.float32), rate, sample_rate)


@pytest.mark.parametrize("rate", [0.5, 0.9, 1.1, 1.234, 2.0])
def test_change_speed_length_is_the_input_length_over_the_rate(rate) -> None:
    samples = _tone(1.0, 16_000)
    changed = change_speed(samples, rate, 16_000)
    from_rate, to_rate = speed_resampling_rates(rate, 16_000)
    assert changed.dtype == np.float32
    assert len(changed) == math.ceil(len(samples) * to_rate / from_rate)  # torchaudio's output length
    # The resampling ratio is within 1e-4 of 1 / rate, so over 16000 samples the length is within 2 + 1 of L / rate.
    assert abs(len(changed) - len(samples) / rate) <= 3


def test_change_speed_plays_faster_for_rates_above_one() -> None:
    samples = _tone(1.0, 16_000, 400.0)
    assert _peak_hz(samples, 16_000) == pytest.approx(400, abs=1)
    # Read back at 16 kHz, a 400 Hz tone sped up 1.25x is 500 Hz; slowed to 0.8x it is 320 Hz (1 Hz FFT bins).
    assert _peak_hz(change_speed(samples, 1.25, 16_000), 16_000) == pytest.approx(500, abs=1.5)
    assert _peak_hz(change_speed(samples, 0.8, 16_000), 16_000) == pytest.approx(320, abs=1.5)


def test_change_speed_at_rate_one_returns_its_input() -> None:
    samples = _tone(0.1, 16_000)
    assert change_speed(samples, 1.0, 16_000) is samples


def test_decoded_bytes_from_an_in_memory_wav() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([_tone(0.25, 44_100)] * 2, axis=1), 44_100, format="WAV", subtype="PCM_16")
    decoded = decode_audio(buffer.getvalue(), 16_000)
    assert (decoded.source_sample_rate, decoded.source_channels, decoded.sample_rate) == (44_100, 2, 16_000)
    assert abs(decoded.duration_s - 0.25) <= 1 / 16_000
