"""normalize_text: the one normalisation shared by training transcripts and LM corpora."""

from __future__ import annotations

import pytest

from lm.text import normalize_text
from tests.lm.helpers import LABELS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("It\u2019s", "it's"),  # curly apostrophe
        ("\u2018quoted\u2019 and \u201cdouble\u201d", "quoted and double"),  # quotation marks go
        ("well-known and/or snake_case", "well known and or snake case"),
        ("a \u2014 dash \u2013 here", "a dash here"),
        ("caf\u00e9 na\u00efve se\u00f1or", "cafe naive senor"),  # accents folded onto labels
        ("\uff26\uff55\uff4c\uff4c width \ufb01ne", "full width fine"),  # NFKC
        ("  lots \t of\n\nspace  ", "lots of space"),
        ("don't o'clock", "don't o'clock"),
        ("rock 'n' roll", "rock n roll"),
        ("2 dogs, 3 cats", "dogs cats"),  # digits are dropped, not verbalised
        ("", ""),
        ("?!.", ""),
    ],
)
def test_normalize_english(raw: str, expected: str) -> None:
    assert normalize_text(raw, LABELS) == expected


def test_output_only_uses_labels() -> None:
    out = normalize_text("\u00c0 la carte: \u00e9t\u00e9 \u2192 \u00fcber-cool \u00a9 2024 \U0001f600", LABELS)
    assert set(out) <= set(LABELS)
    assert out == "a la carte ete uber cool"


def test_characters_that_are_labels_are_kept() -> None:
    labels = list(LABELS) + ["-", "\u00e9"]
    assert normalize_text("Caf\u00e9 well-known", labels) == "caf\u00e9 well-known"


def test_upper_case_labels_disable_lower_casing() -> None:
    assert normalize_text("Hi There", list(" HTERhiter")) == "Hi There"


def test_without_space_label_whitespace_is_removed() -> None:
    assert normalize_text("a b-c", list("abc")) == "abc"


def test_idempotent() -> None:
    once = normalize_text("\u201cIt\u2019s   a well-known FACT,\u201d she said.", LABELS)
    assert once == "it's a well known fact she said"
    assert normalize_text(once, LABELS) == once
