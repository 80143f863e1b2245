"""LM-side access to the one transcript normaliser, which lives with the vocabulary in model.text."""

from model.text import normalize_text

__all__ = ["normalize_text"]
