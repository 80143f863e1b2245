"""Language models for CTC decoding: text normalisation, KenLM building, registry storage, beam search.

Used by both ``training`` (transcript normalisation, building and publishing LMs) and
``service`` (loading LMs, beam search with hotwords).

    from lm import normalize_text, publish_lm, load_lm_files, BeamDecoder

Names are imported lazily, so ``from lm.text import normalize_text`` pulls in neither
pyctcdecode nor the registry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BeamDecoder",
    "BeamHypothesis",
    "KenLMBuild",
    "KenLMNotFoundError",
    "LMBuildError",
    "build_kenlm",
    "find_kenlm_binary",
    "load_lm_files",
    "normalize_text",
    "publish_lm",
]

_WHERE = {
    "BeamDecoder": "lm.beam",
    "BeamHypothesis": "lm.beam",
    "KenLMBuild": "lm.kenlm_tools",
    "KenLMNotFoundError": "lm.kenlm_tools",
    "LMBuildError": "lm.kenlm_tools",
    "build_kenlm": "lm.kenlm_tools",
    "find_kenlm_binary": "lm.kenlm_tools",
    "load_lm_files": "lm.store",
    "normalize_text": "lm.text",
    "publish_lm": "lm.store",
}

if TYPE_CHECKING:
    from lm.beam import BeamDecoder, BeamHypothesis
    from lm.kenlm_tools import KenLMBuild, KenLMNotFoundError, LMBuildError, build_kenlm, find_kenlm_binary
    from lm.store import load_lm_files, publish_lm
    from lm.text import normalize_text


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
