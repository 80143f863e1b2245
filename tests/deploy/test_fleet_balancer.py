"""Three `asr serve` replicas over one registry behind Debian's nginx (deploy/nginx/asr.conf.template), under load from
REST, OpenAI, gRPC unary, gRPC streaming and WebSocket clients: a fleet-wide activation, a corrupt version and a
killed replica, with no failed request but those in flight on the killed one.

The gRPC clients use the client package's channel options, as a production client should: a stopping grpcio server
answers CANCELLED to the calls it had accepted but not started, and those are sent again (client/grpc_client.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import websockets

from client.grpc_client import CHANNEL_OPTIONS
from model.audio import decode_audio
from service.asr_pb import asr_pb2, asr_pb2_grpc
from tests.cli.helpers import asr_in_process
from tests.service.test_grpc_support import AN4_TEST_MANIFEST, an4_test_set
from tests.tiny_model import publish_tiny_model

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "nginx"))
import local as nginx_local  # noqa: E402 - deploy/nginx/local.py, a script beside the template

POLL_S = 0.5
CLIENTS = 16

pytestmark = pytest.mark.skipif(not Path(nginx_local.NGINX).exists() or not AN4_TEST_MANIFEST.exists(),
                                reason="needs Debian's nginx (scripts/setup.sh installs it) and the AN4 data")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, what: str, timeout_s: float = 120) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


class Replica:
    def __init__(self, index: int, registry: Path, tmp: Path) -> None:
        self.id = f"replica-{index}"
        self.port, self.grpc_port = _free_port(), _free_port()
        self.registry, self.tmp = registry, tmp
        self.start()

    def start(self) -> None:
        self.log = open(self.tmp / f"{self.id}.log", "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO), "ASR_REGISTRY_POLL_S": str(POLL_S),
               "ASR_REPLICA_ID": self.id, "ASR_DRAIN_TIMEOUT_S": "10"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.server", "--host", "127.0.0.1", "--port", str(self.port),
             "--grpc-port", str(self.grpc_port), "--registry", str(self.registry), "--model", "tiny",
             "--device", "cpu", "--precision", "fp32"], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def version(self) -> int | None:
        try:
            body = httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body.get("model", {}).get("version")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Balancer:
    """Debian's nginx with the repository's template (deploy/nginx/local.py), for the replicas on loopback."""

    def __init__(self, replicas: list[Replica], tmp: Path) -> None:
        self.http_port, self.grpc_port = _free_port(), _free_port()
        self.proc = nginx_local.start(tmp / "nginx", self.http_port, self.grpc_port,
                                      [("127.0.0.1", r.port, r.grpc_port) for r in replicas])
        self.base = f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(30)


class Load:
    """16 clients through the balancer, round-robin over five transports; every outcome and answering version."""

    def __init__(self, balancer: Balancer, clips: list[np.ndarray]) -> None:
        self.balancer = balancer
        self.clips = clips
        self.outcomes: list[tuple[float, str, str, int | None]] = []  # (time, transport, "ok" or error, version)
        self.stop = asyncio.Event()

    async def run(self) -> None:
        transports = (self._rest, self._openai, self._grpc, self._grpc_stream, self._websocket)
        await asyncio.gather(*(self._client(i, transports[i % len(transports)]) for i in range(CLIENTS)))

    async def _client(self, index: int, call) -> None:
        i = index
        while not self.stop.is_set():
            clip = self.clips[i % len(self.clips)]
            try:
                version = await asyncio.wait_for(call(clip), 60)
                self.outcomes.append((time.monotonic(), call.__name__, "ok", version))
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome to count
                self.outcomes.append((time.monotonic(), call.__name__, f"{type(exc).__name__}: {exc}"[:300], None))
            i += CLIENTS

    async def _rest(self, clip) -> int:
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(self.balancer.base + "/transcribe", files={"file": ("c.wav", _wav(clip))})
        r.raise_for_status()
        return int(r.headers["x-asr-model"].split("@")[1])

    async def _openai(self, clip) -> int:
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(self.balancer.base + "/v1/audio/transcriptions", files={"file": ("c.wav", _wav(clip))},
                                  data={"model": "whisper-1"})
        r.raise_for_status()
        return int(r.json()["model"].split("@")[1])

    async def _grpc(self, clip) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.balancer.grpc_port}", options=CHANNEL_OPTIONS) as channel:
            response = await asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(asr_pb2.RecognizeRequest(
                config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000),
                audio=_pcm(clip)))
        return response.model.version

    async def _grpc_stream(self, clip) -> int:
        pcm = _pcm(clip)

        async def messages():
            yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR_PCM, sample_rate_hertz=16_000)))
            for offset in range(0, len(pcm), 6400):
                yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset:offset + 6400])

        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.balancer.grpc_port}", options=CHANNEL_OPTIONS) as channel:
            versions = {r.model.version async for r in asr_pb2_grpc.SpeechRecognitionStub(channel).StreamingRecognize(
                messages())}
        [version] = versions  # a stream stays on one version for its whole life
        return version

    async def _websocket(self, clip) -> int:
        url = f"ws://127.0.0.1:{self.balancer.http_port}/v1/realtime?intent=transcription"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {"sample_rate": 16_000}}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(_pcm(clip)).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "error":
                    raise RuntimeError(event["error"])
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    return event["model"]["version"]


def _pcm(clip: np.ndarray) -> bytes:
    return (clip * 32767).clip(-32768, 32767).astype("<i2").tobytes()


def _wav(clip: np.ndarray) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, clip, 16_000, format="WAV")
    return buf.getvalue()


@contextlib.contextmanager
def fleet(registry: Path, tmp: Path):
    """Three replicas over ``registry`` serving tiny@1, Debian's nginx in front, and the clips the clients send."""
    replicas = [Replica(i, registry, tmp) for i in range(3)]
    balancer = None
    try:
        _wait_for(lambda: all(r.version() == 1 for r in replicas), "three replicas serving tiny@1")
        balancer = Balancer(replicas, tmp)
        yield replicas, balancer, [decode_audio(path, 16_000).samples[:32_000] for path, _ in an4_test_set(limit=8)]
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop()


