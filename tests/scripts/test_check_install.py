"""scripts/check_install.py: setup's last step passes on this install and fails in one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CHECK = REPO_ROOT / "scripts" / "check_install.py"
# What a torchaudio built for another torch does at import (the failure the lock prevents).
BROKEN_TORCHAUDIO = '''raise OSError("/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so: "
              "undefined symbol: torch_exception_get_what_without_backtrace")
'''


def run_check(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:  # in front of site-packages, like a stray install would be
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO_ROOT)


def starter_registry() -> str:
    registry = REPO_ROOT / "starter" / "registry"
    if not (registry / "an4-quartznet").is_dir():
        pytest.skip("starter/registry is not in this checkout")
    return str(registry)


def fake_torchaudio(root: Path, version: str, *, extension: bool) -> None:
    """A torchaudio package under ``root`` that imports as ``version``, with or without its compiled extension."""
    package = root / "torchaudio"
    (package / "_extension").mkdir(parents=True)
    (package / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (package / "_extension" / "__init__.py").write_text(f"_IS_TORCHAUDIO_EXT_AVAILABLE = {extension}\n")


def test_this_install_passes_and_transcribes_the_bundled_clip():
    result = run_check("--registry", starter_registry())
    assert result.returncode == 0, result.stderr
    assert "heard 'enter forty one'" in result.stdout


def test_a_torchaudio_that_cannot_load_its_extension_fails_in_one_line(tmp_path):
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text(BROKEN_TORCHAUDIO)
    result = run_check("--registry", starter_registry(), pythonpath=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot import torchaudio" in lines[0] and "undefined symbol" in lines[0]
    assert "delete .venv and run scripts/setup.sh" in lines[0]


def test_a_torchaudio_without_its_compiled_library_is_caught(tmp_path):
    """torchaudio itself imports, but reports no extension: the front end would fail later."""
    fake_torchaudio(tmp_path, "2.11.0", extension=False)
    result = run_check("--registry", starter_registry(), pythonpath=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "[check] FAILED: torchaudio 2.11.0 has no compiled extension; delete .venv and run scripts/setup.sh again"]


def test_a_mismatched_pair_is_named(tmp_path):
    fake_torchaudio(tmp_path, "2.11.1", extension=True)
    result = run_check("--registry", starter_registry(), pythonpath=tmp_path)
    assert result.returncode == 1
    assert "torchaudio 2.11.1 does not match torch 2.11.0" in result.stderr


def test_setup_stops_with_a_non_zero_exit_when_the_check_fails(tmp_path):
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text(BROKEN_TORCHAUDIO)
    if not (REPO_ROOT / ".venv" / ".setup-lock.sha256").is_file():
        pytest.skip("needs a checkout prepared by scripts/setup.sh (re-running it is then quick)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), ASR_SKIP_APT="1", ASR_SKIP_TEST_TOOLS="1")
    result = subprocess.run([str(REPO_ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, env=env,
                            timeout=600, cwd=REPO_ROOT)
    assert result.returncode != 0
    assert "cannot import torchaudio" in result.stderr
    assert "the install check failed" in result.stderr
    assert "[setup] ready in" not in result.stdout
