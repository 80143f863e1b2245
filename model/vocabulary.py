"""Character vocabulary: labels, the blank index, text normalisation and text <-> ids."""

from __future__ import annotations

from dataclasses import dataclass

from model.text import normalize_text

ENGLISH_LABELS: tuple[str, ...] = (" ",) + tuple("abcdefghijklmnopqrstuvwxyz") + ("'",)

@dataclass(frozen=True)
class Vocabulary:
    """CTC output labels; the blank is the extra last index ``len(labels)``, as in NeMo.

    Attributes:
        labels: one string per output index; " " is the word separator.
    """

    labels: tuple[str, ...] = ENGLISH_LABELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.labels:
            raise ValueError("a vocabulary needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in vocabulary: {self.labels}")
        if any(len(label) != 1 for label in self.labels):
            raise ValueError("only single-character labels are supported (no BPE/word pieces)")

    @property
    def blank_id(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        """Output columns, blank included."""
        return len(self.labels) + 1

    def normalize(self, text: str) -> str:
        """Lower-cases, maps typographic punctuation, drops characters outside the labels (model.text)."""
        return normalize_text(text, self.labels)

    def encode(self, text: str) -> list[int]:
        """Normalises ``text`` and maps it to label ids."""
        index = {c: i for i, c in enumerate(self.labels)}
        return [index[c] for c in self.normalize(text)]

    def decode(self, ids) -> str:
        """Maps ids back to text; ids equal to the blank are skipped."""
        return "".join(self.labels[i] for i in ids if 0 <= i < len(self.labels))
