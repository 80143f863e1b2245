"""Scores whole transcripts under CTC models, to pick among candidate texts from an ensemble's members.

Members of an ensemble are trained independently, so each emits a word's CTC spike at its own
frame (often 1-2 frames, 80-160 ms, apart). Averaging their frame posteriors then lets one
member's blank outvote another's spike, which deletes words. A transcript's CTC likelihood sums
over all of its alignments, so it is comparable across members whatever frames they spike at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.vocabulary import Vocabulary

__all__ = ["ctc_log_likelihood", "ensemble_log_likelihood", "mean_posteriors", "views_log_likelihood"]


def ctc_log_likelihood(log_probs: np.ndarray, ids: Sequence[int], blank: int) -> float:
    """log P(ids | x) under one CTC model, summed over all alignments.

    Args:
        log_probs: (T, V+1) log-softmax output, valid frames only.
        ids: the label sequence (no blanks).
        blank: the blank's column.

    Returns:
        The log-likelihood; ``-inf`` when the sequence cannot fit in T frames.
    """
    return views_log_likelihood(np.asarray(log_probs, dtype=np.float32)[:, None], ids, blank)


def ensemble_log_likelihood(log_probs: np.ndarray, text: str, vocabulary: Vocabulary) -> float:
    """Mean over an ensemble's views of log P(text | x); ``log_probs`` is (T, K, V+1)."""
    return views_log_likelihood(np.asarray(log_probs, dtype=np.float32), vocabulary.encode(text),
                                vocabulary.blank_id)


def views_log_likelihood(log_probs: np.ndarray, ids: Sequence[int], blank: int) -> float:
    """Mean over the K views of (T, K, V+1) float32 log-probs of log P(ids | x); ``-inf`` if they cannot fit."""
    log_probs = np.asarray(log_probs, dtype=np.float32)
    frames, views = log_probs.shape[:2]
    if not len(ids):
        return float(log_probs[:, :, blank].sum(axis=0).mean())
    if frames == 0:
        return float("-inf")
    # (T, K, V+1) is ctc_loss's (T, N, C) layout: one call scores the sequence under every view.
    loss = torch.nn.functional.ctc_loss(
        torch.from_numpy(log_probs), torch.tensor([list(ids)] * views, dtype=torch.long),
        torch.full((views,), frames, dtype=torch.long), torch.full((views,), len(ids), dtype=torch.long),
        blank=blank, reduction="none")
    return -float(loss.mean())


def mean_posteriors(log_probs: np.ndarray) -> np.ndarray:
    """(T, V+1) log of the members' mean frame posteriors for (T, K, V+1); (T, V+1) passes through.

    Only for per-frame confidences: decoding on it would delete words (see the module docstring).
    """
    log_probs = np.asarray(log_probs, dtype=np.float32)
    if log_probs.ndim == 2:
        return log_probs
    peak = log_probs.max(axis=1, keepdims=True)
    return (peak + np.log(np.exp(log_probs - peak).mean(axis=1, keepdims=True)))[:, 0]
