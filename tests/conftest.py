"""Fixtures shared by every test package: where the read-only shared speech data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data sits next to the checkout: <repo>/../shared/speech.
SPEECH_ROOT = (REPO_ROOT / "../shared/speech").resolve()


@pytest.fixture(scope="session")
def speech_root() -> Path:
    """The shared speech corpus (AN4, FSDD, samples/); tests that need it skip when it is absent."""
    if not (SPEECH_ROOT / "samples").is_dir():
        pytest.skip(f"shared speech data not found at {SPEECH_ROOT} (expected <repo>/../shared/speech)")
    return SPEECH_ROOT
