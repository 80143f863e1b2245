"""Clients that give up at random points of hour-long requests, on every transport, while short clients keep
coming: the default model's server never crashes, the short clients all get 200, and nothing stays held.

The crash this guards against: a cancelled request closed its upload while a decode thread still read it
through libsndfile (a segfault, and every request in flight lost). A real server process with the default
model (``registry/an4-quartznet``, seeded by scripts/setup.sh) and its default settings; 203 cancellations,
each after a random delay (a seeded generator), four at a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from service.asr_pb import asr_pb2, asr_pb2_grpc
from tests.service.test_grpc_support import AN4_TEST_MANIFEST, an4_test_set, free_port

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO / "registry" / "an4-quartznet"
CANCELS_PER_TRANSPORT = 29
SHORT_CLIENTS = 8

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_DIR.is_dir() or not AN4_TEST_MANIFEST.exists(),
                                reason="needs the default model (scripts/setup.sh seeds it) and the AN4 data")


class _Server:
    def __init__(self, log: Path) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.server", "--host", "127.0.0.1", "--port", str(self.port),
             "--grpc-port", str(self.grpc_port), "--registry", str(REPO / "registry")],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # the default model's load and warm-up on a busy machine
        while True:
            try:
                if httpx.get(f"{self.base}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")


def _hour_of_silence(path: Path) -> bytes:
    """59 minutes of 48 kHz stereo in a 0.6 MB FLAC: cheap to send, an hour of work to decode."""
    with sf.SoundFile(path, "w", 48_000, 2, format="FLAC") as out:
        block = np.zeros((48_000 * 60, 2), dtype=np.float32)
        for _ in range(59):
            out.write(block)
    return path.read_bytes()


PCM_SECOND = (0.05 * np.sin(np.arange(16_000) / 5.0) * 32767).astype("<i2").tobytes()


async def _rest(server, flac: bytes, route: str) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        await client.post(server.base + route, files={"file": ("hour.flac", flac)})


async def _grpc_unary(server, flac: bytes) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        await asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(asr_pb2.RecognizeRequest(audio=flac))


async def _grpc_stream(server, flac: bytes) -> None:
    async def messages():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000),
            interim_results=True))
        for _ in range(3600):  # as fast as the server takes it
            yield asr_pb2.StreamingRecognizeRequest(audio_content=PCM_SECOND)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        async for _ in asr_pb2_grpc.SpeechRecognitionStub(channel).StreamingRecognize(messages()):
            pass


async def _riva_unary(server, flac: bytes) -> None:
    from riva.client.proto import riva_asr_pb2, riva_asr_pb2_grpc, riva_audio_pb2

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        await riva_asr_pb2_grpc.RivaSpeechRecognitionStub(channel).Recognize(riva_asr_pb2.RecognizeRequest(
            config=riva_asr_pb2.RecognitionConfig(encoding=riva_audio_pb2.FLAC, language_code="en-US"), audio=flac))


async def _riva_stream(server, flac: bytes) -> None:
    from riva.client.proto import riva_asr_pb2, riva_asr_pb2_grpc, riva_audio_pb2

    async def messages():
        yield riva_asr_pb2.StreamingRecognizeRequest(streaming_config=riva_asr_pb2.StreamingRecognitionConfig(
            config=riva_asr_pb2.RecognitionConfig(encoding=riva_audio_pb2.LINEAR_PCM, sample_rate_hertz=16_000,
                                                  language_code="en-US"), interim_results=True))
        for _ in range(3600):
            yield riva_asr_pb2.StreamingRecognizeRequest(audio_content=PCM_SECOND)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        async for _ in riva_asr_pb2_grpc.RivaSpeechRecognitionStub(channel).StreamingRecognize(messages()):
            pass


async def _websocket(server, flac: bytes) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription") as ws:
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {"sample_rate": 16_000}}))
        audio = base64.b64encode(PCM_SECOND).decode()
        for _ in range(3600):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))


TRANSPORTS = {"rest": lambda s, f: _rest(s, f, "/transcribe"),
              "openai": lambda s, f: _rest(s, f, "/v1/audio/transcriptions"),
              "grpc": _grpc_unary, "grpc_stream": _grpc_stream, "riva": _riva_unary, "riva_stream": _riva_stream,
              "websocket": _websocket}


async def _short_clients(server, stop: asyncio.Event) -> list[int]:
    clips = [path.read_bytes() for path, _ in an4_test_set(limit=16)]
    statuses: list[int] = []

    async def client(index: int) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            i = index
            while not stop.is_set():
                r = await http.post(server.base + "/transcribe", files={"file": ("clip.wav", clips[i % len(clips)])})
                statuses.append(r.status_code)
                i += SHORT_CLIENTS

    await asyncio.gather(*(client(i) for i in range(SHORT_CLIENTS)))
    return statuses


async def _cancel_all(server, flac: bytes) -> dict[str, int]:
    rng = random.Random(32)
    jobs = [(name, rng.uniform(0.05, 2.0)) for name in TRANSPORTS for _ in range(CANCELS_PER_TRANSPORT)]
    rng.shuffle(jobs)
    gate = asyncio.Semaphore(4)
    outcomes: dict[str, int] = {}

    async def one(name: str, delay_s: float) -> None:
        async with gate:
            try:
                await asyncio.wait_for(TRANSPORTS[name](server, flac), delay_s)
                outcome = "finished"  # a refusal (429) or the rare request that beat its delay
            except asyncio.TimeoutError:
                outcome = "cancelled"
            except (grpc.aio.AioRpcError, websockets.ConnectionClosed, httpx.HTTPError) as exc:
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    await asyncio.gather(*(one(name, delay) for name, delay in jobs))
    return outcomes


def test_random_cancellations_of_hour_long_requests_on_every_transport_never_crash(tmp_path) -> None:
    flac = _hour_of_silence(tmp_path / "hour.flac")
    server = _Server(tmp_path / "server.log")
    try:
        async def main():
            stop = asyncio.Event()
            short = asyncio.ensure_future(_short_clients(server, stop))
            try:
                outcomes = await _cancel_all(server, flac)
            finally:
                stop.set()
            return outcomes, await short

        outcomes, statuses = asyncio.run(main())
        print(f"cancellation outcomes: {outcomes}; {len(statuses)} short requests")
        assert server.proc.poll() is None, f"the server died:\n{server.output()[-3000:]}"
        assert outcomes.get("cancelled", 0) >= 150, outcomes
        assert statuses and set(statuses) == {200}, statuses
        deadline = time.monotonic() + 120  # cancelled work winds down within a window or two
        while "asr_buffered_audio_seconds 0.0" not in (metrics := httpx.get(server.base + "/metrics").text):
            held = [line for line in metrics.splitlines() if line.startswith(("asr_buffered", "asr_active_streams",
                                                                             "asr_queue_depth"))]
            assert time.monotonic() < deadline, f"audio is still held after every request ended: {held}"
            time.sleep(0.2)
        metrics = httpx.get(server.base + "/metrics").text
        assert 'status="499"' in metrics and 'status="CANCELLED"' in metrics
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(120) == 0
        assert "Traceback" not in server.output(), server.output()[-3000:]
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(30)
        server.log.close()
