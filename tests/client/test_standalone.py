"""The client stands alone: it installs from client/pyproject.toml and runs without torch or the server's packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

# Modules the client must never need: the model stack and every server-side package.
FORBIDDEN = ("torch", "torchaudio", "service", "model", "training", "lm", "cli", "interop", "ray")


def test_the_installed_client_imports_and_runs_without_the_server_side(tmp_path):
    target, source = tmp_path / "site", tmp_path / "client"
    shutil.copytree(REPO_ROOT / "client", source, ignore=shutil.ignore_patterns("__pycache__"))  # builds stay here
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--disable-pip-version-check", "-q", "--target", str(target), str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (target / "client" / "asr_pb" / "asr_pb2_grpc.py").is_file()
    probe = textwrap.dedent(f"""
        import importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {FORBIDDEN!r}:
                    raise ImportError("the client imported " + name)
        sys.meta_path.insert(0, Refuse())
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.path.insert(0, {str(target)!r})
        import client, client.cli, client.rest, client.grpc_client
        assert client.__file__.startswith({str(target)!r}), client.__file__
        sys.exit(client.cli.main(["transcribe", "/no/such/file.wav"]))
    """)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]  # the client's own exit code for a missing file
    assert "file.wav" in run.stderr and "ImportError" not in run.stderr


def test_the_client_stubs_carry_no_generator_version_check():
    """Generated modules refuse a protobuf older than their protoc and a grpcio older than their grpcio-tools;
    the client's are built from the descriptor so that its declared floors (tests/client/test_floors.py) hold."""
    for path in (REPO_ROOT / "client" / "asr_pb").glob("*.py"):
        text = path.read_text()
        assert "ValidateProtobufRuntimeVersion" not in text and "GRPC_GENERATED_VERSION" not in text, path


def test_rest_needs_neither_grpc_nor_protobuf():
    probe = textwrap.dedent(f"""
        import importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("grpc", "google"):
                    raise ImportError("REST imported " + name)
        sys.meta_path.insert(0, Refuse())
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import client
        client.RestClient("http://127.0.0.1:9").close()
        try:
            client.GrpcClient
        except ImportError as e:
            assert "grpc" in str(e), e
        else:
            raise SystemExit("GrpcClient loaded without grpc")
    """)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
