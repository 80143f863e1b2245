"""Corpus WER and CER (jiwer), shared by validation, the AN4 recipe report and `asr eval`."""

from __future__ import annotations

import jiwer


def word_char_error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus WER and CER over the pairs whose reference is not empty.

    Returns:
        {"wer", "cer", "num_utterances"}; WER/CER are NaN when no reference is left.
    """
    pairs = [(r.strip(), h.strip()) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan"), "num_utterances": 0}
    refs_, hyps_ = (list(x) for x in zip(*pairs))
    return {"wer": float(jiwer.wer(refs_, hyps_)), "cer": float(jiwer.cer(refs_, hyps_)),
            "num_utterances": len(pairs)}
