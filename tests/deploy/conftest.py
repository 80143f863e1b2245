"""Fixtures of the deployment tests: a REAL `asr serve` process on a free port, the tools
scripts/setup.sh installs for these tests (Debian's chromium, prometheus, docker-compose), and
an AN4 test clip.

The server serves the starter model when the checkout has it (./registry after
scripts/setup.sh, or starter/registry), else a tiny random model published to a temporary
registry, so every test here works with any model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
STARTER_MODEL = "an4-quartznet"
# An AN4 test-set clip ("rubout g m e f three nine").
AN4_CLIP = "an4/test/fcaw/an406-fcaw-b.flac"
# Start-up takes seconds on an idle machine; a loaded 2-core one (training next to the tests) needs far more.
START_TIMEOUT_S = float(os.environ.get("ASR_TEST_SERVER_START_S", "420"))


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path, *, timeout_s: float, what: str,
                     poll_s: float = 0.5) -> None:
    """Polls ``url`` until it answers 200; fails the test (with the log's tail) if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(poll_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(path_or_name: str, what: str) -> str:
    """The tool's path; fails (skips only with ASR_SKIP_TEST_TOOLS=1) when scripts/setup.sh did not install it."""
    found = shutil.which(path_or_name)
    if found:
        return found
    message = f"{what} ({path_or_name}) is not installed; scripts/setup.sh installs it (step 'test tools')"
    if os.environ.get("ASR_SKIP_TEST_TOOLS") == "1":
        pytest.skip(message + "; skipped because ASR_SKIP_TEST_TOOLS=1")
    pytest.fail(message)


def _has_model(root: Path, name: str) -> bool:
    return any((p / "metadata.json").is_file() for p in (root / name).glob("*")) if (root / name).is_dir() else False


@dataclass(frozen=True)
class ServedModel:
    registry: Path
    name: str
    real: bool  # the trained starter model (transcripts must be non-empty), not a random one


@pytest.fixture(scope="session")
def served_model(tmp_path_factory) -> ServedModel:
    for root in (REPO / "registry", REPO / "starter" / "registry"):
        if _has_model(root, STARTER_MODEL):
            return ServedModel(root, STARTER_MODEL, True)
    import torch

    from model import (BlockConfig, MelFeaturizerConfig, QuartzNetConfig, RecognizerConfig, Registry,
                       SpeechRecognizer, Vocabulary, publish_model)

    torch.manual_seed(0)
    cfg = RecognizerConfig(MelFeaturizerConfig(), QuartzNetConfig(
        (BlockConfig(32, 1, 11, stride=2), BlockConfig(32, 2, 7, residual=True),
         BlockConfig(64, 1, 1, separable=False)), num_labels=28), Vocabulary())
    root = tmp_path_factory.mktemp("deploy-registry")
    publish_model(Registry(root), "tiny", SpeechRecognizer(cfg).eval(), source="trained")
    return ServedModel(root, "tiny", False)


def _asr_command() -> list[str]:
    script = Path(sys.executable).with_name("asr")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]


@dataclass
class Server:
    url: str
    port: int
    model: ServedModel
    log: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


@pytest.fixture(scope="session")
def asr_server(served_model, tmp_path_factory) -> Server:
    """`asr serve` in a subprocess (REST only), ready to answer; stopped with SIGTERM at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("asr-serve") / "serve.log"
    env = dict(os.environ)
    env.update({"ASR_TORCH_THREADS": "1", "ASR_NUM_CPU_WORKERS": "1", "ASR_DRAIN_TIMEOUT_S": "5",
                "PYTHONUNBUFFERED": "1",
                # the deployment is under test, not the editable install: import from this checkout
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))})
    env.pop("ASR_ADMIN_TOKEN", None)
    cmd = _asr_command() + ["serve", "--registry", str(served_model.registry), "--model", served_model.name,
                            "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0", "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = Server(url, port, served_model, log)
    try:
        wait_until_ready(proc, url + "/health/ready", log, timeout_s=START_TIMEOUT_S, what=f"`{' '.join(cmd)}`")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def an4_clip(speech_root) -> Path:
    path = speech_root / AN4_CLIP
    if not path.is_file():
        pytest.fail(f"{path} is missing from the shared speech data")
    return path


@pytest.fixture(scope="session")
def model_id(asr_server) -> str:
    """NAME@VERSION of the served model, as /v1/models lists it."""
    with asr_server.client() as c:
        data = c.get("/v1/models").json()["data"]
    ids = [m["id"] for m in data if m["name"] == asr_server.model.name and m["id"] != m["name"]]
    assert ids, f"/v1/models does not list {asr_server.model.name}: {json.dumps(data)}"
    return ids[0]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
