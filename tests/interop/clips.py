"""The NeMo fixtures' clips, decoded and checked against the sample counts NeMo saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.audio import decode_audio


def fixture_clips(speech_root: Path, fixtures: list[dict]) -> dict[str, np.ndarray]:
    """Each fixture's ``clip`` (a path under speech_root) decoded at 16 kHz, by path."""
    out = {}
    for fixture in fixtures:
        audio = decode_audio(speech_root / fixture["clip"], 16_000).samples
        assert len(audio) == fixture["num_samples"]
        out[fixture["clip"]] = audio
    return out
