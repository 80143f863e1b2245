"""Shared fixtures for the language-model tests: a tiny corpus and a KenLM model built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm.kenlm_tools import KenLMBuild, KenLMNotFoundError, build_kenlm, find_kenlm_binary

from tests.lm.helpers import CORPUS, LABELS


@pytest.fixture(scope="session")
def kenlm_tools() -> None:
    """Fails (never skips) when lmplz/build_binary are missing: they are a setup requirement."""
    try:
        find_kenlm_binary("lmplz")
        find_kenlm_binary("build_binary")
    except KenLMNotFoundError as e:
        pytest.fail(str(e), pytrace=False)  # the message names scripts/setup.sh


@pytest.fixture(scope="session")
def tiny_lm(kenlm_tools, tmp_path_factory) -> KenLMBuild:
    return build_kenlm(CORPUS, 3, tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture
def labels() -> list[str]:
    return list(LABELS)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path
