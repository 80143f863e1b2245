"""`asr transcribe --json` on every audio format in the shared samples, and model.audio.decode_audio unit checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.audio import AudioError, decode_audio

from tests.cli.helpers import asr_console, asr_in_process

# MP3 frame counts in the header include encoder padding (~270 samples here); allow 20 ms.
DURATION_TOLERANCE_S = 0.02
FSDD_CLIPS = 5


def _one_file_per_format(speech_root: Path) -> list[Path]:
    """The shortest file of each (folder, container, rate, channels, sample type) in samples/, plus all of formats/."""
    shortest: dict[tuple, tuple[float, Path]] = {}
    chosen = []
    for path in sorted((speech_root / "samples").rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".wav", ".flac", ".mp3", ".ogg"):
            continue
        info = sf.info(path)
        if path.parent.name == "formats":
            chosen.append(path)
            continue
        key = (path.parent.name, info.format, info.samplerate, info.channels, info.subtype)
        if key not in shortest or info.duration < shortest[key][0]:
            shortest[key] = (info.duration, path)
    return sorted(chosen + [path for _, path in shortest.values()])


def _manifest_durations(manifest: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return {row["audio_filepath"]: float(row["duration"]) for row in rows}


def _check_results(result, files: list[Path], expected_durations: dict[Path, float]) -> list[dict]:
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "tiny@1" and report["decoder"] == "greedy"
    results = report["results"]
    assert [r["file"] for r in results] == [str(f) for f in files]  # one result per file, in order
    for item, path in zip(results, files):
        assert abs(item["duration"] - expected_durations[path]) <= DURATION_TOLERANCE_S, (path, item["duration"])
        assert isinstance(item["text"], str) and isinstance(item["words"], list)
        for word in item["words"]:
            assert 0.0 <= word["start"] < word["end"] <= item["duration"] + 0.04
            assert 0.0 <= word["confidence"] <= 1.0
    return results


def test_transcribe_every_sample_format(tiny_registry, speech_root):
    files = _one_file_per_format(speech_root)
    infos = {f: sf.info(f) for f in files}
    formats = {(i.format, i.samplerate, i.channels, i.subtype) for i in infos.values()}
    # the brief's list: 16 kHz FLAC and WAV, 22.05 kHz WAV, 48 kHz MP3, 44.1 kHz stereo 24-bit FLAC
    assert {("FLAC", 16_000, 1), ("WAV", 16_000, 1), ("WAV", 22_050, 1), ("MP3", 48_000, 1),
            ("FLAC", 44_100, 2)} <= {f[:3] for f in formats}
    assert ("FLAC", 44_100, 2, "PCM_24") in formats
    formats_dir = sorted(p for p in (speech_root / "samples" / "formats").iterdir() if p.is_file())
    assert set(formats_dir) <= set(files)
    listed = _manifest_durations(speech_root / "samples.json")
    expected = {f: listed.get(str(f.relative_to(speech_root)), infos[f].duration) for f in files}
    for f in files:
        assert abs(expected[f] - infos[f].duration) <= DURATION_TOLERANCE_S, f
    # ONE process for the whole group: the real console script.
    result = asr_console("--registry", tiny_registry, "transcribe", "--json", *files, "--model", "tiny")
    _check_results(result, files, expected)


def test_transcribe_8khz_fsdd_clips(tiny_registry, speech_root):
    listed = _manifest_durations(speech_root / "fsdd_test.json")
    files = [speech_root / rel for rel in sorted(listed)[:FSDD_CLIPS]]
    assert all(sf.info(f).samplerate == 8_000 for f in files)
    expected = {f: listed[str(f.relative_to(speech_root))] for f in files}
    result = asr_in_process("--registry", tiny_registry, "transcribe", "--json", *files, "--model", "tiny",
                            "--batch-size", "2")
    _check_results(result, files, expected)


def test_plain_text_output_has_one_line_per_file(tiny_registry, speech_root):
    files = [speech_root / rel for rel in sorted(_manifest_durations(speech_root / "fsdd_test.json"))[:2]]
    result = asr_in_process("--registry", tiny_registry, "transcribe", *files, "--model", "tiny")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and [line.split("\t")[0] for line in lines] == [str(f) for f in files]


# ---- decode_audio ----


def _tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_stereo_is_down_mixed(tmp_path):
    left, right = _tone(16_000, 0.5, 440), _tone(16_000, 0.5, 1000) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    audio = decode_audio(path)
    assert audio.source_channels == 2 and audio.sample_rate == audio.source_sample_rate == 16_000
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resampled_to_16khz_with_the_right_length(rate, tmp_path):
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, _tone(rate, 1.5), rate, subtype="FLOAT")
    audio = decode_audio(path)
    assert audio.sample_rate == 16_000 and audio.source_sample_rate == rate
    assert abs(len(audio.samples) - 1.5 * 16_000) <= 1
    assert audio.duration_s == pytest.approx(1.5, abs=1e-4)
    assert _peak_hz(audio.samples, 16_000) == pytest.approx(440, abs=2)  # pitch survives resampling
    assert np.abs(audio.samples).max() == pytest.approx(0.3, abs=0.02)


def test_real_44k_stereo_24bit_flac(speech_root):
    path = speech_root / "samples" / "formats" / "jfk_44k_stereo_24bit.flac"
    info = sf.info(path)
    audio = decode_audio(path)
    assert (audio.source_sample_rate, audio.source_channels) == (44_100, 2)
    assert abs(len(audio.samples) - info.frames * 16_000 / 44_100) <= 1
    assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() <= 1.0


def test_bytes_input_and_target_rate(tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, _tone(8_000, 1.0), 8_000)
    from_bytes = decode_audio(path.read_bytes(), 16_000)
    np.testing.assert_array_equal(from_bytes.samples, decode_audio(path).samples)
    assert len(decode_audio(path, 8_000).samples) == 8_000  # no resampling at the native rate
    with pytest.raises(AudioError, match="upload.wav"):
        decode_audio(b"\x00" * 100, name="upload.wav")
    with pytest.raises(AudioError, match="empty"):
        decode_audio(b"")


def test_rates_outside_8_to_192khz_are_refused(tmp_path):
    for rate in (4_000, 384_000):
        path = tmp_path / f"r{rate}.wav"
        sf.write(path, _tone(rate, 0.1), rate)
        with pytest.raises(AudioError, match=f"sample rate {rate} Hz"):
            decode_audio(path)
    with pytest.raises(AudioError, match="directory"):
        decode_audio(tmp_path)
