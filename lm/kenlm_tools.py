"""Building KenLM n-gram models with the ``lmplz`` and ``build_binary`` command-line tools.

The tools are compiled from the kenlm source distribution by ``scripts/setup.sh`` and
installed next to the virtualenv's Python (``.venv/bin``); the ``kenlm`` Python module only
*reads* models.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from model.errors import ASRError, Kind

__all__ = [
    "KenLMBuild",
    "KenLMNotFoundError",
    "LMBuildError",
    "SETUP_SCRIPT",
    "build_kenlm",
    "find_kenlm_binary",
    "read_arpa_unigrams",
]

SETUP_SCRIPT = "scripts/setup.sh"
_SPECIAL_TOKENS = frozenset({"<s>", "</s>", "<unk>"})


class LMBuildError(ASRError, RuntimeError):
    """A language model could not be built; the message is one line naming the cause."""

    code = "lm_build_failed"


class KenLMNotFoundError(LMBuildError):
    """``lmplz`` or ``build_binary`` is not installed."""

    kind, code = Kind.UNAVAILABLE, "kenlm_not_found"


class KenLMBuild(NamedTuple):
    """Result of ``build_kenlm``; unpacks as ``arpa_path, binary_path, unigrams``."""

    arpa_path: Path
    binary_path: Path
    unigrams: list[str]


def find_kenlm_binary(name: str) -> Path:
    """Locates a KenLM tool: next to ``sys.executable`` (the venv's bin folder), then ``PATH``.

    Args:
        name: ``"lmplz"`` or ``"build_binary"``.

    Raises:
        KenLMNotFoundError: the tool is in neither place.
    """
    # Not resolved: a venv's python is a symlink to the base interpreter, but its tools live
    # in the venv's bin folder.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise KenLMNotFoundError(
        f"KenLM tool {name!r} not found in {candidate.parent} or on PATH; "
        f"run {SETUP_SCRIPT} to compile it into .venv/bin"
    )


def _check_prune(order: int, prune: Sequence[int] | None) -> list[int]:
    if prune is None:
        return []
    prune = [int(p) for p in prune]
    if not prune:
        return []
    if len(prune) > order:
        raise LMBuildError(f"prune has {len(prune)} thresholds but the LM order is {order}")
    if prune[0] != 0:
        raise LMBuildError(f"prune {prune}: the first (unigram) threshold must be 0, KenLM cannot prune unigrams")
    if any(p < 0 for p in prune) or any(b < a for a, b in zip(prune, prune[1:])):
        raise LMBuildError(f"prune {prune}: thresholds must be non-negative and non-decreasing")
    return prune


def _last_line(path: Path) -> str:
    """Returns the most informative line of a tool's stderr (last non-empty, non-progress)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no output)"
    for line in reversed(lines):
        line = line.strip()
        # lmplz prints progress bars of '*' and '-'; they say nothing about the failure.
        if line and set(line) - set("*-+|0123456789%. "):
            return line
    return "(no output)"


def _run(cmd: list[str], *, stdin_lines: Iterable[str] | None, log_path: Path) -> int:
    """Runs ``cmd`` with stderr to ``log_path`` and ``stdin_lines`` on stdin; returns lines fed."""
    count = 0
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if stdin_lines is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        except OSError as e:
            raise LMBuildError(f"cannot run {cmd[0]}: {e.strerror or e}") from None
        try:
            if stdin_lines is not None:
                assert proc.stdin is not None
                try:
                    for line in stdin_lines:
                        proc.stdin.write(line.encode("utf-8") + b"\n")
                        count += 1
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # the tool died early; its exit status and stderr say why
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise LMBuildError(f"{Path(cmd[0]).name} failed (exit {rc}): {_last_line(log_path)}")
    return count


def read_arpa_unigrams(arpa_path: Path) -> list[str]:
    """Returns the sorted words of an ARPA file's ``\\1-grams:`` section, without <s>, </s>, <unk>."""
    words: set[str] = set()
    in_unigrams = False
    with open(arpa_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif in_unigrams:
                if line.startswith("\\"):
                    break
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] not in _SPECIAL_TOKENS:
                    words.add(parts[1])
    return sorted(words)


def arpa_to_binary(arpa_path: Path, binary_path: Path, *, memory: str = "1G") -> Path:
    """Runs ``build_binary trie`` on an ARPA file; returns ``binary_path``.

    Raises:
        KenLMNotFoundError: the tools are not installed (run scripts/setup.sh).
        LMBuildError: build_binary failed (its last line says why).
    """
    build_binary = find_kenlm_binary("build_binary")
    with tempfile.TemporaryDirectory(prefix="kenlm-", dir=Path(binary_path).parent) as tmp:
        _run([str(build_binary), "-S", memory, "-T", str(Path(tmp) / "trie"), "trie", str(arpa_path),
              str(binary_path)], stdin_lines=None, log_path=Path(tmp) / "build_binary.log")
    return Path(binary_path)


def build_kenlm(
    text_lines: Iterable[str],
    order: int,
    out_dir: Path,
    prune: Sequence[int] | None = None,
    *,
    memory: str = "1G",
) -> KenLMBuild:
    """Builds an n-gram LM (ARPA + binary trie) from already normalised sentences.

    Runs ``lmplz -o ORDER --discount_fallback [--prune ...]`` with the sentences on stdin, then
    ``build_binary trie``. ``--discount_fallback`` lets lmplz substitute default Kneser-Ney
    discounts when the count-of-counts statistics are degenerate, which they always are for a
    small corpus (tests, a hand-written domain phrase list); without it lmplz aborts with
    "BadDiscountException". On a large corpus it changes nothing.

    Args:
        text_lines: one sentence per item; surrounding whitespace is collapsed, empty ones skipped.
        order: n-gram order, 1..6 (the tools are compiled with KENLM_MAX_ORDER=6).
        out_dir: created if needed; receives ``lm.arpa`` and ``lm.binary``.
        prune: count thresholds per order, e.g. ``[0, 0, 1]`` drops singleton trigrams and
            above; the first must be 0 and they must not decrease. None or [] keeps everything.
        memory: sort memory for both tools (``-S``), e.g. "1G" or "20%". Their default, 80% of
            physical RAM, ignores container limits.

    Returns:
        ``KenLMBuild(arpa_path, binary_path, unigrams)``; ``unigrams`` is the sorted word list
        of the model (for pyctcdecode).

    Raises:
        KenLMNotFoundError: the tools are not installed (run scripts/setup.sh).
        LMBuildError: bad arguments, no sentences, or a tool failed; one line with the cause.
    """
    if not isinstance(order, int) or not 1 <= order <= 6:
        raise LMBuildError(f"LM order must be an integer from 1 to 6, got {order!r}")
    prune_args = _check_prune(order, prune)
    lmplz = find_kenlm_binary("lmplz")
    find_kenlm_binary("build_binary")  # both tools present before a long lmplz run

    sentences = (joined for line in text_lines if (joined := " ".join(line.split())))
    first = next(sentences, None)
    if first is None:
        raise LMBuildError("no sentences to build a language model from (all empty after normalisation?)")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arpa_path = out_dir / "lm.arpa"
    binary_path = out_dir / "lm.binary"
    with tempfile.TemporaryDirectory(prefix="kenlm-", dir=out_dir) as tmp:
        tmp_path = Path(tmp)
        cmd = [str(lmplz), "-o", str(order), "--discount_fallback", "-S", memory,
               "-T", str(tmp_path / "lmplz"), "--arpa", str(arpa_path)]
        if prune_args:
            cmd += ["--prune", *map(str, prune_args)]
        _run(cmd, stdin_lines=itertools.chain([first], sentences), log_path=tmp_path / "lmplz.log")
    arpa_to_binary(arpa_path, binary_path, memory=memory)
    unigrams = read_arpa_unigrams(arpa_path)
    if not unigrams:
        raise LMBuildError(f"{arpa_path} has no words in its unigram section")
    return KenLMBuild(arpa_path, binary_path, unigrams)
