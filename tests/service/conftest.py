"""Shared fixtures for the service tests: a registry with a tiny random model (two versions),
real AN4 test clips, and helpers that run an app in-process over httpx."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from model import (BlockConfig, MelFeaturizerConfig, QuartzNetConfig, RecognizerConfig, Registry, SpeechRecognizer,
                   Vocabulary, decode_audio, publish_model)
from service.app import create_app
from service.config import ServiceConfig

SPEECH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "speech"
AN4_TEST = SPEECH_DIR / "an4_test.json"


def tiny_model(seed: int) -> SpeechRecognizer:
    torch.manual_seed(seed)
    cfg = RecognizerConfig(MelFeaturizerConfig(), QuartzNetConfig(
        (BlockConfig(32, 1, 11, stride=2), BlockConfig(32, 2, 7, residual=True), BlockConfig(64, 1, 1, separable=False)),
        num_labels=28), Vocabulary())
    return SpeechRecognizer(cfg).eval()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def registry_root(tmp_path_factory) -> Path:
    """A registry with "tiny"@1 and "tiny"@2 (different random weights)."""
    root = tmp_path_factory.mktemp("registry")
    registry = Registry(root)
    publish_model(registry, "tiny", tiny_model(0), source="trained")
    publish_model(registry, "tiny", tiny_model(1), source="trained")
    return root


@pytest.fixture()
def three_versions(tmp_path) -> Registry:
    """A registry of this test's own with "tiny"@1, @2 and @3 (different random weights), nothing recorded active."""
    registry = Registry(tmp_path / "registry")
    for seed in (0, 1, 2):
        publish_model(registry, "tiny", tiny_model(seed), source="trained")
    return registry


@pytest.fixture(scope="session")
def an4_entries() -> list[dict]:
    with open(AN4_TEST) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def an4_paths(an4_entries) -> list[Path]:
    return [SPEECH_DIR / e["audio_filepath"] for e in an4_entries]


@pytest.fixture(scope="session")
def an4_audio(an4_paths) -> list[np.ndarray]:
    """The first 8 AN4 test clips, 16 kHz float32."""
    return [decode_audio(p, 16_000).samples for p in an4_paths[:8]]


def make_config(registry_root: Path, **overrides) -> ServiceConfig:
    # fp32: these tests compare the service with offline fp32 decodes of random-weight models, whose
    # near-tied labels bf16 would flip; test_rest_transcribe covers the default precision.
    settings = dict(registry=registry_root, default_model="tiny@1", device="cpu", grpc_port=0,
                    max_queue_delay_ms=2.0, drain_timeout_s=5.0, precision="fp32")
    settings.update(overrides)
    return ServiceConfig(**settings)


@asynccontextmanager
async def running_app(config: ServiceConfig):
    """Runs ``create_app(config)`` with its lifespan and yields (httpx client, engine) once ready."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        engine = app.state.engine
        for _ in range(1500):  # 30 s: a cold model load on a busy CI machine
            if engine.ready or engine.startup_error:
                break
            await asyncio.sleep(0.02)
        if not engine.ready:
            raise AssertionError(f"the app never became ready: {engine.startup_error or 'still loading after 30 s'}")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://asr.test", timeout=60) as client:
            yield client, engine


def slow_worker(monkeypatch, seconds: float) -> None:
    """Makes every inference batch take ``seconds`` longer (a slow or overloaded worker), for queue tests."""
    import time

    from service.worker import InferenceWorker

    original = InferenceWorker.__call__

    def slowed(self, clips):
        time.sleep(seconds)
        return original(self, clips)

    monkeypatch.setattr(InferenceWorker, "__call__", slowed)


@pytest.fixture()
def self_signed_certificate(tmp_path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 and localhost, made by openssl; the test is skipped where it cannot."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                           "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr[-300:]}")
    return cert, key
