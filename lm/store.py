"""Publishing KenLM language models to the model registry and loading them back."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from lm.kenlm_tools import LMBuildError, arpa_to_binary, build_kenlm, read_arpa_unigrams
from lm.text import normalize_text
from model.registry import IntegrityError, ModelRef, Registry, RegistryError

__all__ = ["BINARY_FILE", "UNIGRAMS_FILE", "import_lm", "load_lm_files", "publish_lm", "read_sentences"]

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


def import_lm(registry: Registry, name: str, arpa: Path, labels: Sequence[str], *, memory: str = "1G") -> ModelRef:
    """Publishes a language model made elsewhere (an ARPA file, plain or .gz, e.g. LibriSpeech's 3-gram) as the next
    version of ``name``, in the form ``publish_lm`` gives: a KenLM trie and its word list.

    Words are checked against the acoustic model's ``labels`` as a built LM's corpus is normalised: an LM in
    upper case for a lower-case model (LibriSpeech's are upper case) is lower-cased on the way in; an LM most of
    whose words the labels cannot spell is refused, since the beam decoder could never match them.

    Raises:
        LMBuildError: not an ARPA file, words the labels cannot spell, or a KenLM tool failed.
    """
    labels = list(labels)
    arpa = Path(arpa)
    if not arpa.is_file():
        raise LMBuildError(f"{arpa}: file not found")
    with tempfile.TemporaryDirectory(prefix="lm-import-") as tmp:
        plain = _plain_arpa(arpa, Path(tmp) / "lm.arpa", labels)
        unigrams = read_arpa_unigrams(plain)
        if not unigrams:
            raise LMBuildError(f"{arpa}: no \\1-grams: section with words (is it an ARPA file?)")
        unspellable = [w for w in unigrams if normalize_text(w, labels) != w]
        if len(unspellable) > len(unigrams) // 2:
            raise LMBuildError(f"{arpa}: {len(unspellable)} of its {len(unigrams)} words cannot be spelled with the "
                               f"model's labels (e.g. {unspellable[0]!r}); the beam decoder could never match them")
        binary = arpa_to_binary(plain, Path(tmp) / BINARY_FILE, memory=memory)
        order = _arpa_order(plain)
        return registry.publish(
            name,
            {BINARY_FILE: binary, UNIGRAMS_FILE: "".join(w + "\n" for w in unigrams).encode("utf-8")},
            kind="lm", source="imported",
            extra={"order": order, "prune": [], "num_unigrams": len(unigrams),
                   "num_unspellable_unigrams": len(unspellable), "labels": labels, "corpus": None,
                   "imported_from": arpa.name})


KENLM_BINARY_MAGIC = b"mmap lm "


def is_kenlm_binary(path: Path) -> bool:
    """Whether ``path`` is a KenLM binary (build_binary's output), which starts with its format line."""
    with open(path, "rb") as f:
        return f.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC


def import_binary_lm(registry: Registry, name: str, binary: Path, words: Path, labels: Sequence[str]) -> ModelRef:
    """Publishes a KenLM binary made elsewhere with its word list (one word per line: the unigrams the beam
    decoder completes partial words against, which a binary cannot list itself).

    The words must be the LM's (the binary is asked about each) and spellable with ``labels``; a binary's
    words cannot be re-cased, so an upper-case binary for a lower-case model is refused in favour of its ARPA.

    Raises:
        LMBuildError: not a KenLM binary, a word list that does not belong to it, or words the labels cannot spell.
    """
    import kenlm

    labels, binary, words = list(labels), Path(binary), Path(words)
    for path in (binary, words):
        if not path.is_file():
            raise LMBuildError(f"{path}: file not found")
    if not is_kenlm_binary(binary):
        raise LMBuildError(f"{binary}: not a KenLM binary (no '{KENLM_BINARY_MAGIC.decode().strip()}' header)")
    try:
        model = kenlm.Model(str(binary))
        unigrams = [w for w in (line.strip() for line in words.read_text(encoding="utf-8").splitlines())
                    if w and not (w.startswith("<") and w.endswith(">"))]
    except UnicodeDecodeError:
        raise LMBuildError(f"{words}: not a UTF-8 word list") from None
    except (OSError, RuntimeError) as exc:
        raise LMBuildError(f"{binary}: KenLM cannot load it ({' '.join(str(exc).split())[:200]})") from None
    if not unigrams:
        raise LMBuildError(f"{words}: no words in it")
    foreign = [w for w in unigrams if w not in model]
    if len(foreign) > len(unigrams) // 2:
        raise LMBuildError(f"{words}: {len(foreign)} of its {len(unigrams)} words are not in the LM (e.g. "
                           f"{foreign[0]!r}); give the word list the LM was built with")
    lower_labels = not any(c.isupper() for label in labels for c in label)
    if lower_labels and sum(c.isupper() for w in unigrams for c in w) > sum(c.islower() for w in unigrams for c in w):
        raise LMBuildError(f"{binary}: its words are upper case and the model's labels lower case; a binary cannot be "
                           "re-cased: import its ARPA file instead, which is lower-cased on the way in")
    unspellable = [w for w in unigrams if normalize_text(w, labels) != w]
    if len(unspellable) > len(unigrams) // 2:
        raise LMBuildError(f"{words}: {len(unspellable)} of its {len(unigrams)} words cannot be spelled with the "
                           f"model's labels (e.g. {unspellable[0]!r}); the beam decoder could never match them")
    return registry.publish(
        name, {BINARY_FILE: binary, UNIGRAMS_FILE: "".join(w + "\n" for w in unigrams).encode("utf-8")},
        kind="lm", source="imported",
        extra={"order": model.order, "prune": [], "num_unigrams": len(unigrams),
               "num_unspellable_unigrams": len(unspellable), "labels": labels, "corpus": None,
               "imported_from": binary.name, "words_from": words.name})


def _plain_arpa(source: Path, dest: Path, labels: Sequence[str]) -> Path:
    """``source`` as an uncompressed ARPA file, lower-cased when the labels are and the LM's words are not."""
    import gzip

    def lines() -> Iterator[str]:
        with (gzip.open(source, "rt", encoding="utf-8") if source.suffix == ".gz"
              else open(source, encoding="utf-8")) as f:
            yield from f

    try:
        head = [line for line, _ in zip(lines(), range(2000))]
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise LMBuildError(f"{source}: not a UTF-8 ARPA file ({type(exc).__name__})") from None
    if not any(line.strip() == "\\data\\" for line in head):
        raise LMBuildError(f"{source}: not an ARPA file (no \\data\\ header)")
    letters = "".join(line.split("\t")[1] for line in head if line.count("\t") >= 1 and not line.startswith("\\"))
    lower_labels = not any(c.isupper() for label in labels for c in label)
    fold = lower_labels and sum(c.isupper() for c in letters) > sum(c.islower() for c in letters)
    if source.suffix != ".gz" and not fold:
        return source
    with open(dest, "w", encoding="utf-8") as out:
        for line in lines():
            # Only the words: the tokens <s>, </s> and <unk> keep their case.
            out.write(line if line.startswith("\\") or not fold else
                      "\t".join(part if i != 1 else " ".join(w if w.startswith("<") else w.lower()
                                                            for w in part.split(" "))
                                for i, part in enumerate(line.split("\t"))))
    return dest


def _arpa_order(arpa: Path) -> int:
    """The highest n of the ``ngram n=count`` lines in an ARPA header."""
    order = 0
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ngram "):
                order = max(order, int(line.split()[1].split("=")[0]))
            elif line.startswith("\\1-grams"):
                break
    return order


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
