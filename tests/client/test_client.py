"""`asr client transcribe` over gRPC (unary and streaming) and REST, against in-process servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading

import grpc
import pytest

from client.cli import add_client_arguments
from model.audio import decode_audio
from service.domain import TranscriptionRequest
from tests.service.test_grpc_support import (AN4_TEST_MANIFEST, REPO_ROOT, an4_test_set, rest_serving, service_config,
                                             serving)
from tests.tiny_model import publish_tiny_model

pytestmark = pytest.mark.skipif(not AN4_TEST_MANIFEST.exists(), reason="shared AN4 data not found")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="asr")
    add_client_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(["client", "transcribe", *argv])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A gRPC server on its own event-loop thread (the client is synchronous); yields (target, offline)."""
    root = tmp_path_factory.mktemp("registry")
    publish_tiny_model(root)
    path = an4_test_set(limit=1)[0][0]
    ready, stop, box = threading.Event(), None, {}

    async def main():
        nonlocal stop
        stop = asyncio.Event()
        async with serving(service_config(root)) as (engine, target):
            audio = decode_audio(path, 16_000).samples
            box["offline"] = (await engine.transcribe(TranscriptionRequest(audio))).text
            box["target"] = target
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(60), "server did not start"
    yield box["target"], path, box["offline"]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def _run(capsys, *argv):
    args = _parse(*argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_grpc_unary(server, capsys):
    target, path, offline = server
    code, out, _ = _run(capsys, str(path), "--grpc", target)
    assert code == 0 and out.strip() == offline
    code, out, _ = _run(capsys, str(path), "--grpc", target, "--json")
    assert json.loads(out)["model"]["name"] == "tiny"


def test_grpc_stream_prints_interims_then_final(server, capsys):
    target, path, offline = server
    code, out, err = _run(capsys, str(path), "--grpc", target, "--stream")
    assert code == 0
    assert out.strip() == offline
    assert err.count("... ") >= 2  # interim results arrived while streaming


@pytest.mark.parametrize("argv, fragment", [
    (["/no/such/file.wav"], "file not found"),
    (["{pyproject}", "--stream"], "--stream needs --grpc"),
    (["{pyproject}", "--grpc", "{target}"], "INVALID_ARGUMENT"),
    (["{pyproject}", "--grpc", "{target}", "--stream"], "not a readable audio file"),
    (["{clip}", "--grpc", "{target}", "--model", "nosuch"], "NOT_FOUND"),
])
def test_bad_input_exits_2_with_one_line(server, capsys, argv, fragment):
    target, path, _ = server
    values = {"pyproject": str(REPO_ROOT / "pyproject.toml"), "target": target, "clip": str(path)}
    code, _, err = _run(capsys, *[a.format(**values) for a in argv])
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_unreachable_server_exits_1(capsys):
    path = an4_test_set(limit=1)[0][0]
    code, _, err = _run(capsys, str(path), "--grpc", "127.0.0.1:9", "--timeout", "3")
    assert code == 1 and err.startswith("error:")


def test_rest(tmp_path, capsys):
    publish_tiny_model(tmp_path)
    with rest_serving(tmp_path) as url:
        path = an4_test_set(limit=1)[0][0]
        code, out, _ = _run(capsys, str(path), "--url", url, "--json")
        assert code == 0 and isinstance(json.loads(out)["text"], str)
        code, _, err = _run(capsys, str(REPO_ROOT / "pyproject.toml"), "--url", url)
        assert code == 2 and err.startswith("error: HTTP 4")
        code, _, err = _run(capsys, str(path), "--url", url, "--model", "nosuch")
        assert code == 2 and "HTTP 404" in err


def _servicer_base():
    from client.asr_pb import asr_pb2_grpc

    return asr_pb2_grpc.SpeechRecognitionServicer


class _CancelsFirstAttempts(_servicer_base()):
    """A SpeechRecognition stand-in that answers its first ``failures`` calls as a stopping grpcio server answers
    the calls it had accepted but not started: CANCELLED before any response header."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def Recognize(self, request, context):
        from client.asr_pb import asr_pb2

        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return asr_pb2.RecognizeResponse(request_id=str(len(request.audio)))


@contextlib.contextmanager
def _stand_in(servicer):
    from concurrent import futures

    from client.asr_pb import asr_pb2_grpc
    from client.grpc_client import MAX_MESSAGE_BYTES

    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.max_receive_message_length",
                                                                  MAX_MESSAGE_BYTES)])
    asr_pb2_grpc.add_SpeechRecognitionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.mark.parametrize("audio_bytes", [1_000, 4_000_000])  # under and over gRPC's default 256 KiB retry buffer
def test_grpc_client_sends_a_call_the_server_never_started_again(audio_bytes):
    from client.grpc_client import GrpcClient

    servicer = _CancelsFirstAttempts(failures=2)
    with _stand_in(servicer) as target, GrpcClient(target, timeout_s=30) as client:
        response = client.recognize(b"\0" * audio_bytes)
    assert servicer.calls == 3 and response.request_id == str(audio_bytes)


def test_grpc_client_gives_up_after_four_attempts():
    from client.grpc_client import GrpcClient

    servicer = _CancelsFirstAttempts(failures=10)
    with _stand_in(servicer) as target, GrpcClient(target, timeout_s=30) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.recognize(b"\0" * 1_000)
    assert raised.value.code() is grpc.StatusCode.CANCELLED and servicer.calls == 4
