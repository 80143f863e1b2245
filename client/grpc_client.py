"""gRPC client of asr.v1.SpeechRecognition: ListModels, Recognize, and real-time-paced streaming."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import numpy as np

from client.asr_pb import asr_pb2, asr_pb2_grpc
from client.closing import Closing

# Recognize sends a whole file in one message; raise gRPC's 4 MiB default like Riva's client.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# 100 ms per streamed message: the Riva client default (1,600 frames at 16 kHz).
STREAM_CHUNK_S = 0.1

# Transcription is idempotent, so a call the server never ran is safe to send again. gRPC retries only calls
# answered before any response header (nothing was processed), and only ``RETRYABLE_CODES``:
# - UNAVAILABLE: the replica was unreachable or refused the call (the standard retryable code);
# - CANCELLED: what a stopping gRPC server (grpcio, grpc/grpc issue 41785) answers the calls it had accepted but
#   not yet started; a replica scaled down behind a load balancer answers a few of those. A cancel of our own
#   is local and never retried.
RETRYABLE_CODES = ("UNAVAILABLE", "CANCELLED")
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{}],  # every method: each of ours is idempotent (and so is grpc.health.v1)
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": list(RETRYABLE_CODES)}}]})
CHANNEL_OPTIONS = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.service_config", RETRY_SERVICE_CONFIG),
                   # A retry resends what the call sent; keep a whole Recognize message for that (the default is
                   # 256 KiB, past which a call is not retried).
                   ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES))


class GrpcClient(Closing):
    """Talks to one server over gRPC (synchronous; the streaming sender runs in gRPC's thread).

    Args:
        target: "HOST:PORT".
        timeout_s: deadline of each unary call; streams get ``timeout_s`` plus the audio length.
    """

    def __init__(self, target: str, *, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        self._stub = asr_pb2_grpc.SpeechRecognitionStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def list_models(self, name: str = "") -> asr_pb2.ListModelsResponse:
        return self._stub.ListModels(asr_pb2.ListModelsRequest(name=name), timeout=self.timeout_s)

    def sample_rate(self, model: str | None = None) -> int:
        """The rate the server's model for ``model`` (None: the default) expects, from ListModels.

        Raises:
            LookupError: the server lists no such model.
        """
        listing = self.list_models()
        spec = model or listing.default_model
        name, _, version = spec.partition("@")
        candidates = [m for m in listing.models if m.name == name and (not version or str(m.version) == version)]
        if not model:
            candidates = [m for m in candidates if m.is_default] or candidates
        if not candidates:
            raise LookupError(f"the server lists no model {spec!r}")
        return max(candidates, key=lambda m: m.version).sample_rate_hertz

    def recognize(self, audio: bytes, *, model: str | None = None, word_time_offsets: bool = True,
                  encoding: int = asr_pb2.ENCODING_UNSPECIFIED, sample_rate_hertz: int = 0
                  ) -> asr_pb2.RecognizeResponse:
        """Transcribes a whole file's bytes (any container the server decodes, or raw LINEAR_PCM)."""
        config = asr_pb2.RecognitionConfig(encoding=encoding, sample_rate_hertz=sample_rate_hertz, model=model or "",
                                           enable_word_time_offsets=word_time_offsets)
        return self._stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio=audio), timeout=self.timeout_s)

    def stream(self, samples: np.ndarray, sample_rate: int, *, model: str | None = None, interim_results: bool = True,
               word_time_offsets: bool = True, realtime: bool = True, chunk_s: float = STREAM_CHUNK_S
               ) -> Iterator[asr_pb2.StreamingRecognizeResponse]:
        """Streams mono float32 ``samples`` as 16-bit PCM and yields responses as they arrive.

        Args:
            samples: (L,) float32 in [-1, 1].
            sample_rate: their rate in Hz (send the model's rate to avoid server-side resampling).
            realtime: pace the messages at speech speed (message k is sent at k * chunk_s).
            chunk_s: audio per message in seconds.
        """
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
        step = max(2, int(chunk_s * sample_rate) * 2)
        config = asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=sample_rate,
                                             model=model or "", enable_word_time_offsets=word_time_offsets),
            interim_results=interim_results)

        def requests() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
            yield asr_pb2.StreamingRecognizeRequest(streaming_config=config)
            started = time.monotonic()
            for k, offset in enumerate(range(0, len(pcm), step)):
                if realtime:
                    time.sleep(max(0.0, started + k * chunk_s - time.monotonic()))
                yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset: offset + step])

        timeout = self.timeout_s + len(samples) / sample_rate
        yield from self._stub.StreamingRecognize(requests(), timeout=timeout)
