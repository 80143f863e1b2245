"""A real ``run_server`` process drains on SIGTERM: the in-flight request completes, exit code 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
# Every batch announces itself in a marker file and then sleeps 3 s, so the test can send
# SIGTERM while the request is certainly in flight.
LAUNCH = """
import os, pathlib, sys, time
import service.worker as w
original = w.InferenceWorker.__call__
def slow(self, clips):
    pathlib.Path(os.environ["BATCH_MARKER"]).touch()
    time.sleep(3.0)
    return original(self, clips)
w.InferenceWorker.__call__ = slow
from service.server import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~13 s: a fresh interpreter imports torch and loads the model
def test_sigterm_drains_in_flight_requests(registry_root, an4_paths, tmp_path) -> None:
    port = free_port()
    marker = tmp_path / "batch-started"
    log_file = open(tmp_path / "server.log", "wb")  # a file, not a pipe: a full pipe would block the server
    env = {**os.environ, "ASR_DRAIN_TIMEOUT_S": "60", "PYTHONPATH": str(REPO), "BATCH_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "--host", "127.0.0.1", "--port", str(port),
                             "--grpc-port", "0", "--registry", str(registry_root), "--model", "tiny@1",
                             "--device", "cpu"], env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a fresh interpreter on a busy CI box
        while True:  # model load + warm-up (warm-up bypasses __call__, so it does not sleep)
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        result: dict = {}

        def send() -> None:
            files = {"file": ("a.flac", an4_paths[0].read_bytes())}
            result["response"] = httpx.post(f"{base}/transcribe", files=files, timeout=60)

        client = threading.Thread(target=send)
        client.start()
        for _ in range(600):
            if marker.exists():
                break
            time.sleep(0.05)
        assert marker.exists(), "the request never reached the worker"
        proc.send_signal(signal.SIGTERM)
        for _ in range(40):  # draining: still serving, but no longer ready
            if httpx.get(f"{base}/health/ready", timeout=5).status_code == 503:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("/health/ready never turned 503 during the drain")
        client.join(60)
        assert result["response"].status_code == 200, result["response"].text
        assert result["response"].json()["model"] == {"name": "tiny", "version": 1}
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
        output = (tmp_path / "server.log").read_text(errors="replace")
    assert "draining" in output
    assert "drain timeout" not in output  # the request finished in time: no false alarm at exit
