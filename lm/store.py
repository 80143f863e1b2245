"""Publishing KenLM language models to the model registry and loading them back."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from lm.kenlm_tools import LMBuildError, build_kenlm
from lm.text import normalize_text
from model.registry import IntegrityError, ModelRef, Registry, RegistryError

__all__ = ["BINARY_FILE", "UNIGRAMS_FILE", "load_lm_files", "publish_lm", "read_sentences"]

BINARY_FILE = "lm.binary"
UNIGRAMS_FILE = "unigrams.txt"


def _raw_lines(text_source: Path) -> Iterator[str]:
    """Yields the raw sentences of a plain-text file or the "text" fields of a JSON-lines manifest.

    The format is decided by the first non-empty line: a JSON object means NeMo manifest.
    """
    with open(text_source, encoding="utf-8") as f:
        is_manifest: bool | None = None
        for lineno, line in enumerate(f, 1):
            stripped = line.strip()
            if not stripped:
                continue
            if is_manifest is None:
                try:
                    is_manifest = isinstance(json.loads(stripped), dict)
                except ValueError:
                    is_manifest = False
            if not is_manifest:
                yield stripped
                continue
            try:
                entry = json.loads(stripped)
            except ValueError as e:
                raise LMBuildError(f"{text_source}:{lineno}: not valid JSON in a JSON-lines manifest ({e})") from None
            text = entry.get("text") if isinstance(entry, dict) else None
            if not isinstance(text, str):
                raise LMBuildError(f"{text_source}:{lineno}: manifest entry has no string 'text' field")
            yield text


def read_sentences(text_source: Path, labels: Sequence[str]) -> Iterator[str]:
    """Yields the normalised, non-empty sentences of a text file or NeMo manifest."""
    for raw in _raw_lines(Path(text_source)):
        sentence = normalize_text(raw, labels)
        if sentence:
            yield sentence


def publish_lm(
    registry: Registry,
    name: str,
    text_source: Path,
    order: int = 4,
    prune: Sequence[int] | None = None,
    labels: Sequence[str] = (),
    *,
    memory: str = "1G",
) -> ModelRef:
    """Builds a KenLM model from a corpus and publishes it as the next version of ``name``.

    Args:
        registry: where to publish.
        name: LM name in the registry.
        text_source: plain text (one sentence per line) or a NeMo JSON-lines manifest (its
            "text" fields), detected from the first non-empty line.
        order: n-gram order (1..6).
        prune: lmplz count thresholds per order (see ``build_kenlm``); None keeps everything.
        labels: the acoustic model's labels; sentences are normalised with ``normalize_text``
            against them, exactly like training transcripts.
        memory: lmplz/build_binary sort memory.

    Returns:
        The published version. Files: ``lm.binary`` (KenLM trie), ``unigrams.txt`` (one word
        per line); ``extra``: order, prune, num_sentences, labels.

    Raises:
        LMBuildError: unreadable corpus, no usable sentences, or a KenLM tool failed.
        model.registry.RegistryError: the publish itself failed.
    """
    labels = list(labels)
    if not labels:
        raise LMBuildError("labels are required to normalise the LM corpus like training transcripts")
    text_source = Path(text_source)
    if not text_source.is_file():
        raise LMBuildError(f"LM corpus not found: {text_source}")
    num_sentences = 0

    def counted() -> Iterator[str]:
        nonlocal num_sentences
        for sentence in read_sentences(text_source, labels):
            num_sentences += 1
            yield sentence

    with tempfile.TemporaryDirectory(prefix="lm-build-") as tmp:
        try:
            build = build_kenlm(counted(), order, Path(tmp), prune, memory=memory)
        except UnicodeDecodeError as e:
            raise LMBuildError(f"{text_source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        unigrams_text = "".join(word + "\n" for word in build.unigrams)
        return registry.publish(
            name,
            {BINARY_FILE: build.binary_path, UNIGRAMS_FILE: unigrams_text.encode("utf-8")},
            kind="lm",
            source="trained",
            extra={
                "order": order,
                "prune": list(prune) if prune else [],
                "num_sentences": num_sentences,
                "num_unigrams": len(build.unigrams),
                "labels": labels,
                "corpus": text_source.name,
            },
        )


def load_lm_files(registry: Registry, spec: str) -> tuple[Path, list[str], dict]:
    """Resolves and verifies a published LM; returns ``(binary_path, unigrams, metadata)``.

    Every file's checksum is recomputed by the registry before anything is returned.

    Raises:
        model.registry.NotFoundError: unknown name or version.
        model.registry.IntegrityError: modified, missing or unexpected files.
        model.registry.RegistryError: ``spec`` is not a language model.
    """
    ref, meta = registry.open(spec)
    if meta.get("kind") != "lm":
        raise RegistryError(f"'{ref}' is a {meta.get('kind')!r}, not a language model ('lm')")
    for filename in (BINARY_FILE, UNIGRAMS_FILE):
        if filename not in meta["files"]:
            raise IntegrityError(f"lm '{ref}': {filename} is not among its published files")
    unigrams = (ref.path / UNIGRAMS_FILE).read_text(encoding="utf-8").split()
    return ref.path / BINARY_FILE, unigrams, meta
