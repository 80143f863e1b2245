"""Riva's own ASR sample scripts (../shared/clients/riva, unmodified) against `asr serve`: each prints the transcript
that REST gives for the same file, and boosted words change a stream's final as they change Recognize's; their
realtime WebSocket client (realtime_asr_client.py) does the same over our HTTP port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import AN4_CLIP, REPO, START_TIMEOUT_S, _asr_command, free_port, wait_until_ready

RIVA_APPS = REPO.parent / "shared" / "clients" / "riva"
SPEECH = REPO.parent / "shared" / "speech"

pytestmark = pytest.mark.skipif(not (RIVA_APPS / "transcribe_file.py").is_file() or not (SPEECH / AN4_CLIP).is_file(),
                                reason="needs Riva's sample apps and the AN4 data in ../shared")


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    """`asr serve` with gRPC, and a WAV clip (Riva's streaming apps send a .wav file's bytes)."""
    import soundfile as sf

    from model.audio import decode_audio

    tmp = tmp_path_factory.mktemp("riva-apps")
    clip = tmp / "clip.wav"
    sf.write(clip, decode_audio(SPEECH / AN4_CLIP, 16_000).samples, 16_000, subtype="PCM_16")
    port, grpc_port, log = free_port(), free_port(), tmp / "serve.log"
    env = {**os.environ, "ASR_DRAIN_TIMEOUT_S": "5", "PYTHONPATH": str(REPO)}
    env.pop("ASR_API_KEYS", None)
    cmd = _asr_command() + ["serve", "--registry", str(served_model.registry), "--model", served_model.name,
                            "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port),
                            "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}/health/ready", log, timeout_s=START_TIMEOUT_S,
                         what="asr serve")
        rest = httpx.post(f"http://127.0.0.1:{port}/transcribe", files={"file": ("clip.wav", clip.read_bytes())},
                          timeout=60).json()
        yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{port}", "clip": clip, "text": rest["text"],
               "tmp": tmp,
               "model": f"{rest['model']['name']}@{rest['model']['version']}", "real": served_model.real}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _app(name: str, *args, cwd: Path | None = None) -> str:
    result = subprocess.run([sys.executable, str(RIVA_APPS / name), *map(str, args)], capture_output=True, text=True,
                            timeout=180, cwd=cwd)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("app", ["transcribe_file_offline.py", "transcribe_file.py"])
def test_list_models_shows_every_version_in_the_mode_the_app_wants(server, app):
    listing = _app(app, "--server", server["grpc"], "--list-models")
    assert f"'{server['model']}'" in listing.split("Available ASR models", 1)[1], listing


def test_the_offline_app_prints_what_rest_gives(server):
    assert server["real"] is False or server["text"]  # the starter hears words in this clip
    output = _app("transcribe_file_offline.py", "--server", server["grpc"], "--input-file", server["clip"])
    assert f"Final transcript: {server['text']}" in output.splitlines(), output[-2000:]


def test_the_streaming_app_in_real_time_prints_interims_words_and_the_final(server):
    output = _app("transcribe_file.py", "--server", server["grpc"], "--input-file", server["clip"],
                  "--simulate-realtime", "--show-intermediate", "--word-time-offsets")
    finals = re.findall(r"Transcript 0: (.*)", output)
    assert finals == [server["text"]], output[-2000:]
    assert re.search(r"^>>>Time [\d.]+s: \S", output, re.MULTILINE), output[-2000:]  # interims while it streamed
    if server["real"]:
        words = re.findall(r"^(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s*$", output, re.MULTILINE)
        assert [w[0] for w in words] == server["text"].split()
        assert all(int(start) <= int(end) for _, start, end, _ in words)


def test_the_streaming_app_with_a_flac_file_prints_the_final(server):
    """The same clip as a .flac file: the app streams its bytes as they are, the encoding unset."""
    import soundfile as sf

    flac = server["tmp"] / "clip.flac"
    sf.write(flac, sf.read(server["clip"], dtype="float32")[0], 16_000, subtype="PCM_16")
    output = _app("transcribe_file.py", "--server", server["grpc"], "--input-file", flac, "--show-intermediate")
    assert [f.strip() for f in re.findall(r"^## (.*)$", output, re.MULTILINE)] == [server["text"]], output[-2000:]


def test_boosted_words_change_the_streamed_final_as_they_change_the_offline_one(server):
    boost = ("--boosted-lm-words", "g m e f", "--boosted-lm-score", "20")
    offline = _app("transcribe_file_offline.py", "--server", server["grpc"], "--input-file", server["clip"], *boost)
    [boosted] = re.findall(r"^Final transcript: (.*)$", offline, re.MULTILINE)
    streamed = _app("transcribe_file.py", "--server", server["grpc"], "--input-file", server["clip"], *boost)
    assert re.findall(r"^## (.*)$", streamed, re.MULTILINE) == [boosted], streamed[-2000:]
    if server["real"]:  # the starter hears "g n e s" in this clip of "g m e f" unless the phrase is boosted
        assert "g m e f" in boosted and boosted != server["text"], (boosted, server["text"])


def test_two_parallel_streaming_clients_each_write_the_final(server):
    out = server["tmp"] / "parallel"
    out.mkdir()
    _app("riva_streaming_asr_client.py", "--server", server["grpc"], "--input-file", server["clip"], "--num-clients",
         "2", "--simulate-realtime", "--word-time-offsets", cwd=out)
    for index in (0, 1):
        text = (out / f"output_{index}.txt").read_text()
        assert re.findall(r"Transcript 0: (.*)", text) == [server["text"]], text[-2000:]


@pytest.mark.parametrize("boost", [(), ("--boosted-lm-words", "g m e f", "--boosted-lm-score", "20")],
                         ids=["plain", "boosted"])
def test_the_realtime_app_writes_what_the_offline_app_prints(server, boost):
    offline = _app("transcribe_file_offline.py", "--server", server["grpc"], "--input-file", server["clip"], *boost)
    [want] = re.findall(r"^Final transcript: (.*)$", offline, re.MULTILINE)
    out = server["tmp"] / f"realtime-{len(boost)}.txt"
    printed = _app("realtime_asr_client.py", "--server", server["http"], "--input-file", server["clip"],
                   "--word-time-offsets", "--output-text", out, *boost)
    assert out.read_text() == want, printed[-2000:]
    if server["real"]:  # word times in ms, from the file's start
        words = re.findall(r"^(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+0\s*$", printed, re.MULTILINE)
        assert [w[0] for w in words] == want.split(), printed[-2000:]
