"""Tests for model.vocabulary (and the normalisation it delegates to model.text)."""

from __future__ import annotations

import pytest

from model.text import normalize_text
from model.vocabulary import ENGLISH_LABELS, Vocabulary


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world"),
    ("Don\u2019t stop", "don't stop"),                       # curly apostrophe
    ("It\u02bcs o\u2018clock", "it's o'clock"),
    ("\u201cQuoted\u201d words", "quoted words"),            # curly double quotes are dropped
    ("well-known and/or snake_case", "well known and or snake case"),
    ("wait\u2014what \u2013 now", "wait what now"),           # em/en dashes separate words
    ("Caf\u00e9 na\u00efve se\u00f1or \u00c5ngstr\u00f6m", "cafe naive senor angstrom"),
    ("2 dogs and 10 cats", "dogs and cats"),                 # digits are dropped, not verbalised
    ("'hello' said 'tis rock 'n' roll", "hello said tis rock n roll"),
    ("the dogs' bones", "the dogs bones"),                   # apostrophe at a word edge is a quote
    ("  many\t\tspaces\n here  ", "many spaces here"),
    ("\uff21\uff22\uff23", "abc"),                           # full-width letters (NFKC)
    ("!!! 123 ???", ""),
    ("", ""),
])
def test_normalisation(raw, expected):
    vocab = Vocabulary()
    assert vocab.normalize(raw) == expected
    assert set(vocab.normalize(raw)) <= set(ENGLISH_LABELS)


def test_normalisation_is_idempotent():
    vocab = Vocabulary()
    text = "\u201cIt\u2019s 5 o\u2019clock\u201d \u2014 caf\u00e9-time!"
    once = vocab.normalize(text)
    assert once == "it's o'clock cafe time"
    assert vocab.normalize(once) == once


def test_normalisation_respects_the_label_set():
    assert normalize_text("Ab-C d", ("A", "b", "C")) == "AbC"  # upper-case labels: no lower-casing, no space label
    assert normalize_text("it's", ("i", "t", "s", " ")) == "its"  # no apostrophe label: dropped


def test_encode_decode_round_trip():
    vocab = Vocabulary()
    text = "the quick brown fox jumps over the lazy dog's back"
    ids = vocab.encode(text)
    assert all(0 <= i < vocab.blank_id for i in ids)
    assert vocab.decode(ids) == text
    assert vocab.encode("Hello!") == [vocab.labels.index(c) for c in "hello"]
    assert vocab.decode(ids + [vocab.blank_id]) == text  # the blank decodes to nothing


def test_blank_is_after_the_labels():
    vocab = Vocabulary()
    assert vocab.labels == ENGLISH_LABELS
    assert len(vocab.labels) == 28
    assert vocab.blank_id == len(vocab.labels) == 28
    assert vocab.size == 29
    assert Vocabulary(("a", "b", " ")).blank_id == 3


@pytest.mark.parametrize("labels", [(), ("a", "a"), ("a", "bc"), ("\u2581a", " "), ("\u2581a", ""), ("\u2581a\u2581b",)],
                         ids=["empty", "duplicate", "multi-char-without-marker", "piece-with-space",
                              "empty-piece", "marker-inside"])
def test_invalid_vocabularies(labels):
    with pytest.raises(ValueError):
        Vocabulary(labels)


def test_labels_given_as_a_list_become_a_tuple():
    vocab = Vocabulary(list("ab "))
    assert vocab.labels == ("a", "b", " ")
    hash(vocab)


WORD_PIECES = ("\u2581one", "\u2581two", "\u2581e", "\u2581t", "\u2581th", "e", "n", "h", "i", "r", "t")


def test_word_pieces_prefer_whole_words_then_spell_longest_first():
    vocab = Vocabulary(WORD_PIECES)
    assert vocab.is_word_piece and not Vocabulary().is_word_piece
    ids = vocab.encode("One, TWO thirteen e")
    assert [vocab.labels[i] for i in ids] == ["\u2581one", "\u2581two", "\u2581th", "i", "r", "t", "e", "e", "n",
                                              "\u2581e"]
    assert vocab.decode(ids) == "one two thirteen e"
    assert vocab.decode(ids + [vocab.blank_id]) == "one two thirteen e"


def test_word_pieces_drop_what_no_piece_can_spell():
    vocab = Vocabulary(WORD_PIECES)
    assert vocab.normalize("Zone one-two!") == "one one two"  # z is in no piece; "-" separates words
    # No piece starts a word with "n", "i" or "n", so they are dropped until "\u2581e" can.
    assert vocab.decode(vocab.encode("nine")) == "e"


# A SentencePiece BPE piece list as NeMo's tokenizers make it: <unk> first, a bare "▁", single letters.
SENTENCEPIECE = ("<unk>", "\u2581t", "\u2581one", "ne", "\u2581tw", "o", "\u2581", "e", "n", "t", "x")


def test_a_sentencepiece_piece_list_is_a_word_piece_vocabulary():
    vocab = Vocabulary(SENTENCEPIECE)
    assert vocab.is_word_piece and vocab.blank_id == len(SENTENCEPIECE)
    # The bare "▁" starts a word that the next pieces spell; <unk> shows as sentencepiece shows it.
    assert vocab.decode([2, 6, 10, 4, 5, 0, 1, 3]) == "one x two \u2047 tne"
    assert vocab.normalize("One <unk> x") == "one n x"  # <unk>'s characters are no letters to keep
