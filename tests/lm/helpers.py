"""Synthetic CTC outputs and the tiny LM corpus shared by the language-model tests."""

from __future__ import annotations

import numpy as np

LABELS: tuple[str, ...] = (" ",) + tuple("abcdefghijklmnopqrstuvwxyz") + ("'",)
BLANK = len(LABELS)

# 30 sentences over a 15-word vocabulary; "yes" and "two" are in it, "yez" and "tuo" are not.
CORPUS: list[str] = [
    "yes i can",
    "yes it is",
    "say yes",
    "i said yes",
    "yes we can",
    "the answer is yes",
    "two cats",
    "i have two cats",
    "we have two dogs",
    "two dogs and two cats",
    "the cats said yes",
    "the dogs can say yes",
    "it is two",
    "say two",
    "yes two cats",
] * 2



def make_log_probs(frames: list[dict[str, float]]) -> np.ndarray:
    """Log-probs [T, V+1] from per-frame {label: prob}; "" is the blank, the rest goes to it."""
    rows = []
    for dist in frames:
        row = np.full(len(LABELS) + 1, 1e-4)
        for char, p in dist.items():
            row[BLANK if char == "" else LABELS.index(char)] = p
        if "" not in dist:
            row[BLANK] += max(0.0, 1.0 - row.sum())
        rows.append(np.log(row / row.sum()))
    return np.asarray(rows, dtype=np.float32)


def spell(word_frames: list[dict[str, float]]) -> list[dict[str, float]]:
    """Interleaves blank frames, as CTC models emit them."""
    out: list[dict[str, float]] = []
    for dist in word_frames:
        out += [dist, {"": 0.95}]
    return out


def greedy(log_probs: np.ndarray) -> str:
    best = log_probs.argmax(axis=1)
    chars, prev = [], None
    for i in best:
        if i != prev and i != BLANK:
            chars.append(LABELS[i])
        prev = i
    return " ".join("".join(chars).split())
