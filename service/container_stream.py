"""A gRPC stream whose audio is a compressed file's bytes (FLAC, Ogg Opus or Vorbis, WebM, MP3), decoded as it arrives.

Riva's sample apps stream a .flac file's bytes as they would a .wav's, and browsers record Opus in Ogg or
WebM. ``decode_container`` looks at a stream's first audio bytes; for one of those containers it starts a
decoder (model.container_stream) and hands back the stream's sample rate and its audio as mono float32
messages (the decoder's own samples, not rounded to 16 bits), decoded while the client still sends, so the rest of the streaming path (the reader's backlog
bound, the session, endpointing) is the one raw PCM takes. The decoder reads at most one message ahead of
what the session has taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from model.audio import AudioError
from model.container_stream import HEAD_BYTES, UNSTREAMABLE, ContainerStream, stream_demuxer
from service.asr_pb import asr_pb2
from service.domain import RequestError

_END = object()


async def decode_container(messages: AsyncIterator, next_message: Callable[[AsyncIterator], Awaitable]
                           ) -> tuple[int | None, AsyncIterator]:
    """(the stream's sample rate, its audio as mono float32 messages) when its audio starts with a FLAC, Ogg or
    WebM file; (None, the messages as they were) otherwise.

    Raises:
        RequestError: the container cannot be decoded, or the stream ends before any audio in it.
    """
    first = await next_message(messages)
    if first is None or first.WhichOneof("streaming_request") != "audio_content" \
            or stream_demuxer(first.audio_content[:HEAD_BYTES]) is None:
        return None, _chain([first] if first is not None else [], messages)
    if stream_demuxer(first.audio_content[:HEAD_BYTES]) == UNSTREAMABLE:
        raise RequestError("MP4/M4A/MOV audio cannot be streamed (its index comes after its samples); send the file "
                           "to Recognize")
    blocks = _decoded(first.audio_content, messages, next_message)
    try:
        pcm, rate = await anext(blocks)
    except StopAsyncIteration:
        raise RequestError("the stream ended before any audio in its file could be decoded") from None
    return rate, _as_messages(pcm, rate, blocks)


async def _decoded(head: bytes, messages: AsyncIterator, next_message) -> AsyncIterator[tuple[bytes, int]]:
    """(mono float32 bytes, rate) per decoded block, reading the client's next message only while none is ready."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue = asyncio.Queue()
    demuxer = stream_demuxer(head[:HEAD_BYTES])
    decoder = ContainerStream(demuxer, f"the streamed {demuxer} file",
                              on_block=lambda block, rate: loop.call_soon_threadsafe(ready.put_nowait, (block, rate)),
                              on_end=lambda error: loop.call_soon_threadsafe(ready.put_nowait, error or _END))
    decoder.feed(head)
    receive: asyncio.Future | None = asyncio.ensure_future(next_message(messages))
    block = asyncio.ensure_future(ready.get())
    try:
        while True:
            waiting = {block} | ({receive} if receive is not None else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if block in done:
                item = block.result()
                if item is _END:
                    return
                if isinstance(item, AudioError):
                    raise RequestError(str(item))
                samples, rate = item
                yield np.ascontiguousarray(samples, dtype="<f4").tobytes(), rate
                block = asyncio.ensure_future(ready.get())
            if receive is not None and receive in done:
                message = receive.result()
                if message is None:
                    decoder.end()
                    receive = None
                elif message.WhichOneof("streaming_request") != "audio_content":
                    raise RequestError("streaming_config may only be sent once, as the first message")
                else:
                    decoder.feed(message.audio_content)
                    receive = asyncio.ensure_future(next_message(messages))
    finally:
        for task in (receive, block):
            if task is not None:
                task.cancel()
        decoder.cancel()


async def _as_messages(first: bytes, rate: int, blocks: AsyncIterator[tuple[bytes, int]]) -> AsyncIterator:
    yield asr_pb2.StreamingRecognizeRequest(audio_content=first)
    async for pcm, _ in blocks:
        yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm)


async def _chain(first: list, rest: AsyncIterator) -> AsyncIterator:
    for message in first:
        yield message
    async for message in rest:
        yield message
