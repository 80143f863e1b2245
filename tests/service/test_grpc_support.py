"""Shared helpers (no tests) for test_grpc_* and test_stream_*: an in-process Engine + gRPC server on a free
port, AN4 test clips, and a simulated real-time stream driver (the tiny model is tests/tiny_model.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from service.config import ServiceConfig
from service.streaming import StreamingOptions, StreamingSession

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEECH_ROOT = (REPO_ROOT / "../shared/speech").resolve()
AN4_TEST_MANIFEST = SPEECH_ROOT / "an4_test.json"
# The project's trained AN4 model, once published (skipped with a reason when absent);
# ASR_TEST_AN4_REGISTRY points the tests at another registry holding an an4-quartznet.
AN4_REGISTRY = Path(os.environ.get("ASR_TEST_AN4_REGISTRY") or REPO_ROOT / "registry")
AN4_MODEL = "an4-quartznet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_config(registry_root: Path, model: str = "tiny", **overrides) -> ServiceConfig:
    return ServiceConfig(registry=registry_root, default_model=model, grpc_port=free_port(), http_host="127.0.0.1",
                         num_cpu_workers=1, **overrides)


@contextlib.asynccontextmanager
async def serving(config: ServiceConfig):
    """Starts an Engine and the gRPC server; yields (engine, "127.0.0.1:PORT")."""
    from service.engine import Engine
    from service.grpc_server import start_grpc, stop_grpc

    engine = await Engine.start(config)
    server = await start_grpc(engine, config)
    try:
        yield engine, f"127.0.0.1:{config.grpc_port}"
    finally:
        await stop_grpc(server, 0)
        await engine.drain_and_stop(1.0)


@contextlib.contextmanager
def rest_serving(registry_root: Path, **overrides):
    """The REST API of a real server (uvicorn on a thread, a free port) once it is ready; yields its URL."""
    import threading

    import httpx
    import uvicorn

    from service.app import create_app

    config = service_config(registry_root, http_port=free_port(), **overrides)
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=config.http_port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.http_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the app loads its model in the background
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def an4_test_set(limit: int | None = None) -> list[tuple[Path, str]]:
    """(audio path, reference text) of the AN4 test manifest, in manifest order."""
    rows = [json.loads(line) for line in AN4_TEST_MANIFEST.read_text().splitlines() if line.strip()]
    items = [(SPEECH_ROOT / r["audio_filepath"], r["text"]) for r in rows]
    return items[:limit] if limit else items


async def stream_simulated(engine, model: str, rate: int, audio: np.ndarray, options: StreamingOptions,
                           message_s: float = 0.1) -> list:
    """Feeds ``audio`` in ``message_s`` pieces, stepping whenever the session is ready, as if each
    piece arrived in real time and the model were instant; returns every StreamResult."""
    session = StreamingSession(engine, model, rate, rate, options)
    step = int(message_s * rate)
    results = []
    for offset in range(0, len(audio), step):
        session.add_audio(audio[offset: offset + step])
        while session.ready():
            results += await session.step()
    results += await session.finish()
    return results


def run(coro):
    return asyncio.run(coro)