def _failures(load: Load, since: float = 0.0, until: float = float("inf")) -> list:
    return [o for o in load.outcomes if o[2] != "ok" and since <= o[0] <= until]


def test_a_fleet_behind_the_balancer_rolls_out_refuses_a_corrupt_version_and_survives_a_killed_replica(tmp_path):
    registry = tmp_path / "registry"
    publish_tiny_model(registry, "tiny", seed=0)
    publish_tiny_model(registry, "tiny", seed=1)
    asr_in_process("--registry", registry, "models", "activate", "tiny@1")
    with fleet(registry, tmp_path) as (replicas, balancer, clips):
        timeline: dict[str, float] = {}

        async def scenario() -> Load:
            load = Load(balancer, clips)
            running = asyncio.ensure_future(load.run())
            await asyncio.sleep(3)

            # 1. Roll tiny@2 out to the fleet mid-load.
            timeline["activate"] = time.monotonic()
            assert asr_in_process("--registry", registry, "models", "activate", "tiny@2").returncode == 0
            for replica in replicas:
                await asyncio.to_thread(_wait_for, lambda r=replica: r.version() == 2, f"{replica.id} on tiny@2")
                timeline[replica.id] = time.monotonic() - timeline["activate"]
            await asyncio.sleep(2)

            # 2. A corrupt version, activated fleet-wide: refused everywhere, tiny@2 keeps serving.
            publish_tiny_model(registry, "tiny", seed=2)
            weights = registry / "tiny" / "3" / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:-8])
            asr_in_process("--registry", registry, "models", "activate", "tiny@3")

            def refused_everywhere() -> bool:
                status = json.loads(asr_in_process("--registry", registry, "fleet", "status", "--json").stdout)
                return sum(any(r["model"] == "tiny@3" for r in beat.get("refused", [])) for beat in status) == 3

            await asyncio.to_thread(_wait_for, refused_everywhere, "every replica to refuse tiny@3")
            await asyncio.sleep(2)

            # 3. SIGKILL one replica mid-load; restart it; it comes back on the desired... last good version.
            timeline["kill"] = time.monotonic()
            replicas[0].proc.kill()
            await asyncio.sleep(3)
            timeline["restart"] = time.monotonic()
            replicas[0].log.close()
            replicas[0].start()
            await asyncio.to_thread(_wait_for, lambda: replicas[0].version() == 2, "the restarted replica on tiny@2")
            timeline["restarted"] = time.monotonic()
            await asyncio.sleep(3)
            load.stop.set()
            await running
            return load

        load = asyncio.run(scenario())
        by_transport = {}
        for _, transport, outcome, version in load.outcomes:
            by_transport.setdefault(transport, set()).add(version)
        print(f"activation: replicas on tiny@2 after {[round(timeline[r.id], 2) for r in replicas]} s; "
              f"{len(load.outcomes)} requests; failures {len(_failures(load))}")
        assert len(load.outcomes) >= 200 and set(by_transport) == {"_rest", "_openai", "_grpc", "_grpc_stream",
                                                                      "_websocket"}
        assert {o[3] for o in load.outcomes if o[2] == "ok"} <= {1, 2}  # only the old and the new version answered
        assert not _failures(load, until=timeline["kill"]), _failures(load)
        # Every replica switched within a poll plus a load of the tiny model (a fresh process's load: seconds).
        assert max(timeline[r.id] for r in replicas) <= POLL_S + 10
        # Only requests in flight on the killed replica may fail: at most one per client.
        killed = _failures(load, since=timeline["kill"])
        print("failed after the kill:", [(o[1], o[2][:120]) for o in killed])
        assert len(killed) <= CLIENTS, killed
        assert not _failures(load, since=timeline["restarted"]), _failures(load, since=timeline["restarted"])
        assert all(r.proc.poll() is None for r in replicas)


def test_scaling_down_drains_a_replica_behind_the_balancer_without_failing_a_request(tmp_path):
    """`docker compose up --scale asr=2` (or a Deployment losing a pod) sends SIGTERM: the replica finishes what it
    has, the balancer sends everything new to the others, and no client sees an error."""
    registry = tmp_path / "registry"
    publish_tiny_model(registry, "tiny", seed=0)
    with fleet(registry, tmp_path) as (replicas, balancer, clips):
        timeline: dict[str, float] = {}

        async def scenario() -> Load:
            load = Load(balancer, clips)
            running = asyncio.ensure_future(load.run())
            await asyncio.sleep(3)
            timeline["sigterm"] = time.monotonic()
            replicas[2].proc.send_signal(signal.SIGTERM)
            timeline["exit_code"] = await asyncio.to_thread(replicas[2].proc.wait, 30)
            timeline["exited"] = time.monotonic()
            await asyncio.sleep(3)
            load.stop.set()
            await running
            return load

        load = asyncio.run(scenario())
        during = [o for o in load.outcomes if timeline["sigterm"] <= o[0] <= timeline["exited"]]
        print(f"drained in {timeline['exited'] - timeline['sigterm']:.2f} s; {len(during)} requests answered "
              f"meanwhile; {len(load.outcomes)} in all; failures {[(o[1], o[2][:160]) for o in _failures(load)]}")
        assert timeline["exit_code"] == 0
        assert len(load.outcomes) >= 100 and not _failures(load), _failures(load)
        assert all(r.proc.poll() is None for r in replicas[:2])
