"""model.audio_stream: headers before decoding, and spans that match a whole-file decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from model.audio import AudioError, decode_audio
from model.audio_stream import AudioStream, probe_audio

# Spans are resampled with 20 ms of context and cut, so they differ from the whole-file decode by
# float32 rounding only: the sinc kernel is the same and sees the same samples (measured ~1e-7).
SPAN_ATOL = 1e-5


def _tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)
    return np.stack([mono * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


@pytest.mark.parametrize("rate, channels", [(48_000, 2), (44_100, 2), (22_050, 1), (16_000, 1), (8_000, 1)])
def test_spans_equal_the_whole_file_decode(rate, channels, tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, _tone(7.3, rate, channels), rate, subtype="PCM_24")
    whole = decode_audio(path, 16_000).samples
    with AudioStream(path, 16_000, "tone.flac") as stream:
        assert stream.info.sample_rate == rate and stream.info.channels == channels
        assert stream.num_samples == len(whole)
        for start, end in [(0, 16_000), (12_345, 40_001), (len(whole) - 5_000, len(whole)), (100, 101)]:
            np.testing.assert_allclose(stream.read(start, end), whole[start:end], atol=SPAN_ATOL)
        assert len(stream.read(len(whole) - 10, len(whole) + 500)) == 10  # clipped at the end
        assert len(stream.read(50, 50)) == 0


def test_the_header_alone_gives_the_duration_of_a_long_file(tmp_path):
    path = tmp_path / "long.flac"
    with sf.SoundFile(path, "w", 48_000, 2, format="FLAC") as out:
        block = np.zeros((48_000 * 60, 2), dtype=np.float32)
        for _ in range(10):  # 10 minutes of silence, written a minute at a time
            out.write(block)
    info = probe_audio(path, "long.flac")
    assert (info.frames, info.sample_rate, info.channels) == (48_000 * 600, 48_000, 2)
    assert info.duration_s == pytest.approx(600.0)
    with open(path, "rb") as handle:  # a file object (a spooled upload) works the same, and is rewound
        assert probe_audio(handle).duration_s == pytest.approx(600.0) and handle.tell() == 0


def test_unreadable_and_unsupported_inputs_are_audio_errors(tmp_path):
    with pytest.raises(AudioError, match="x.mp3: not a readable audio file"):
        probe_audio(io.BytesIO(np.random.default_rng(0).bytes(4_000)), "x.mp3")
    low = tmp_path / "low.wav"
    sf.write(low, np.zeros(4_000, dtype=np.float32), 4_000)
    with pytest.raises(AudioError, match="sample rate 4000 Hz"):
        probe_audio(low, "low.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="zero length"):
        probe_audio(empty, "empty.wav")


def test_non_finite_samples_and_truncated_files_fail_when_read(tmp_path):
    bad = tmp_path / "nan.wav"
    samples = np.zeros(16_000, dtype=np.float32)
    samples[9_000] = np.nan
    sf.write(bad, samples, 16_000, subtype="FLOAT")
    with AudioStream(bad, 16_000, "nan.wav") as stream:
        assert len(stream.read(0, 4_000)) == 4_000  # the span before the NaN is fine
        with pytest.raises(AudioError, match="NaN or infinite"):
            stream.read(8_000, 10_000)
    cut = tmp_path / "cut.flac"
    sf.write(cut, _tone(20.0, 16_000, 1), 16_000)
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with AudioStream(cut, 16_000, "cut.flac") as stream:
        with pytest.raises(AudioError, match="cut.flac"):
            stream.read(0, stream.num_samples)


def test_close_waits_for_a_read_in_progress_which_then_stops(tmp_path):
    """An owner that ends mid-read (a cancelled request) must never free the handle under libsndfile."""
    import threading

    from model.audio_stream import AudioStreamClosed

    path = tmp_path / "long.flac"
    sf.write(path, _tone(60.0, 48_000, 2), 48_000)
    stream = AudioStream(io.BytesIO(path.read_bytes()), 16_000, "long.flac")
    reading, may_go_on = threading.Event(), threading.Event()
    handle_read = stream._handle.read
    blocks_after_close = []

    def first_block_waits(*args, **kwargs):
        reading.set()
        may_go_on.wait(5)
        if stream._closed:
            blocks_after_close.append(1)
        return handle_read(*args, **kwargs)

    stream._handle.read = first_block_waits
    outcome = []

    def read_everything():
        try:
            outcome.append(len(stream.read(0, stream.num_samples)))
        except AudioStreamClosed as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read_everything)
    reader.start()
    assert reading.wait(5)
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close waits: the handle is in use
    may_go_on.set()
    closer.join(5)
    reader.join(5)
    assert not closer.is_alive() and not reader.is_alive()
    assert isinstance(outcome[0], AudioStreamClosed)  # the read stopped at its next block
    assert blocks_after_close == [1]  # the block already under way finished on an open handle
    with pytest.raises(AudioStreamClosed):
        stream.read(0, 100)
