"""The client package at both ends of what it declares: its dependency floors and the newest versions.

scripts/setup.sh installs client/locks/floors.lock and newest.lock into .venv-client/floors and
.venv-client/newest: the client's own dependencies and nothing else (no torch, no server packages).
The client is installed from client/ into a folder of its own, and each venv's Python transcribes
over REST, gRPC and a gRPC stream against a real server, as a user's machine would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.client.test_client import server  # noqa: F401 - the gRPC server fixture
from tests.conftest import REPO_ROOT

ENDS = ("floors", "newest")


def _venv_python(end: str) -> Path:
    python = REPO_ROOT / ".venv-client" / end / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: scripts/setup.sh installs client/locks/{end}.lock there")
    return python


@pytest.fixture(scope="module")
def installed_client(tmp_path_factory) -> Path:
    target, source = tmp_path_factory.mktemp("client-site"), tmp_path_factory.mktemp("client-src") / "client"
    shutil.copytree(REPO_ROOT / "client", source, ignore=shutil.ignore_patterns("__pycache__", "locks"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--disable-pip-version-check", "-q", "--target", str(target), str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    return target


@pytest.fixture(scope="module")
def rest_url(tmp_path_factory):
    """The REST API of a real server serving the tiny model."""
    from tests.service.test_grpc_support import rest_serving
    from tests.tiny_model import publish_tiny_model

    root = tmp_path_factory.mktemp("floors-registry")
    publish_tiny_model(root)
    with rest_serving(root) as url:
        yield url


@pytest.mark.parametrize("end", ENDS)
def test_the_client_at_its_floors_and_newest_transcribes_over_rest_and_grpc(end, installed_client, server,  # noqa: F811
                                                                              rest_url):
    target, clip, offline = server
    lock = (REPO_ROOT / "client" / "locks" / f"{end}.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==([^ ]+) ", lock, re.M))
    probe = textwrap.dedent(f"""
        import contextlib, importlib.metadata as md, io, json, sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.path.insert(0, {str(installed_client)!r})
        try:
            import torch
        except ImportError:
            pass
        else:
            sys.exit("torch is installed here")
        import client.cli
        assert client.__file__.startswith({str(installed_client)!r}), client.__file__
        out = {{"versions": {{n: md.version(n) for n in ("grpcio", "protobuf", "httpx", "numpy", "soundfile")}}}}
        for name, argv in (("rest", ["--url", {rest_url!r}]), ("grpc", ["--grpc", {target!r}]),
                           ("stream", ["--grpc", {target!r}, "--stream"])):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
                code = client.cli.main(["transcribe", {str(clip)!r}, *argv])
            out[name] = [code, buffer.getvalue().strip()]
        print(json.dumps(out))
    """)
    run = subprocess.run([str(_venv_python(end)), "-W", "error::UserWarning", "-c", probe], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for package, version in result["versions"].items():
        assert pins[package] == version, (package, version, pins[package])  # the venv is the lock
    assert result["rest"] == [0, offline] and result["grpc"] == [0, offline] and result["stream"] == [0, offline]


def test_the_floors_lock_pins_the_declared_floors():
    """client/locks/floors.lock holds each direct dependency at exactly the floor client/pyproject.toml declares."""
    import tomllib

    declared = tomllib.loads((REPO_ROOT / "client" / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = dict(re.match(r"([A-Za-z0-9_-]+)>=([0-9.]+)", d).groups() for d in declared)
    lock = (REPO_ROOT / "client" / "locks" / "floors.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==([^ ]+) ", lock, re.M))
    from packaging.version import Version

    assert {name: Version(pins[name]) for name in floors} == {name: Version(v) for name, v in floors.items()}
