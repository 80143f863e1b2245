"""Does every member of an ensemble hear the same speech? A check run on the bundled calibration clips.

An ensemble's artifact holds all its members' weights under one checksum, so a member published
with the wrong weights (a half-trained run, a random init, another task's model) passes every
integrity check and then quietly drags the ensemble down. Independently trained members of a
working ensemble transcribe the same clip almost alike; a broken one does not. Measured on the
calibration clips (12 AN4 training utterances): the starter's four members differ from the
ensemble's transcript by 0.000-0.003 character edits per character; with one member's weights
replaced by random ones (of the same scale) that member differs by 0.997, with them zeroed by
0.993. A member whose views are not finite fails outright.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.decoding import greedy_decode

__all__ = ["MAX_MEMBER_DISAGREEMENT", "member_disagreement", "edit_distance"]

# Character edits per character of the ensemble's transcript beyond which a member is "grossly" off.
MAX_MEMBER_DISAGREEMENT = 0.5


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (insertions, deletions and substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def member_disagreement(outputs: Sequence[np.ndarray], members: int, labels: Sequence[str],
                        frame_duration_s: float) -> list[float]:
    """Per member: character edits between its own transcripts and the ensemble's, per character of the ensemble's.

    Args:
        outputs: an ensemble's (T, K, V+1) log-probs for each calibration clip; views ``0..members-1``
            are the members at speed 1.0 (model.ensemble's view order).
        members: how many members the ensemble has.

    Returns:
        One rate per member; ``inf`` for a member whose log-probs are not finite.
    """
    edits, reference = np.zeros(members), 0
    broken = set()
    for log_probs in outputs:
        ensemble_text = greedy_decode(log_probs, labels, frame_duration_s).text
        reference += len(ensemble_text)
        for m in range(members):
            view = log_probs[:, m]
            if not np.isfinite(view).all():
                broken.add(m)
                continue
            edits[m] += edit_distance(greedy_decode(view, labels, frame_duration_s).text, ensemble_text)
    rates = edits / max(reference, 1)
    return [float("inf") if m in broken else float(rates[m]) for m in range(members)]
