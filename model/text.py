"""Transcript normalisation shared by acoustic-model training, evaluation and language-model building.

Acoustic targets and LM training text must be normalised by the same function, or the beam
search ends up scoring words the acoustic model never learned to spell (and vice versa).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

__all__ = ["UNKNOWN_PIECE", "WORD_START", "display_labels", "is_word_piece_labels", "normalize_text"]

# Typographic variants, mapped before characters outside the labels are dropped.
_APOSTROPHES = "\u2018\u2019\u201a\u201b\u2032\u02bc\u00b4`"  # ‘ ’ ‚ ‛ ′ ʼ ´ `
_DOUBLE_QUOTES = "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"  # “ ” „ ‟ ″ « »
# Joiners between words: "well-known", "and/or", "snake_case", en/em dashes, minus sign.
_WORD_JOINERS = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212/_"
_MAP = {
    **{c: "'" for c in _APOSTROPHES},
    **{c: '"' for c in _DOUBLE_QUOTES},
    **{c: " " for c in _WORD_JOINERS},
}
# An apostrophe not between two non-space characters is a quotation mark, not part of a word:
# "'hello'" -> "hello", "rock 'n' roll" -> "rock n roll", but "don't" and "o'clock" stay.
_EDGE_APOSTROPHES = re.compile(r"(?<!\S)'+|'+(?!\S)")


class _CharTable(dict):
    """``str.translate`` table for one label set, filled lazily one code point at a time."""

    def __init__(self, labels: frozenset[str]) -> None:
        super().__init__()
        self._labels = labels
        self._space = " " if " " in labels else ""

    def __missing__(self, codepoint: int) -> str:
        self[codepoint] = value = self._convert(chr(codepoint))
        return value

    def _convert(self, char: str) -> str:
        if char in self._labels:
            return char
        if char.isspace():
            return self._space
        mapped = _MAP.get(char)
        if mapped is not None:
            if mapped == " ":
                return self._space
            return mapped if mapped in self._labels else ""
        # "é" -> "e", "ñ" -> "n" when only the base letter is a label.
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        if base and base != char and all(c in self._labels for c in base):
            return base
        return ""


WORD_START = "\u2581"  # "▁": marks a word-piece label that begins a word (SentencePiece style)


# SentencePiece's unknown piece (id 0 in NeMo's tokenizers). It is shown as sentencepiece decodes it,
# "⁇", and as a word of its own: "▁⁇▁" is how pyctcdecode spells that (a piece starting and ending a word).
UNKNOWN_PIECE = "<unk>"
_UNKNOWN_DISPLAY = WORD_START + "\u2047" + WORD_START


def display_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """The labels as decoders join them: word-piece vocabularies show ``UNKNOWN_PIECE`` as its own "⁇" word."""
    if not is_word_piece_labels(labels):
        return tuple(labels)
    return tuple(_UNKNOWN_DISPLAY if label == UNKNOWN_PIECE else label for label in labels)


def is_word_piece_labels(labels: Sequence[str]) -> bool:
    """True for a word-piece vocabulary: some label starts with ``WORD_START``, and words are
    separated by that marker rather than by a ``" "`` label."""
    return any(label.startswith(WORD_START) for label in labels)


@functools.lru_cache(maxsize=32)
def _table(labels: tuple[str, ...]) -> tuple[_CharTable, bool]:
    if is_word_piece_labels(labels):
        # Any character some piece can spell is kept, and words stay space-separated.
        chars = frozenset("".join(label for label in labels if label != UNKNOWN_PIECE).replace(WORD_START, "")) | {" "}
    else:
        chars = frozenset(label for label in labels if len(label) == 1)
    lower = not any(c.isupper() for c in chars)
    return _CharTable(chars), lower


def normalize_text(text: str, labels: Sequence[str]) -> str:
    """Normalises a transcript or LM sentence so that it only uses characters from ``labels``.

    Steps: Unicode NFKC (full-width forms, ligatures), lower-casing (skipped when the labels
    contain upper-case letters), curly/typographic apostrophes to ``'``, hyphens, dashes, ``/``
    and ``_`` to a space, accented letters to their base letter when only that is a label,
    every other character outside ``labels`` dropped, apostrophes at word edges (quotation
    marks) removed, and whitespace collapsed to single spaces with none at the ends.

    Digits and symbols are dropped, not verbalised: "2 dogs" becomes "dogs".

    Args:
        text: raw text.
        labels: the acoustic model's output labels, without the CTC blank; ``" "`` is the word
            separator. Without ``" "`` in ``labels`` all whitespace is removed, unless the
            labels are word pieces (see :func:`is_word_piece_labels`): then every character
            a piece contains is kept and words stay separated by single spaces.

    Returns:
        The normalised text; every character is in ``labels``. May be empty.
    """
    table, lower = _table(tuple(labels))
    text = unicodedata.normalize("NFKC", text)
    if lower:
        text = text.lower()
    text = text.translate(table)
    if "'" in text:
        text = _EDGE_APOSTROPHES.sub("", text)
    if table._space:
        text = " ".join(text.split())
    return text
