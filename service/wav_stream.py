"""A gRPC stream whose audio starts with a WAV file's header, as Riva's sample apps send a .wav file's bytes.

Real Riva reads the header of such a stream (its clients leave the encoding and the sample rate unset), so we do:
``peel_wav_header`` reads audio messages until the header is complete, and hands back the format it states and
the messages from the first sample on. Only 16-bit PCM WAV streams (what the stream reader decodes) are accepted.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from service.asr_pb import asr_pb2
from service.domain import RequestError

# A header bigger than this (metadata chunks before the samples) is refused rather than buffered.
MAX_HEADER_BYTES = 64 * 1024
_PCM, _EXTENSIBLE = 1, 0xFFFE


@dataclass(frozen=True)
class WavFormat:
    sample_rate: int
    channels: int
    data_offset: int
    """Bytes before the first sample."""


def parse_wav_header(prefix: bytes) -> WavFormat | None:
    """The format of a stream that starts with ``prefix``; None while the header is not complete yet.

    Raises:
        RequestError: a WAV header whose samples are not 16-bit PCM, or one longer than MAX_HEADER_BYTES.
    """
    position, fmt = 12, None
    while len(prefix) >= position + 8:
        chunk, size = prefix[position:position + 4], struct.unpack_from("<I", prefix, position + 4)[0]
        body = position + 8
        if chunk == b"data":
            if fmt is None:
                raise RequestError("the WAV header has no fmt chunk before its samples")
            return WavFormat(fmt[0], fmt[1], body)
        if chunk == b"fmt ":
            if len(prefix) < body + 16:
                return None
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", prefix, body)
            if tag not in (_PCM, _EXTENSIBLE) or bits != 16 or channels < 1:
                raise RequestError(f"a streamed WAV file must hold 16-bit PCM samples; this one has format {tag}, "
                                   f"{bits}-bit, {channels} channel(s)")
            fmt = (rate, channels)
        position = body + size + (size & 1)  # chunks are padded to an even size
        if position > MAX_HEADER_BYTES:
            raise RequestError(f"the WAV header is longer than {MAX_HEADER_BYTES} bytes")
    return None


def is_wav(prefix: bytes) -> bool:
    return prefix[:4] == b"RIFF" and prefix[8:12] == b"WAVE"


async def peel_wav_header(messages: AsyncIterator, next_message: Callable[[AsyncIterator], Awaitable]
                          ) -> tuple[WavFormat | None, AsyncIterator]:
    """Reads a stream's first audio messages: the WAV format they start with (None: raw PCM), and every message
    again from the first sample on.

    ``next_message(messages)`` returns the next message or None at the end (it applies the idle timeout).
    """
    peeked: list = []
    data = b""
    while True:
        message = await next_message(messages)
        if message is None:  # the stream ended
            if is_wav(data):
                raise RequestError("the stream ended inside its WAV header")
            return None, _chain(peeked, None)
        peeked.append(message)
        if message.WhichOneof("streaming_request") != "audio_content":
            return None, _chain(peeked, messages)  # the reader refuses it
        data += message.audio_content
        if len(data) < 12:
            continue
        if not is_wav(data):
            return None, _chain(peeked, messages)
        wav = parse_wav_header(data)
        if wav is not None:
            return wav, _chain([asr_pb2.StreamingRecognizeRequest(audio_content=data[wav.data_offset:])], messages)
        if len(data) > MAX_HEADER_BYTES:
            raise RequestError(f"the WAV header is longer than {MAX_HEADER_BYTES} bytes")


async def _chain(first: list, rest: AsyncIterator | None) -> AsyncIterator:
    for message in first:
        yield message
    if rest is not None:
        async for message in rest:
            yield message
