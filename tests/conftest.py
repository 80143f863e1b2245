"""Fixtures shared by every test package: where the read-only shared speech data lives, a tiny published model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import publish_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data sits next to the checkout: <repo>/../shared/speech.
SPEECH_ROOT = (REPO_ROOT / "../shared/speech").resolve()


@pytest.fixture(scope="session")
def speech_root() -> Path:
    """The shared speech corpus (AN4, FSDD, samples/); tests that need it skip when it is absent."""
    if not (SPEECH_ROOT / "samples").is_dir():
        pytest.skip(f"shared speech data not found at {SPEECH_ROOT} (expected <repo>/../shared/speech)")
    return SPEECH_ROOT


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory) -> Path:
    """A registry holding the tiny model as "tiny"@1 (tests/tiny_model.py)."""
    root = tmp_path_factory.mktemp("registry")
    publish_tiny_model(root)
    return root
