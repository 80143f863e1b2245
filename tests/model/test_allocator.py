"""model.allocator: freed buffers stay with the process for reuse, unless the user tunes malloc."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from model.allocator import _is_glibc

pytestmark = pytest.mark.skipif(not _is_glibc(), reason="the thresholds are glibc's")
REPO = Path(__file__).resolve().parents[2]

# Allocates, touches and frees a 16 MB block, reporting how much of it the process still holds.
_PROBE = textwrap.dedent("""
    import sys
    from model.allocator import keep_freed_memory

    def resident_bytes():
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
    block = bytearray(16 * 2**20)  # bytearray fills it with zeros: every page touched
    held = resident_bytes()
    del block
    print(applied, held - resident_bytes())
""")


def _probe(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                          env={**clean, **env}, cwd=REPO)
    applied, released = done.stdout.split()
    return applied == "True", int(released)


def test_freed_blocks_stay_with_the_process():
    # glibc's default maps a fresh 16 MB block and unmaps it on free: all 16 MB go back.
    assert _probe("default") == (False, pytest.approx(16 * 2**20, abs=2**20))
    applied, released = _probe("tuned")
    assert applied and released < 2**20


def test_the_users_own_malloc_settings_win():
    applied, released = _probe("tuned", MALLOC_ARENA_MAX="2")
    assert not applied and released == pytest.approx(16 * 2**20, abs=2**20)
    assert _probe("tuned", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")[0] is False
