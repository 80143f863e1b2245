"""CTC vocabulary: labels, the blank index, text normalisation and text <-> ids."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from model.text import WORD_START, display_labels, is_word_piece_labels, normalize_text

ENGLISH_LABELS: tuple[str, ...] = (" ",) + tuple("abcdefghijklmnopqrstuvwxyz") + ("'",)


@dataclass(frozen=True)
class Vocabulary:
    """CTC output labels; the blank is the extra last index ``len(labels)``, as in NeMo.

    Two label styles are supported:

    * characters (NeMo's QuartzNet/Jasper): every label is one character and ``" "``
      separates words;
    * word pieces (SentencePiece style): a label that starts with ``"▁"`` begins a new word,
      any other label continues the current one, and there is no ``" "`` label. A
      whole-word label such as ``"▁seven"`` makes a closed-vocabulary task a word classifier,
      while single-letter pieces still spell words that have no label of their own. A
      SentencePiece tokenizer's piece list (a NeMo BPE model's) is such a vocabulary too: its
      bare ``"▁"`` piece starts a word spelled by the pieces after it, and its ``"<unk>"``
      piece decodes as the word "⁇", as sentencepiece shows it.

    Attributes:
        labels: one string per output index.
    """

    labels: tuple[str, ...] = ENGLISH_LABELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.labels:
            raise ValueError("a vocabulary needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in vocabulary: {self.labels}")
        if self.is_word_piece:
            bad = [label for label in self.labels
                   if not label or WORD_START in label[1:] or any(c.isspace() for c in label)]
            if bad:
                raise ValueError(f"word-piece labels must be non-empty, without spaces, with '{WORD_START}' "
                                 f"only as the first character: {bad[:5]}")
        elif any(len(label) != 1 for label in self.labels):
            raise ValueError(f"labels must be single characters, or word pieces marked with '{WORD_START}'")

    @cached_property
    def is_word_piece(self) -> bool:
        return is_word_piece_labels(self.labels)

    @cached_property
    def _index(self) -> dict[str, int]:
        # Built once: encode runs per utterance per epoch in training.
        return {label: i for i, label in enumerate(self.labels)}

    @cached_property
    def _longest_label(self) -> int:
        return max(len(label) for label in self.labels)

    @property
    def blank_id(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        """Output columns, blank included."""
        return len(self.labels) + 1

    def normalize(self, text: str) -> str:
        """Lower-cases, maps typographic punctuation, drops characters no label can spell (model.text)."""
        return normalize_text(text, self.labels)

    def encode(self, text: str) -> list[int]:
        """Normalises ``text`` and maps it to label ids.

        Word pieces are chosen greedily, longest first: ``"▁word"`` when it is a label,
        otherwise the longest word-initial piece followed by the longest continuation pieces.
        Characters no piece can spell at that position are dropped.
        """
        index, longest = self._index, self._longest_label
        normalized = self.normalize(text)
        if not self.is_word_piece:
            return [index[c] for c in normalized]
        ids: list[int] = []
        for word in normalized.split():
            pos, prefix = 0, WORD_START
            while pos < len(word):
                for end in range(min(len(word), pos + longest), pos, -1):
                    piece = index.get(prefix + word[pos:end])
                    if piece is not None:
                        ids.append(piece)
                        pos, prefix = end, ""
                        break
                else:
                    pos += 1  # nothing spells this character here; drop it
        return ids

    def decode(self, ids) -> str:
        """Maps ids back to text; ids equal to the blank are skipped."""
        shown = display_labels(self.labels)
        text = "".join(shown[i] for i in ids if 0 <= i < len(shown))
        if self.is_word_piece:
            return " ".join(text.replace(WORD_START, " ").split())
        return text
