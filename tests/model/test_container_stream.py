"""model.container_stream: a file decoded while its bytes arrive, block by block, with errors reported once."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import soundfile as sf

from model.audio import AudioError, decode_audio
from model.container_stream import UNSTREAMABLE, ContainerStream, stream_demuxer
from tests.service.test_grpc_support import AN4_TEST_MANIFEST, an4_test_set

pytestmark = pytest.mark.skipif(not AN4_TEST_MANIFEST.exists(), reason="needs the AN4 test set")


class _Collected:
    def __init__(self) -> None:
        self.blocks: list[tuple[np.ndarray, int]] = []
        self.first_block, self.ended = threading.Event(), threading.Event()
        self.error: AudioError | None = None

    def on_block(self, block: np.ndarray, rate: int) -> None:
        self.blocks.append((block, rate))
        self.first_block.set()

    def on_end(self, error: AudioError | None) -> None:
        self.error = error
        self.ended.set()


def _file(container: str, subtype: str, rate: int, clips: int) -> tuple[bytes, np.ndarray]:
    speech = np.concatenate([decode_audio(p, rate).samples for p, _ in an4_test_set(limit=clips)])
    data = io.BytesIO()
    sf.write(data, speech, rate, format=container, subtype=subtype)
    return data.getvalue(), speech


@pytest.mark.parametrize("container, subtype, rate", [("FLAC", "PCM_16", 16_000), ("OGG", "OPUS", 48_000),
                                                      ("OGG", "VORBIS", 16_000)])
def test_blocks_arrive_before_the_stream_ends_and_add_up_to_the_file(container, subtype, rate):
    data, speech = _file(container, subtype, rate, clips=6)
    seen = _Collected()
    decoder = ContainerStream(stream_demuxer(data[:8]), "test", seen.on_block, seen.on_end)
    cut = 3 * len(data) // 4
    for offset in range(0, cut, 4096):
        decoder.feed(data[offset:min(offset + 4096, cut)])
    assert seen.first_block.wait(30), "nothing decoded from three quarters of the file"
    assert not seen.ended.is_set()
    decoder.feed(data[cut:])
    decoder.end()
    assert seen.ended.wait(30) and seen.error is None
    decoded = np.concatenate([b for b, _ in seen.blocks])
    assert {r for _, r in seen.blocks} == {rate}
    if subtype == "PCM_16":  # lossless: the 16-bit samples exactly
        np.testing.assert_array_equal(decoded, sf.read(io.BytesIO(data), dtype="float32")[0])
    else:  # lossy codecs keep the length (Opus pads its start)
        assert abs(len(decoded) - len(speech)) < 0.05 * rate


def test_a_broken_stream_ends_with_one_error_and_cancel_stops_the_thread():
    seen = _Collected()
    decoder = ContainerStream("flac", "the streamed flac file", seen.on_block, seen.on_end)
    decoder.feed(b"fLaC" + b"\x7f" * 5000)
    decoder.end()
    assert seen.ended.wait(30) and isinstance(seen.error, AudioError) and "flac file" in str(seen.error)
    waiting = ContainerStream("ogg", "never fed", seen.on_block, lambda error: None)
    waiting.cancel()  # a call that ends before its stream does
    waiting._thread.join(10)
    assert not waiting._thread.is_alive()


def test_only_unambiguous_starts_are_streams():
    heads = (b"fLaC\0\0\0\x22", b"OggS\0\2\0\0", b"\x1a\x45\xdf\xa3\x01\0\0\0", b"ID3\x04\0\0\0\0",
             b"\0\0\0\x20ftyp", b"RIFF\0\0\0\0", b"\xff\xfb\x90\x64\0\0\0\0", b"\0\0\0\0\0\0\0\0")
    assert [stream_demuxer(h) for h in heads] == ["flac", "ogg", "matroska", "mp3", UNSTREAMABLE, None, None, None]
