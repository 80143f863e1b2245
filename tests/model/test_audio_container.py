"""What phones and browsers record, through PyAV (model.audio_container): recognised from the first bytes, decoded
whole (decode_audio) or through a temporary file a window at a time (AudioStream), identically; broken files give
one line. The files are encoded here with PyAV's own FFmpeg (no binary fixtures)."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest

from model.audio import AudioError, decode_audio
from model.audio_container import sniff_container
from model.audio_stream import AudioStream

av = pytest.importorskip("av")

RATE = 48_000
# (PyAV muxer, encoder, file name): Chrome's MediaRecorder, iPhone voice memos, video, Common Voice, raw AAC, and
# an MPEG program stream (OpenAI's "mpeg").
FORMATS = [("webm", "libopus", "c.webm"), ("ipod", "aac", "c.m4a"), ("mp4", "aac", "c.mp4"),
           ("mp3", "libmp3lame", "c.mp3"), ("adts", "aac", "c.aac"), ("mpeg", "mp2", "c.mpeg")]


def encode(muxer: str, encoder: str, samples: np.ndarray, rate: int = RATE, channels: int = 2) -> bytes:
    """``samples`` (mono float32) in a container, the same signal on every channel."""
    buf = io.BytesIO()
    layout = "mono" if channels == 1 else "stereo"
    with av.open(buf, "w", format=muxer) as out:
        stream = out.add_stream(encoder, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.tile(samples[None, :], (channels, 1)).astype(np.float32),
                                           format="fltp", layout=layout)
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("muxer, encoder, name", FORMATS)
def test_each_container_decodes_whole_and_a_window_at_a_time_to_the_same_samples(muxer, encoder, name):
    data = encode(muxer, encoder, tone(2.0))
    whole = decode_audio(data, 16_000, name=name)
    assert (whole.source_sample_rate, whole.source_channels) == (RATE, 2)
    # Codecs add priming and padding: at most one 2,048-sample AAC frame and its priming, 2 x 43 ms at 48 kHz.
    assert abs(whole.duration_s - 2.0) <= 0.09, whole.duration_s
    with AudioStream(io.BytesIO(data), 16_000, name) as stream:
        assert stream.num_samples == len(whole.samples)
        windows = [stream.read(start, start + 8_000) for start in range(0, stream.num_samples, 8_000)]
    # The same decoder into a float WAV, read back and resampled a window at a time with context (model.audio_stream).
    np.testing.assert_allclose(np.concatenate(windows), whole.samples, atol=1e-5)
    # A lossy 440 Hz tone is still that tone: most of its energy at 440 Hz.
    middle = whole.samples[4_000:28_000]
    spectrum = np.abs(np.fft.rfft(middle))
    assert abs(np.argmax(spectrum) * 16_000 / len(middle) - 440) < 2


def test_the_first_bytes_choose_the_demuxer_and_nothing_else_reaches_ffmpeg():
    assert sniff_container(encode("webm", "libopus", tone(0.1))[:16]) == "matroska"
    assert sniff_container(encode("ipod", "aac", tone(0.1))[:16]) == "mov"
    assert sniff_container(encode("mp3", "libmp3lame", tone(0.1))[:16]) == "mp3"
    assert sniff_container(encode("adts", "aac", tone(0.1))[:16]) == "aac"
    assert sniff_container(b"\xff\xfb\x90\x00" + bytes(12)) == "mp3"  # a bare MPEG-1 layer III frame
    for head in (b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC\x00\x00\x00\x22", b"OggS\x00\x02", b"#EXTM3U\nhttp://x/",
                 b"", b"\xff"):
        assert sniff_container(head) is None, head  # libsndfile's, or nobody's: a playlist is never opened


@pytest.mark.parametrize("damage, fragment", [
    (lambda data: data[:200], "not a readable audio file"),
    (lambda data: data[:4] + bytes(len(data) - 4), "not a readable audio file"),
])
def test_a_damaged_container_is_one_line_of_error(damage, fragment):
    data = damage(encode("ipod", "aac", tone(1.0)))
    for read in (lambda: decode_audio(data, 16_000, name="memo.m4a"),
                 lambda: AudioStream(io.BytesIO(data), 16_000, "memo.m4a").close()):
        with pytest.raises(AudioError) as error:
            read()
        message = str(error.value)
        assert message.startswith("memo.m4a: ") and fragment in message and "\n" not in message, message


def test_decoding_stops_past_the_duration_limit_and_the_temporary_file_goes_with_the_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = encode("webm", "libopus", tone(3.0), channels=1)
    stream = AudioStream(io.BytesIO(data), 16_000, "long.webm", max_duration_s=1.0)
    # Decoding stops at the first frame past 1 s (Opus frames are 20 ms): the caller sees it is too long.
    assert 1.0 < stream.duration_s <= 1.0 + 0.02 + 1e-9, stream.duration_s
    assert len(os.listdir(tmp_path)) == 1
    stream.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(AudioError):  # and a failed open leaves nothing behind either
        AudioStream(io.BytesIO(data[:300]), 16_000, "cut.webm")
    assert os.listdir(tmp_path) == []
