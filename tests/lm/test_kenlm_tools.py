"""Building KenLM models with lmplz/build_binary (compiled by scripts/setup.sh)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import kenlm
import pytest

from lm.kenlm_tools import KenLMNotFoundError, LMBuildError, build_kenlm, find_kenlm_binary, read_arpa_unigrams
from tests.lm.helpers import CORPUS


def test_tools_are_installed_next_to_python(kenlm_tools) -> None:
    for name in ("lmplz", "build_binary"):
        path = find_kenlm_binary(name)
        assert path.name == name and path.is_file()


def test_missing_tool_names_setup_script(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KenLMNotFoundError, match=r"scripts/setup\.sh"):
        find_kenlm_binary("lmplz")


def test_tiny_corpus_builds_a_loadable_model(tiny_lm) -> None:
    arpa, binary, unigrams = tiny_lm
    assert arpa.is_file() and binary.is_file()
    assert binary.read_bytes()[:4] != arpa.read_bytes()[:4]  # a real binary, not a copy
    assert unigrams == sorted({w for line in CORPUS for w in line.split()})
    assert read_arpa_unigrams(arpa) == unigrams

    model = kenlm.Model(str(binary))
    assert model.order == 3
    sentence = "i have two cats"
    words = sentence.split()
    shuffled = " ".join(random.Random(0).sample(words, len(words)))
    assert shuffled != sentence
    assert model.score(sentence, bos=True, eos=True) > model.score(shuffled, bos=True, eos=True) + 1.0
    assert "yes" in model and "yez" not in model


def test_pruned_build(kenlm_tools, tmp_path: Path) -> None:
    build = build_kenlm(CORPUS + ["a rare singleton trigram here"], 3, tmp_path, prune=[0, 1, 1])
    model = kenlm.Model(str(build.binary_path))
    assert "singleton" in model  # unigrams are never pruned


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": 0}, "order must be an integer from 1 to 6"),
        ({"order": 7}, "order must be an integer from 1 to 6"),
        ({"prune": [1, 1]}, "first .* threshold must be 0"),
        ({"prune": [0, 2, 1]}, "non-decreasing"),
        ({"prune": [0, 0, 0, 0]}, "4 thresholds but the LM order is 3"),
        ({"memory": "lots"}, r"^lmplz failed \(exit \d+\): .*lots"),
    ],
)
def test_bad_arguments_are_one_line_errors(kenlm_tools, tmp_path: Path, kwargs, message) -> None:
    args = {"order": 3, "prune": None, **kwargs}
    with pytest.raises(LMBuildError, match=message) as info:
        build_kenlm(CORPUS, out_dir=tmp_path, **args)
    assert "\n" not in str(info.value)


def test_empty_corpus(kenlm_tools, tmp_path: Path) -> None:
    with pytest.raises(LMBuildError, match="no sentences"):
        build_kenlm(["", "   ", "\n"], 3, tmp_path)
