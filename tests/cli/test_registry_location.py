"""`asr` from any directory: the per-user registry that scripts/setup.sh links to the checkout's."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import soundfile as sf

from tests.cli.helpers import asr_console
from tests.conftest import REPO_ROOT


def test_asr_outside_the_checkout_uses_the_per_user_registry(tiny_registry, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    sf.write(elsewhere / "tone.wav", (0.1 * np.sin(np.arange(16_000) / 3)).astype(np.float32), 16_000)
    lost = asr_console("transcribe", "tone.wav", "--model", "tiny", cwd=elsewhere)
    line = lost.assert_one_line_error("does not exist", "scripts/setup.sh")
    assert str(tmp_path / "data" / "quartznet-asr" / "registry") in line
    (tmp_path / "data" / "quartznet-asr").mkdir(parents=True)
    (tmp_path / "data" / "quartznet-asr" / "registry").symlink_to(tiny_registry)
    found = asr_console("transcribe", "tone.wav", "--model", "tiny", "--json", cwd=elsewhere)
    assert found.returncode == 0 and json.loads(found.stdout)["model"] == "tiny@1", found.stderr


def test_setup_links_the_per_user_registry_only_where_there_is_none(tmp_path):
    """The shell step itself, on a scratch checkout: links once, keeps an existing link, replaces a dangling one."""
    script = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    start = script.index("step_seed_registry() {")
    step = script[start:script.index("\n}\n", start) + 3]
    checkout = tmp_path / "checkout"
    (checkout / "starter" / "registry").mkdir(parents=True)

    def run(**env) -> str:
        bash = f'log() {{ echo "$*"; }}\nROOT={checkout}\n{step}\nstep_seed_registry\n'
        return subprocess.run(["bash", "-c", bash], capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), **env}).stdout

    link = tmp_path / "home" / ".local" / "share" / "quartznet-asr" / "registry"
    assert "linked" in run() and link.resolve() == (checkout / "registry").resolve()
    other = tmp_path / "other"
    other.mkdir()
    link.unlink()
    link.symlink_to(other)
    assert "linked" not in run() and link.resolve() == other.resolve()  # someone else's: kept
    other.rmdir()
    assert "linked" in run() and link.resolve() == (checkout / "registry").resolve()  # dangling: replaced
